"""Picasso-compatible localization files: ``<base>_locs.hdf5`` (compound dataset ``locs``) + ``_locs.yaml``.

Both files are published together by :class:`~napari_localize.io.publish.Publisher` (temporary files, renamed
as a pair under a folder lock, rolled back if one rename fails), so a failed or cancelled run never leaves a
half-written file or destroys an earlier result, and concurrent writers never mix a pair.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os

import h5py
import numpy as np
import yaml

from ..core.errors import LocalizeError, OutputError
from . import safe_yaml
from .embedded import read_embedded_info, write_embedded_info
from .publish import Publisher, describe_os_error

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


class LocsFileError(LocalizeError):
    """A localization file that cannot be read or written; the message names the file."""


def locs_paths(movie_path, suffix: str = "", output_dir=None) -> tuple[str, str]:
    """Picasso's output names: ``<splitext(movie)[0]><suffix>_locs.hdf5`` and ``.yaml``."""
    base = os.path.splitext(os.fspath(movie_path))[0] + suffix
    if output_dir is not None:
        base = os.path.join(os.fspath(output_dir), os.path.basename(base))
    return base + "_locs.hdf5", base + "_locs.yaml"


def choice_suffix(movie) -> str:
    """The part of the output name that tells which channel/position of a multi-channel or multi-position movie
    was localized: ``_ch<k>`` and ``_pos<k>`` (0-based, as ``--channel``/``--position``); empty for movies with
    one of each, so their names stay Picasso's."""
    out = ""
    names = getattr(movie, "channel_names", None) or []
    if len(names) > 1:
        out += f"_ch{int(getattr(movie, 'channel', 0))}"
    names = getattr(movie, "position_names", None) or []
    if len(names) > 1:
        out += f"_pos{int(getattr(movie, 'position', 0))}"
    return out


