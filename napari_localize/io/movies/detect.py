"""Which reader a path needs: by its name AND by its first bytes (the file signature).

One detection serves :func:`napari_localize.io.movies.open_movie` (the CLI, the API, the widgets) and the
npe2 reader hook's "can I read this" (:func:`movie_kind`, which never raises). The name alone is not trusted:
a TIFF saved as ``.raw`` is read as the TIFF it is, an ND2 file named ``.tif`` as ND2 (with a
:class:`MovieFormatWarning` saying so), and a file whose bytes match no movie format is refused with an error
that says what it looks like instead (text, gzip, an HDF5 table of localizations, ...).

Signatures (first bytes):

=========  ====================================================  ==========================================
format     signature                                             reader
=========  ====================================================  ==========================================
TIFF       ``II*\\0`` / ``MM\\0*``; BigTIFF ``II+\\0`` / ``MM\\0+``  :class:`~.tiff.TiffMovie` (also NDTiff)
Imaris     HDF5 ``\\x89HDF\\r\\n\\x1a\\n`` with a ``DataSet`` group       :class:`~.ims.ImsMovie`
ND2        ``\\xda\\xce\\xbe\\x0a`` (chunk map), or JPEG 2000 (legacy)   :class:`~.nd2.Nd2Movie`
CZI        ``ZISRAWFILE``                                        :class:`~.czi.CziMovie`
LIF        int32 ``0x70`` then, at byte 8, ``0x2A``              :class:`~.lif.LifMovie`
raw        none (frames only; the ``.yaml`` sidecar describes)   :class:`~.raw.RawMovie`
=========  ====================================================  ==========================================

An NDTiff dataset opens from its folder, its ``NDTiff.index`` or any of its ``*_NDTiffStack*.tif`` files.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass

from ._base import MovieError

#: what each format is called in messages
LABELS = {"tiff": "TIFF", "ims": "Imaris (.ims)", "nd2": "Nikon ND2", "czi": "Zeiss CZI", "lif": "Leica LIF",
          "raw": "raw (.raw + .yaml)"}

#: lower-case file endings of each format, longest first
_ENDINGS = (((".ome.tiff", ".ome.tif", ".tiff", ".tif"), "tiff"), ((".raw",), "raw"), ((".ims",), "ims"),
            ((".nd2",), "nd2"), ((".czi",), "czi"), ((".lif",), "lif"))

_HDF5 = b"\x89HDF\r\n\x1a\n"

#: signatures of files that are not movies, for a clear refusal
_NOT_MOVIES = ((b"\x1f\x8b", "a gzip-compressed file: decompress it first (gunzip)"),
               (b"PK\x03\x04", "a zip archive: extract the movie first"),
               (b"RIFF", "a RIFF (AVI/WAV) file: save the movie as TIFF"),
               (b"\x89PNG", "a PNG image: save the movie as TIFF"),
               (b"\xff\xd8\xff", "a JPEG image: save the movie as TIFF"),
               (b"%PDF", "a PDF document"),
               (b"\x00\x00\x00\x00\x00\x00\x00\x00", "all zero bytes at its start (an empty or wiped file?)"))


class MovieFormatWarning(UserWarning):
    """A movie's name says one format and its bytes another; it was read by what its bytes say."""


@dataclass(frozen=True)
class MovieKind:
    """The outcome of detection: which reader opens ``path``.

    ``format`` is one of :data:`LABELS`' keys; ``path`` the file that reader opens (for an NDTiff dataset
    folder or index: its first stack file); ``by`` is ``"signature"`` (the first bytes say it) or
    ``"name"`` (formats without a signature: ``.raw``); ``mismatch`` says how the name disagreed, or None.
    """

    format: str
    path: str
    by: str
    mismatch: str | None = None

    @property
    def label(self) -> str:
        return LABELS[self.format]


def format_of_name(path) -> str | None:
    """The format a file's ending names (``"tiff"``, ``"raw"``, ...), or None."""
    lower = os.fspath(path).lower()
    for endings, fmt in _ENDINGS:
        if lower.endswith(endings):
            return fmt
    return None


def _read_head(path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def format_of_bytes(head: bytes) -> str | None:
    """The format the first bytes of a file say: ``"tiff"``, ``"hdf5"``, ``"nd2"``, ``"czi"``, ``"lif"`` or None."""
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] in (b"II+\x00", b"MM\x00+") and head[4:6] in (b"\x08\x00", b"\x00\x08"):
        return "tiff"  # BigTIFF (offsets of 8 bytes)
    if head[:8] == _HDF5:
        return "hdf5"
    if head[:4] == b"\xda\xce\xbe\x0a" or head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return "nd2"
    if head[:10] == b"ZISRAWFILE":
        return "czi"
    if head[:4] == b"\x70\x00\x00\x00" and len(head) > 8 and head[8] == 0x2A:
        return "lif"
    return None


