"""Writing movies chunk by chunk (simulated data, conversions): OME-TIFF or Picasso .raw + .yaml."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import tifffile

from ..locs import _FILE_MODE
from .raw import write_raw_info


def write_movie(path, chunks, shape, dtype, pixelsize_nm=None, extra_info: dict | None = None,
                sensor_origin=None):
    """Write frames from an iterable of ``(n, height, width)`` chunks to ``path`` atomically.

    ``.ome.tif``/``.tif``/``.tiff``: one uncompressed, contiguous series (BigTIFF above 2 GB), which Picasso's own
    TIFF reader also opens. ``.raw``: little-endian frames plus the ``.yaml`` Picasso needs.
    ``sensor_origin`` (row, column) records a camera ROI acquisition as ``Camera ROI`` ([x, y, width, height])
    in the ``.raw`` YAML; TIFF files written here carry no camera ROI (tifffile cannot write Micro-Manager's
    header), so a cropped TIFF needs the explicit offset (``--camera-calibration-offset``).
    """
    roi = None
    if sensor_origin is not None:
        roi = [int(sensor_origin[1]), int(sensor_origin[0]), int(shape[2]), int(shape[1])]
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    dtype = np.dtype(dtype)
    lower = path.lower()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        if lower.endswith(".raw"):
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    np.ascontiguousarray(chunk, dtype.newbyteorder("<")).tofile(fh)
            os.replace(tmp, path)
            info_path = write_raw_info(path, "<", dtype, *shape)
            if roi is not None:
                import yaml

                with open(info_path) as fh:
                    doc = yaml.safe_load(fh)
                doc["Camera ROI"] = roi
                with open(info_path, "w") as fh:
                    yaml.safe_dump(doc, fh, default_flow_style=False)
            if extra_info:
                import yaml

                with open(os.path.splitext(path)[0] + ".yaml", "a") as fh:
                    fh.write("---\n")
                    yaml.safe_dump(extra_info, fh, default_flow_style=False)
        elif lower.endswith((".tif", ".tiff")):
            nbytes = int(np.prod(shape)) * dtype.itemsize
            metadata = {"axes": "TYX"}
            if pixelsize_nm:
                metadata.update({"PhysicalSizeX": pixelsize_nm / 1000, "PhysicalSizeY": pixelsize_nm / 1000,
                                 "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})

            def frames():
                for chunk in chunks:
                    yield from np.asarray(chunk, dtype)

            with tifffile.TiffWriter(tmp, bigtiff=nbytes > 2**31 - 2**25, ome=lower.endswith(
                    (".ome.tif", ".ome.tiff"))) as tw:
                tw.write(frames(), shape=tuple(shape), dtype=dtype, metadata=metadata, contiguous=True)
            os.replace(tmp, path)
        else:
            raise ValueError(f"{path}: write .ome.tif, .tif, .tiff or .raw")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