def output_collisions(plans) -> list[tuple[str, list[str]]]:
    """``[(output path, [movies])]`` for every output that more than one movie of ``plans`` (``(movie, output
    path)`` pairs) would write; case-insensitively, since macOS and Windows folders are."""
    seen: dict[str, list] = {}
    for movie, out in plans:
        key = os.path.normcase(os.path.abspath(out)).lower()
        seen.setdefault(key, [out, []])[1].append(movie)
    return [(out, movies) for out, movies in seen.values() if len(movies) > 1]


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
        self._publisher = None
        self._tmp_h5 = None
        self._file = None
        self._dataset = None
        self._buffer: list[np.ndarray] = []  # the first rows, until they fill a chunk
        self.committed = False

    def __enter__(self):
        self._publisher = Publisher([self.hdf5_path, self.yaml_path])
        try:
            self._tmp_h5 = self._publisher.temp(self.hdf5_path)
        except BaseException:
            self.abort()
            raise
        return self

    # HDF5 cannot recover from a write that fails (a full disk, a file-size limit): closing the file afterwards
    # can crash the process. So HDF5 never writes past what is reserved: the first chunk's rows stay in memory
    # (a small table is built in memory and written by Python), and before the on-disk table grows, the space
    # is reserved with posix_fallocate, which fails cleanly (ENOSPC, EFBIG) before HDF5 touches the disk.
    def _chunk_bytes(self) -> int:
        return self.CHUNK_ROWS * self.dtype.itemsize

    def _reserve(self, rows: int):
        need = (-(-rows // self.CHUNK_ROWS) + 1) * self._chunk_bytes() + (1 << 20)
        try:
            if os.path.getsize(self._tmp_h5) >= need:
                return
            fd = os.open(self._tmp_h5, os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, need)
            finally:
                os.close(fd)
        except (AttributeError, NotImplementedError):
            return  # no posix_fallocate (Windows, macOS): HDF5 reports the failure itself
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return
            raise OutputError(describe_os_error(exc, self.hdf5_path)) from None

    def _open_table(self):
        with _writing(self.hdf5_path):
            self._file = h5py.File(self._tmp_h5, "w")
            self._dataset = self._file.create_dataset("locs", shape=(0,), maxshape=(None,), dtype=self.dtype,
                                                      chunks=(self.CHUNK_ROWS,))
            buffered = np.concatenate(self._buffer) if self._buffer else np.zeros(0, self.dtype)
            self._buffer = []
            if len(buffered):
                self._dataset.resize((len(buffered),))
                self._dataset[:] = buffered

    def append(self, locs: np.ndarray):
        """Add rows (a structured array of this writer's dtype) at the end of the table."""
        if self._publisher is None or self.committed:
            raise LocsFileError(f"{self.hdf5_path}: the writer is not open (use it in a with block)")
        locs = np.asarray(locs)
        if locs.dtype != self.dtype:
            raise LocsFileError(f"{self.hdf5_path}: rows of dtype {locs.dtype} cannot be appended to a table "
                                f"of dtype {self.dtype}")
        if len(locs) == 0:
            return
        n = self.rows + len(locs)
        if self._dataset is None and n <= self.CHUNK_ROWS:
            self._buffer.append(locs.copy())
            self.rows = n
            return
        self._reserve(n)
        if self._dataset is None:
            self._open_table()
        with _writing(self.hdf5_path):
            self._dataset.resize((n,))
            self._dataset[self.rows:n] = locs
        self.rows = n

    def keep_where(self, predicate):
        """Keep only the rows for which ``predicate(rows)`` (a boolean array per block of rows) is true.

        The table is compacted in place block by block, so a whole-run filter (one that needs a statistic of
        every row, like the z outlier rule) never needs the table in memory.
        """
        if self._dataset is None:
            rows = np.concatenate(self._buffer) if self._buffer else np.zeros(0, self.dtype)
            self._buffer = [rows[np.asarray(predicate(rows), bool)]] if len(rows) else []
            self.rows = sum(len(b) for b in self._buffer)
            return
        kept_rows = 0
        with _writing(self.hdf5_path):
            for a in range(0, self.rows, self.CHUNK_ROWS):
                block = self._dataset[a: min(a + self.CHUNK_ROWS, self.rows)]
                block = block[np.asarray(predicate(block), bool)]
                self._dataset[kept_rows: kept_rows + len(block)] = block
                kept_rows += len(block)
            self._dataset.resize((kept_rows,))
        self.rows = kept_rows

    def commit(self, info: list[dict]) -> tuple[str, str]:
        """Close the table, write the metadata documents and publish both files together; return the paths.

        A table of less than one chunk is written with one chunk of its own size, so a small result is a small
        file (not a 4 MB chunk).
        """
        if self._dataset is None:
            rows = np.concatenate(self._buffer) if self._buffer else np.zeros(0, self.dtype)
            _write_bytes(self._tmp_h5, _table_bytes(rows, extendable=True, info=info), self.hdf5_path)
        else:
            self._reserve(self.rows)  # (its 1 MiB of slack holds the embedded metadata)
            with _writing(self.hdf5_path):
                write_embedded_info(self._file, [_plain(d) for d in info])
                self._dataset = None
                f, self._file = self._file, None
                f.close()
                _trim_to_hdf5_end(self._tmp_h5)
        _write_yaml(self._publisher.temp(self.yaml_path), info, self.yaml_path)
        self._publisher.commit()
        self._tmp_h5 = None
        self.committed = True
        return self.hdf5_path, self.yaml_path

    def abort(self):
        """Drop everything written so far (an earlier result under the target name stays); never raises."""
        self._dataset = None
        self._buffer = []
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        if self._publisher is not None:
            self._publisher.abort()
        self._tmp_h5 = None

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
        return False


def _write_error(exc, path) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc, path)
    text = " ".join(str(exc).split())
    for code, pattern in ((27, "errno = 27"), (28, "errno = 28"), (122, "errno = 122"), (13, "errno = 13"),
                          (30, "errno = 30")):
        if pattern in text:
            return describe_os_error(OSError(code, os.strerror(code)), path)
    return f"{path}: cannot be written ({type(exc).__name__}: {text[:300]})"


@contextlib.contextmanager
def _writing(path):
    """Turn h5py/OS failures while writing ``path`` (full disk, file-size limit, ...) into one OutputError."""
    try:
        yield
    except LocalizeError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise OutputError(_write_error(exc, path)) from None


def _table_bytes(locs, extendable: bool = False, info: list[dict] | None = None) -> bytes:
    """The whole ``_locs.hdf5`` (dataset ``locs``, and with ``info`` the embedded ``/metadata``) built in memory;
    ``extendable``: chunked and resizable with one chunk sized to the data (as a streamed table is, but small)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        if extendable:
            f.create_dataset("locs", data=np.ascontiguousarray(locs), maxshape=(None,), chunks=(max(len(locs), 1),))
        else:
            f.create_dataset("locs", data=np.ascontiguousarray(locs))
        if info is not None:  # the documents also inside the table (Picasso 0.11's /metadata)
            write_embedded_info(f, [_plain(d) for d in info])
    return buf.getvalue()


def _trim_to_hdf5_end(path):
    """Cut the space reserved beyond the end of a closed HDF5 file (its superblock's end-of-file address)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:8] != b"\x89HDF\r\n\x1a\n":
        return
    version = head[8]
    at = {0: 40, 1: 44, 2: 28, 3: 28}.get(version)
    if at is None or (version < 2 and (head[13] != 8)):  # only 8-byte offsets (what h5py writes)
        return
    end = int.from_bytes(head[at: at + 8], "little")
    if 0 < end < os.path.getsize(path):
        os.truncate(path, end)


def _write_bytes(tmp_path, data: bytes, target):
    try:
        with open(tmp_path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, target)) from None


def _write_yaml(tmp_path, info, target):
    try:
        with open(tmp_path, "w", encoding="utf-8") as fh:
            yaml.safe_dump_all([_plain(d) for d in info], fh, default_flow_style=False)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, target)) from None


