"""Picasso-compatible localization files: ``<base>_locs.hdf5`` (compound dataset ``locs``) + ``_locs.yaml``.

Both files are written to temporary names in the target folder and renamed into place only when both are
complete, so a failed or cancelled run never leaves a half-written file or destroys an earlier result.
"""

from __future__ import annotations

import os
import tempfile

import h5py
import numpy as np
import yaml

from .embedded import read_embedded_info, write_embedded_info

#: older or GUI spellings of metadata keys, mapped to the API spelling
KEY_ALIASES = {
    "Box size": "Box Size",
    "Min net gradient": "Min. Net Gradient",
    "Min. net gradient": "Min. Net Gradient",
    "Frame bounds": "Frame Bounds",
    "Convergence Criterion": "Convergence criterion",
    "Max. Iterations": "Max iterations",
    "Max. iterations": "Max iterations",
}
#: older column names, mapped to the current ones
COLUMN_ALIASES = {"likelihood": "log_likelihood"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of new files: what open() would give (mkstemp makes them private)
_FILE_MODE = 0o666 & ~_umask()


class LocsFileError(ValueError):
    """A localization file that cannot be read or written; the message names the file."""


def locs_paths(movie_path, suffix: str = "", output_dir=None) -> tuple[str, str]:
    """Picasso's output names: ``<splitext(movie)[0]><suffix>_locs.hdf5`` and ``.yaml``."""
    base = os.path.splitext(os.fspath(movie_path))[0] + suffix
    if output_dir is not None:
        base = os.path.join(os.fspath(output_dir), os.path.basename(base))
    return base + "_locs.hdf5", base + "_locs.yaml"


def _plain(value):
    """numpy scalars and tuples to plain Python, so any YAML reader (safe ones included) can load them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _check_target(hdf5_path) -> tuple[str, str, str]:
    hdf5_path = os.fspath(hdf5_path)
    if not hdf5_path.endswith(".hdf5"):
        raise LocsFileError(f"{hdf5_path}: localization files end in .hdf5")
    yaml_path = os.path.splitext(hdf5_path)[0] + ".yaml"
    folder = os.path.dirname(os.path.abspath(hdf5_path))
    if not os.path.isdir(folder):
        raise LocsFileError(f"{hdf5_path}: the folder {folder} does not exist")
    return hdf5_path, yaml_path, folder


class LocsWriter:
    """Append localizations to a ``_locs.hdf5`` chunk by chunk; publish it (with its YAML) only on commit.

    The rows go to a hidden temporary file beside the target (a resizable, chunked ``locs`` dataset, which
    Picasso and h5py read like any other), so a long movie's table never has to be held in memory. Until
    :meth:`commit` renames the files into place, an earlier result under the same name is untouched; leaving
    the ``with`` block without committing (an error, a cancelled run) removes the temporary file.

    Examples
    --------
    >>> with LocsWriter(path, dtype) as writer:          # doctest: +SKIP
    ...     for chunk in chunks:
    ...         writer.append(chunk)
    ...     writer.commit(info)
    """

    #: rows per HDF5 chunk (68 B per 2D row: ~4 MB)
    CHUNK_ROWS = 1 << 16

    def __init__(self, hdf5_path, dtype):
        self.hdf5_path, self.yaml_path, self._folder = _check_target(hdf5_path)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._tmp_h5 = None
        self._file = None
        self._dataset = None
        self.committed = False

    def __enter__(self):
        fd, self._tmp_h5 = tempfile.mkstemp(prefix=".tmp-", suffix=".hdf5", dir=self._folder)
        os.close(fd)
        self._file = h5py.File(self._tmp_h5, "w")
        self._dataset = self._file.create_dataset("locs", shape=(0,), maxshape=(None,), dtype=self.dtype,
                                                  chunks=(self.CHUNK_ROWS,))
        return self

    def append(self, locs: np.ndarray):
        """Add rows (a structured array of this writer's dtype) at the end of the table."""
        if self._dataset is None:
            raise LocsFileError(f"{self.hdf5_path}: the writer is not open (use it in a with block)")
        locs = np.asarray(locs)
        if locs.dtype != self.dtype:
            raise LocsFileError(f"{self.hdf5_path}: rows of dtype {locs.dtype} cannot be appended to a table "
                                f"of dtype {self.dtype}")
        if len(locs) == 0:
            return
        n = self.rows + len(locs)
        self._dataset.resize((n,))
        self._dataset[self.rows:n] = locs
        self.rows = n

    def keep_where(self, predicate):
        """Keep only the rows for which ``predicate(rows)`` (a boolean array per block of rows) is true.

        The table is compacted in place block by block, so a whole-run filter (one that needs a statistic of
        every row, like the z outlier rule) never needs the table in memory.
        """
        kept_rows = 0
        for a in range(0, self.rows, self.CHUNK_ROWS):
            block = self._dataset[a: min(a + self.CHUNK_ROWS, self.rows)]
            block = block[np.asarray(predicate(block), bool)]
            self._dataset[kept_rows: kept_rows + len(block)] = block
            kept_rows += len(block)
        self._dataset.resize((kept_rows,))
        self.rows = kept_rows

    def commit(self, info: list[dict]) -> tuple[str, str]:
        """Close the table, write the metadata documents and move both files into place; return the paths."""
        self._file.close()
        self._file = None
        _publish(self._tmp_h5, self.hdf5_path, self.yaml_path, self._folder, info)
        self._tmp_h5 = None
        self.committed = True
        return self.hdf5_path, self.yaml_path

    def abort(self):
        """Drop everything written so far (an earlier result under the target name stays)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp_h5 is not None and os.path.exists(self._tmp_h5):
            os.remove(self._tmp_h5)
        self._tmp_h5 = None

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
        return False


def _publish(tmp_h5, hdf5_path, yaml_path, folder, info):
    """Write the YAML beside the finished temporary table, then rename both into place (YAML first)."""
    tmp_yaml = None
    try:
        with h5py.File(tmp_h5, "a") as f:  # the documents also inside the table (Picasso 0.11's /metadata)
            write_embedded_info(f, [_plain(d) for d in info])
        fd, tmp_yaml = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=folder)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump_all([_plain(d) for d in info], fh, default_flow_style=False)
        for tmp in (tmp_h5, tmp_yaml):
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp_yaml, yaml_path)
        tmp_yaml = None
        os.replace(tmp_h5, hdf5_path)
        tmp_h5 = None
    finally:
        for tmp in (tmp_h5, tmp_yaml):
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def save_locs(hdf5_path, locs: np.ndarray, info: list[dict]) -> tuple[str, str]:
    """Atomically write ``locs`` (structured array) and the metadata documents ``info``.

    Returns the two paths written.
    """
    hdf5_path, yaml_path, folder = _check_target(hdf5_path)
    tmp_h5 = None
    try:
        fd, tmp_h5 = tempfile.mkstemp(prefix=".tmp-", suffix=".hdf5", dir=folder)
        os.close(fd)
        with h5py.File(tmp_h5, "w") as f:
            f.create_dataset("locs", data=np.ascontiguousarray(locs))
        _publish(tmp_h5, hdf5_path, yaml_path, folder, info)
        tmp_h5 = None
    finally:
        if tmp_h5 is not None and os.path.exists(tmp_h5):
            os.remove(tmp_h5)
    return hdf5_path, yaml_path


def load_info(yaml_path) -> list[dict]:
    """All documents of a ``_locs.yaml`` (ours or Picasso's), with old key spellings normalised."""
    with open(yaml_path) as fh:
        try:
            docs = [d for d in yaml.load_all(fh, Loader=_LenientLoader) if d is not None]
        except yaml.YAMLError as exc:
            raise LocsFileError(f"{yaml_path}: not valid YAML ({exc})") from None
    out = []
    for d in docs:
        if isinstance(d, dict):
            d = {KEY_ALIASES.get(k, k): v for k, v in d.items()}
        out.append(d)
    return out


def load_locs(hdf5_path) -> tuple[np.ndarray, list[dict]]:
    """Read a ``_locs.hdf5`` and its ``_locs.yaml`` (Picasso's or ours).

    Older column spellings (``likelihood``) are renamed to the current ones. Without the YAML the metadata
    embedded in the file (``/metadata``, Picasso 0.11 and ours) is used; with neither it is an error,
    because the frame size and pixel size live there.
    """
    hdf5_path = os.fspath(hdf5_path)
    yaml_path = os.path.splitext(hdf5_path)[0] + ".yaml"
    if not os.path.exists(hdf5_path):
        raise LocsFileError(f"{hdf5_path}: no such file")
    embedded = None
    if not os.path.exists(yaml_path):
        embedded = read_embedded_info(hdf5_path)
        if embedded is None:
            raise LocsFileError(f"{hdf5_path}: its metadata {os.path.basename(yaml_path)} is missing beside it "
                                "and the file holds no embedded /metadata (files before Picasso 0.11)")
    try:
        with h5py.File(hdf5_path, "r") as f:
            if "locs" not in f:
                raise LocsFileError(f"{hdf5_path}: no 'locs' dataset (keys: {list(f.keys())})")
            locs = f["locs"][...]
    except OSError as exc:
        raise LocsFileError(f"{hdf5_path}: not a readable HDF5 file ({exc})") from None
    names = [COLUMN_ALIASES.get(n, n) for n in locs.dtype.names]
    if names != list(locs.dtype.names):
        locs = locs.copy()
        locs.dtype.names = names
    if embedded is not None:
        return locs, [{KEY_ALIASES.get(k, k): v for k, v in d.items()} if isinstance(d, dict) else d
                      for d in embedded]
    return locs, load_info(yaml_path)


def get_metadata(info: list[dict], key, default=None):
    """Look ``key`` up from the last document to the first (Picasso's rule), without treating 0 as missing."""
    key = KEY_ALIASES.get(key, key)
    for doc in reversed(info):
        if isinstance(doc, dict) and key in doc and doc[key] is not None:
            return doc[key]
    return default


class _LenientLoader(yaml.SafeLoader):
    """Safe loading that tolerates the python/ tags some Picasso versions write (as plain data)."""


def _construct_unknown(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_LenientLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_unknown)
_LenientLoader.add_multi_constructor("!", _construct_unknown)