def _looks_like(head: bytes) -> str:
    """What a file that is no movie looks like, for the error message."""
    if not head:
        return "an empty file"
    for magic, what in _NOT_MOVIES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file (it starts {text[:12]!r})"
    return f"no known movie format (its first bytes are {head[:8].hex(' ')})"


def _is_imaris(path) -> bool | None:
    """True for an HDF5 file with an Imaris ``DataSet`` group, False without one, None if h5py cannot open it."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "DataSet" in f
    except Exception:  # noqa: BLE001 (h5py raises several types on damaged files)
        return None


def _a(label: str) -> str:
    return ("an " if label[0] in "AEIOU" else "a ") + label


def _ndtiff_first(folder):
    names = sorted(n for n in os.listdir(folder) if re.search(r"_NDTiffStack\.tiff?$", n, re.IGNORECASE))
    return os.path.join(folder, names[0]) if names else None


def is_ndtiff_folder(path) -> bool:
    """True if ``path`` is a folder holding an NDTiff dataset (``NDTiff.index`` and ``*_NDTiffStack.tif``)."""
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "NDTiff.index")) and bool(_ndtiff_first(path))


def detect_movie(path) -> MovieKind:
    """Which reader opens ``path``; raises :class:`MovieError` saying why none does (and what the file looks
    like). Warns with :class:`MovieFormatWarning` when the name and the bytes disagree."""
    kind = _detect(os.fspath(path))
    if kind.mismatch:
        warnings.warn(kind.mismatch, MovieFormatWarning, stacklevel=4)  # the caller of open_movie
    return kind


def movie_kind(path) -> MovieKind | None:
    """:func:`detect_movie` for a "can I read this" question: the kind, or None; never raises, never warns."""
    try:
        return _detect(os.fspath(path))
    except Exception:  # noqa: BLE001 (a check must never raise)
        return None


def _detect(path: str) -> MovieKind:
    from . import MOVIE_EXTENSIONS

    if not os.path.exists(path):
        raise MovieError(f"{path}: no such file")
    if os.path.isdir(path):
        if is_ndtiff_folder(path):
            return MovieKind("tiff", _ndtiff_first(path), "signature")
        raise MovieError(f"{path}: a folder, not a movie (only NDTiff dataset folders open as one movie)")
    if os.path.basename(path) == "NDTiff.index":
        folder = os.path.dirname(path) or "."
        if is_ndtiff_folder(folder):
            return MovieKind("tiff", _ndtiff_first(folder), "signature")
        raise MovieError(f"{path}: an NDTiff index without its *_NDTiffStack.tif files beside it")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise MovieError(f"{path}: not a regular file (a pipe, device or socket); copy the movie to a file first")
    by_name = format_of_name(path)
    head = _read_head(path)
    by_bytes = format_of_bytes(head)
    if by_bytes == "hdf5":
        imaris = _is_imaris(path)
        if imaris or (imaris is None and by_name == "ims"):  # a damaged .ims: its reader says what is wrong
            by_bytes = "ims"
        else:
            raise MovieError(f"{path}: an HDF5 file without an Imaris 'DataSet', not a movie (a table of "
                             "localizations opens with napari_localize.load_locs, or in napari as points)")
    if by_bytes is not None:
        mismatch = None
        if by_name != by_bytes:
            named = f"its name says {LABELS[by_name]}" if by_name else "its name has no movie ending"
            mismatch = f"{path}: {_a(LABELS[by_bytes])} file by its first bytes ({named}); read as {LABELS[by_bytes]}"
        return MovieKind(by_bytes, path, "signature", mismatch)
    if by_name == "raw":
        return MovieKind("raw", path, "name")  # frames only: the .yaml sidecar describes them
    if by_name is None:
        raise MovieError(f"{path}: unknown movie type ({_looks_like(head)}); napari-localize reads "
                         f"{', '.join(MOVIE_EXTENSIONS)} (and NDTiff dataset folders)")
    raise MovieError(f"{path}: not a readable {LABELS[by_name].split(' ')[0]} file: it is {_looks_like(head)}, "
                     f"not {LABELS[by_name]}")