def save_locs(hdf5_path, locs: np.ndarray, info: list[dict]) -> tuple[str, str]:
    """Atomically write ``locs`` (structured array) and the metadata documents ``info`` as a pair.

    Returns the two paths written.
    """
    hdf5_path, yaml_path, folder = _check_target(hdf5_path)
    locs = np.asarray(locs)
    if locs.dtype.names is None or "frame" not in locs.dtype.names:
        raise LocsFileError(f"{hdf5_path}: localizations are a structured array with Picasso's fields (frame, x, "
                            f"y, ...), got dtype {locs.dtype}")
    with Publisher([hdf5_path, yaml_path]) as pub:
        with _writing(hdf5_path):
            data = _table_bytes(locs, info=info)
        _write_bytes(pub.temp(hdf5_path), data, hdf5_path)
        _write_yaml(pub.temp(yaml_path), info, yaml_path)
        pub.commit()
    return hdf5_path, yaml_path


def load_info(yaml_path) -> list[dict]:
    """All documents of a ``_locs.yaml`` (ours or Picasso's), with old key spellings normalised."""
    try:
        docs = [d for d in safe_yaml.load_all(yaml_path, _LenientLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise LocsFileError(f"{yaml_path}: not valid YAML ({' '.join(str(exc).split())[:300]})") from None
    except (OSError, UnicodeError) as exc:
        raise LocsFileError(f"{yaml_path}: cannot be read ({exc})") from None
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
            if "locs" not in f or not isinstance(f["locs"], h5py.Dataset):
                raise LocsFileError(f"{hdf5_path}: no 'locs' table (keys: {list(f.keys())}); not a localization file")
            locs = f["locs"][...]
    except LocsFileError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise LocsFileError(f"{hdf5_path}: not a readable HDF5 localization file "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if locs.dtype.names is None or "frame" not in locs.dtype.names:
        raise LocsFileError(f"{hdf5_path}: 'locs' is not a localization table (dtype {locs.dtype}; Picasso's has "
                            "fields frame, x, y, ...)")
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


class _LenientLoader(safe_yaml.LimitedSafeLoader):
    """Safe loading (with the alias-expansion limit) that tolerates the python/ tags some Picasso versions write
    (as plain data)."""


def _construct_unknown(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_LenientLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_unknown)
_LenientLoader.add_multi_constructor("!", _construct_unknown)
