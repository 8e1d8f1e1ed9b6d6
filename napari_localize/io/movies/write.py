"""Writing movies chunk by chunk (simulated data, conversions): OME-TIFF or Picasso .raw + .yaml."""

from __future__ import annotations

import os

import numpy as np
import tifffile

from ...core.errors import OutputError
from ..publish import Publisher, describe_os_error
from .raw import raw_info_path


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
    dtype = np.dtype(dtype)
    lower = path.lower()
    if not lower.endswith((".raw", ".tif", ".tiff")):
        raise OutputError(f"{path}: write .ome.tif, .tif, .tiff or .raw")
    if lower.endswith(".raw"):
        import yaml

        sidecar = raw_info_path(path)
        doc = {"Byte Order": "<", "Data Type": str(dtype.name), "Frames": int(shape[0]), "Height": int(shape[1]),
               "Width": int(shape[2])}
        if roi is not None:
            doc["Camera ROI"] = roi
        text = yaml.safe_dump(doc, default_flow_style=False)
        if extra_info:
            text += "---\n" + yaml.safe_dump(extra_info, default_flow_style=False)
        with Publisher([path, sidecar]) as pub:  # the movie and its sidecar appear together
            try:
                with open(pub.temp(path), "wb") as fh:
                    for chunk in chunks:
                        np.ascontiguousarray(chunk, dtype.newbyteorder("<")).tofile(fh)
                with open(pub.temp(sidecar), "w", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError as exc:
                raise OutputError(describe_os_error(exc, path)) from None
            pub.commit()
        return path
    nbytes = int(np.prod(shape)) * dtype.itemsize
    metadata = {"axes": "TYX"}
    if pixelsize_nm:
        metadata.update({"PhysicalSizeX": pixelsize_nm / 1000, "PhysicalSizeY": pixelsize_nm / 1000,
                         "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})

    def frames():
        for chunk in chunks:
            yield from np.asarray(chunk, dtype)

    with Publisher([path]) as pub:
        try:
            with tifffile.TiffWriter(pub.temp(path), bigtiff=nbytes > 2**31 - 2**25, ome=lower.endswith(
                    (".ome.tif", ".ome.tiff"))) as tw:
                tw.write(frames(), shape=tuple(shape), dtype=dtype, metadata=metadata, contiguous=True,
                         photometric="minisblack")  # grey frames, even 3 or 4 pixels wide
        except OSError as exc:
            raise OutputError(describe_os_error(exc, path)) from None
        pub.commit()
    return path
