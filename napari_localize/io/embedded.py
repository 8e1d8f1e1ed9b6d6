"""Metadata embedded in an HDF5 file, Picasso 0.11's layout: a scalar UTF-8 string dataset ``/metadata``
holding the JSON list of the metadata documents (the same documents as the ``.yaml`` sidecar).

With it a ``_locs.hdf5`` describes itself: Picasso 0.11 (and napari-localize) open it when the ``.yaml`` is
missing. The ``.yaml`` stays the first source when both exist (Picasso's rule).
"""

from __future__ import annotations

import json

import h5py
import numpy as np

DATASET = "metadata"


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)  # dates, paths, anything else: as text rather than failing the whole save


def metadata_json(info: list[dict]) -> str:
    """The JSON text of the documents (numpy values as plain numbers, anything else as text)."""
    return json.dumps(list(info), default=_json_default)


def write_embedded_info(h5file: h5py.File, info: list[dict]) -> None:
    """Write (or replace) ``/metadata`` in an HDF5 file open for writing."""
    if DATASET in h5file:
        del h5file[DATASET]
    h5file.create_dataset(DATASET, data=metadata_json(info), dtype=h5py.string_dtype("utf-8"))


def read_embedded_info(path) -> list[dict] | None:
    """The documents of ``/metadata``, or ``None`` if the file has none (or it is not valid JSON)."""
    try:
        with h5py.File(path, "r") as f:
            if DATASET not in f or not isinstance(f[DATASET], h5py.Dataset):
                return None
            raw = f[DATASET][()]
    except OSError:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if isinstance(raw, np.ndarray):  # a 1-element array of strings (other writers)
        raw = raw.ravel()[0] if raw.size else ""
        raw = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    try:
        docs = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(docs, dict):
        docs = [docs]
    if not isinstance(docs, list):
        return None
    return [d for d in docs if d is not None]
