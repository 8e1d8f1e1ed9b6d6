"""TIFF movies via tifffile: plain, ImageJ, OME, BigTIFF, compressed, Micro-Manager MMStack and NDTiff.

Every page series becomes ``(frames, height, width)``: a channel axis (``C``) and a position axis (``R``) are
chosen by the caller; every other axis (time, z, ...) is flattened into frames in storage order.
Uncompressed contiguous series are read with plain file reads; others are read page by page. Nothing is held in memory.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings

import numpy as np
import tifffile

from ._base import FrameFile, Movie, MovieError, movie_info
from .metadata import MovieChoiceError, choose, flatten_propval, mm_pixelsize_nm, parse_mm_json, plain

#: a Micro-Manager follow-on ("rollover") file: <base>_<n>.ome.tif / <base>_NDTiffStack_<n>.tif
_FOLLOW_ON = re.compile(r"^(?P<base>.+)_(?P<n>\d+)(?P<ext>\.ome\.tiff?|\.tiff?)$", re.IGNORECASE)
_PAGE_ERRORS = ("invalid page offset", "corrupted", "invalid value offset", "failed to read", "truncated")
_CHANNEL_AXES = "C"
_POSITION_AXES = "R"


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def follow_on_of(path) -> tuple[str, int] | None:
    """``(first file, n)`` if ``path`` is a Micro-Manager follow-on file whose first file exists, else ``None``."""
    folder, name = os.path.split(os.fspath(path))
    m = _FOLLOW_ON.match(name)
    if m is None:
        return None
    base, ext = m["base"], m["ext"]
    if not (ext.lower().startswith(".ome") or base.endswith("_NDTiffStack")):
        return None
    first = os.path.join(folder, base + ext)
    return (first, int(m["n"])) if os.path.exists(first) else None


def follow_on_files(path) -> tuple[list[str], list[str]]:
    """The follow-on files of a first file, in order, and the names of gaps (missing ``_n`` files)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    m = re.match(r"^(?P<base>.+?)(?P<ext>\.ome\.tiff?|\.tiff?)$", name, re.IGNORECASE)
    if m is None:
        return [], []
    base, ext = m["base"], m["ext"]
    if not (ext.lower().startswith(".ome") or base.endswith("_NDTiffStack")):
        return [], []
    found = {}
    for candidate in glob.glob(os.path.join(glob.escape(folder or "."), glob.escape(base) + "_*" + ext)):
        mm = _FOLLOW_ON.match(os.path.basename(candidate))
        if mm is not None and mm["base"] == base and mm["ext"] == ext:
            found[int(mm["n"])] = candidate
    if not found:
        return [], []
    last = max(found)
    missing = [f"{base}_{n}{ext}" for n in range(1, last + 1) if n not in found]
    return [found[n] for n in sorted(found)], missing


class TiffMovie(Movie):
    """One page series of a TIFF file (or a Micro-Manager multi-file acquisition) as ``(frames, height, width)``.

    Parameters
    ----------
    path : str or PathLike
        The TIFF file; for a Micro-Manager acquisition the first file (any file of an NDTiff dataset).
    channel, position : int or str, optional
        Index (or name) of the channel / stage position to read. Required when the file holds several.
    series : int
        Which tifffile series to read (default 0).
    follow_on : bool
        Append Micro-Manager follow-on files (``<base>_1.ome.tif``, ...) that tifffile did not already include.
    """

    def __init__(self, path, channel=None, position=None, series: int = 0, follow_on: bool = True):
        self.path = os.fspath(path)
        self._tif = None
        self._other_handles = []
        self._parts: list[TiffMovie] = []
        capture = _LogCapture()
        tlog = logging.getLogger("tifffile")
        tlog.addHandler(capture)
        try:
            try:
                self._tif = tifffile.TiffFile(self.path)
                all_series = self._tif.series
            except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
                self.close()
                raise MovieError(f"{self.path}: not a readable TIFF file ({exc})") from None
            if not all_series:
                self.close()
                raise MovieError(f"{self.path}: the TIFF file holds no image")
            if not 0 <= series < len(all_series):
                self.close()
                raise MovieError(f"{self.path}: series {series} does not exist (the file has {len(all_series)})")
            self._series = all_series[series]
            try:
                self._setup(channel, position, capture)
            except BaseException:
                self.close()
                raise
        finally:
            tlog.removeHandler(capture)
        if follow_on:
            try:
                self._add_follow_on_files(channel, position)
            except BaseException:
                self.close()
                raise

    # -- layout -------------------------------------------------------------------------------
    def _setup(self, channel, position, capture):
        s = self._series
        axes, shape = s.axes, tuple(int(n) for n in s.shape)
        if "S" in axes and shape[axes.index("S")] > 1:
            raise MovieError(f"{self.path}: RGB/multi-sample images (axes {axes}, shape {shape}) are not "
                             "single-molecule movies; save one grey channel")
        page_nd = len(s.keyframe.shape)
        outer_axes, outer_shape = axes[:-page_nd], shape[:-page_nd]
        yx = [int(shape[k]) for k in range(len(shape) - page_nd, len(shape)) if axes[k] in "YX"]
        height, width = (yx + [0, 0])[:2] if len(yx) == 2 else (0, 0)
        if len(shape) < 2 or height < 1 or width < 1:
            raise MovieError(f"{self.path}: the image has shape {shape}, not frames of height x width")
        self.dtype = np.dtype(s.dtype).newbyteorder("=")
        if self.dtype.kind not in "uif":
            raise MovieError(f"{self.path}: unsupported pixel type {self.dtype} (need integer or float pixels)")

        # channel and position choice
        ch_names, pos_names = self._choice_names(outer_axes, outer_shape)
        if (channel is None and len(ch_names) > 1) or (position is None and len(pos_names) > 1):
            raise MovieChoiceError(self.path, ch_names if channel is None else (),
                                   pos_names if position is None else ())
        ci = choose(self.path, "channel", ch_names, channel)
        pi = choose(self.path, "position", pos_names, position)
        fixed = {}
        for ax, i, names in ((_CHANNEL_AXES, ci, ch_names), (_POSITION_AXES, pi, pos_names)):
            if ax in outer_axes and (names or ax == _POSITION_AXES):
                fixed[outer_axes.index(ax)] = i
        frame_dims = [k for k in range(len(outer_axes)) if k not in fixed]
        frame_shape = tuple(outer_shape[k] for k in frame_dims)
        frames = int(np.prod(frame_shape)) if frame_shape else 1
        # flat page index of every frame
        grids = np.unravel_index(np.arange(frames), frame_shape) if frame_shape else ()
        full = [None] * len(outer_axes)
        for k, g in zip(frame_dims, grids):
            full[k] = g
        for k, i in fixed.items():
            full[k] = np.full(frames, i)
        self._page_index = (np.ravel_multi_index(full, outer_shape) if outer_axes
                            else np.zeros(1, np.intp)).astype(np.intp)
        self.channel, self.position = ci, pi
        self.channel_names, self.position_names = ch_names, pos_names

        # storage: a memory map for uncompressed contiguous data, else pages
        self._mm = None
        self._pages = None
        npages = int(np.prod(outer_shape)) if outer_shape else 1
        on_disk = np.dtype(s.dtype).newbyteorder(self._tif.byteorder)
        filesize = self._tif.filehandle.size
        frame_bytes = height * width * on_disk.itemsize
        broken = [m for m in capture.messages if any(e in m for e in _PAGE_ERRORS)]
        expected = self._expected_pages()
        if s.dataoffset is not None and s.keyframe.compression == 1 and "S" not in axes:
            end = s.dataoffset + npages * frame_bytes
            if end > filesize:
                whole = max(0, (filesize - s.dataoffset) // frame_bytes)
                raise self._truncated(whole, npages)
            self._mm = FrameFile(self.path, s.dataoffset, on_disk, (height, width))
        else:
            try:
                pages = list(s.pages)
            except (IndexError, ValueError, OSError, tifffile.TiffFileError) as exc:
                try:
                    have = len(self._tif.pages)
                except Exception:
                    have = 0
                raise self._truncated(have, max(npages, expected or 0), str(exc)) from None
            if len(pages) != npages:
                raise self._truncated(len(pages), max(npages, expected or 0))
            self._pages = pages
            # pages of other files (Micro-Manager/NDTiff sets): keep those files open while the movie is
            for fh in {id(p.parent.filehandle): p.parent.filehandle for p in pages if p is not None}.values():
                if fh is not self._tif.filehandle and fh.closed:
                    fh.open()
                    self._other_handles.append(fh)
            last = next((p for p in reversed(pages) if p is not None), None)
            if last is not None:
                fsize = last.parent.filehandle.size
                ends = [o + c for o, c in zip(last.dataoffsets, last.databytecounts)]
                if ends and max(ends) > fsize:
                    whole = sum(1 for p in pages if p is not None and p.parent is last.parent and all(
                        o + c <= fsize for o, c in zip(p.dataoffsets, p.databytecounts)))
                    raise self._truncated(whole, npages)
        if broken or (expected is not None and expected > npages):
            raise self._truncated(npages, expected, broken[0] if broken else None)

        # frames whose page is missing (an acquisition stopped early): drop trailing ones, warn about others
        if self._pages is not None:
            present = np.array([self._pages[i] is not None for i in self._page_index])
            if not present.any():
                raise MovieError(f"{self.path}: the chosen channel/position holds no image")
            n_ok = int(np.nonzero(present)[0][-1]) + 1
            if n_ok < frames:
                warnings.warn(f"{self.path}: the acquisition stops after frame {n_ok - 1}; reading {n_ok} of "
                              f"{frames} planned frames", stacklevel=3)
                self._page_index = self._page_index[:n_ok]
                frames = n_ok
            gaps = int((~present[:n_ok]).sum())
            if gaps:
                warnings.warn(f"{self.path}: {gaps} frame(s) are missing from the acquisition and read as zeros",
                              stacklevel=3)
        self.shape = (frames, height, width)
        self._frame_axes = "".join(outer_axes[k] for k in frame_dims)
        self._frame_shape = frame_shape
        self.info = movie_info(self.shape, self.dtype, self.path, **self._metadata())
        self.info["Byte Order"] = self._tif.byteorder

    def _truncated(self, whole, expected, detail=None):
        exp = f" of {expected} expected" if expected else ""
        more = f" ({detail})" if detail else ""
        return MovieError(f"{self.path}: the file is truncated or damaged: frame {whole} (0-based){exp} is "
                          f"missing or incomplete{more}; only frames 0..{max(whole - 1, 0)} are intact. "
                          "Copy the file again from the acquisition computer.")

    def _expected_pages(self):
        """Pages the writer announced (ImageJ ``images=``, tifffile ``shape``), or ``None`` if unknown."""
        tif = self._tif
        try:
            if tif.is_imagej and tif.imagej_metadata and "images" in tif.imagej_metadata:
                return int(tif.imagej_metadata["images"])
            if tif.is_shaped and tif.shaped_metadata:
                shp = tif.shaped_metadata[0].get("shape")
                if shp and len(shp) > 2:
                    return int(np.prod(shp[:-2]))
            desc = tif.pages.first.description
            m = re.search(r"\bimages=(\d+)", desc or "")
            if m:
                return int(m.group(1))
        except Exception:  # metadata is advisory
            return None
        return None

    def _ndtiff_channel_names(self, n: int) -> list[str]:
        """NDTiff keeps channel names only per image (tag 51123 ``Axes: {"channel": NAME}``): the first ``n``
        distinct names, in page order (the first pages suffice when the channel axis is inside the time axis)."""
        names: list[str] = []
        pages = self._tif.pages
        for i in range(min(len(pages), 64 * n)):
            tag = pages[i].tags.get(51123) if hasattr(pages[i], "tags") else None
            axes = tag.value.get("Axes") if tag is not None and isinstance(tag.value, dict) else None
            name = axes.get("channel") if isinstance(axes, dict) else None
            if name is None:
                return []
            if str(name) not in names:
                names.append(str(name))
                if len(names) == n:
                    return names
        return []

    def _choice_names(self, outer_axes, outer_shape):
        mm = self._tif.micromanager_metadata or {}
        summary = mm.get("Summary") if isinstance(mm.get("Summary"), dict) else {}
        ch, pos = [], []
        if _CHANNEL_AXES in outer_axes:
            n = outer_shape[outer_axes.index(_CHANNEL_AXES)]
            names = summary.get("ChNames") if isinstance(summary.get("ChNames"), list) else None
            if not names and self._tif.is_ome:
                names = re.findall(r'<Channel [^>]*?Name="([^"]*)"', self._tif.ome_metadata or "")
            if not names and self._tif.is_micromanager:
                names = self._ndtiff_channel_names(n)
            if names and len(names) >= n:
                ch = [str(x) for x in names[:n]]
            elif outer_axes != _CHANNEL_AXES:
                ch = [str(i) for i in range(n)]
            # else: an unnamed 'C' as the only axis above the frames is how ImageJ and OME writers label a plain
            # stack; a movie it is, not a choice of channels (ch stays empty and the axis becomes the frames)
        if _POSITION_AXES in outer_axes:
            n = outer_shape[outer_axes.index(_POSITION_AXES)]
            plist = summary.get("InitialPositionList") or summary.get("StagePositions") or []
            names = [p.get("Label") for p in plist if isinstance(p, dict)] if isinstance(plist, list) else []
            pos = [str(x) for x in names[:n]] if len(names) >= n and all(names[:n]) else \
                [f"Pos{i}" for i in range(n)]
        return ch, pos

    def _metadata(self) -> dict:
        tif = self._tif
        extra = {}
        mm_all = tif.micromanager_metadata or {}
        summary = mm_all.get("Summary") if isinstance(mm_all.get("Summary"), dict) else {}
        first_page = self._first_page()
        tags = getattr(first_page, "tags", None)
        if tags is None:  # a TiffFrame (NDTiff virtual page): the keyframe carries the tags
            tags = getattr(getattr(first_page, "keyframe", None), "tags", None) or self._series.keyframe.tags
        tag = tags.get(51123) if tags is not None else None
        mm = flatten_propval(parse_mm_json(tag.value)) if tag is not None else {}
        if mm or tif.is_micromanager:
            extra["Micro-Manager Metadata"] = plain(mm)
            camera = mm.get("Camera") or mm.get("Core-Camera") or summary.get("Core-Camera")
            extra["Camera"] = str(camera) if camera else "None"
            comments = mm_all.get("Comments")
            text = comments.get("Summary") if isinstance(comments, dict) else None
            if text:
                extra["Micro-Manager Acquisition Comments"] = str(text).splitlines()
            px = mm_pixelsize_nm(mm, summary)
            if px:
                extra["Pixelsize"] = px
        if "Pixelsize" not in extra:
            px = self._pixelsize_nm()
            if px:
                extra["Pixelsize"] = px
        if self.channel_names:
            extra["Channel"] = self.channel_names[self.channel]
        if self.position_names:
            extra["Position"] = self.position_names[self.position]
        return extra

    def _first_page(self):
        if self._pages is not None:
            p = self._pages[int(self._page_index[0])] if len(self._page_index) else None
            return p if p is not None else self._series.keyframe
        return self._series.keyframe

    def _pixelsize_nm(self):
        tif = self._tif
        try:
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
                if m:
                    factor = {"nm": 1.0, "µm": 1000.0, "um": 1000.0, "mm": 1e6}.get(
                        unit.group(1) if unit else "µm", 1000.0)
                    return float(m.group(1)) * factor
            if tif.is_imagej and tif.imagej_metadata:
                unit = str(tif.imagej_metadata.get("unit", "")).replace("\\u00B5", "µ")
                res = self._series.keyframe.tags.get("XResolution")
                if res is not None and unit in ("micron", "µm", "um", "nm"):
                    num, den = res.value
                    if num > 0:
                        size = den / num
                        return size * (1.0 if unit == "nm" else 1000.0)
        except Exception:  # metadata is advisory
            return None
        return None

    # -- follow-on files --------------------------------------------------------------------
    def _files_covered(self) -> set:
        if self._pages is None:
            return {os.path.abspath(self.path)}
        return {os.path.abspath(p.parent.filehandle.path) for p in self._pages if p is not None}

    def _add_follow_on_files(self, channel, position):
        files, missing = follow_on_files(self.path)
        covered = self._files_covered()
        files = [f for f in files if os.path.abspath(f) not in covered]
        for name in missing:
            warnings.warn(f"{self.path}: follow-on file {name} is missing; its frames are not read", stacklevel=3)
        if not files:
            return
        frames = self.shape[0]
        for f in files:
            part = TiffMovie(f, channel=channel, position=position, follow_on=False)
            if part.shape[1:] != self.shape[1:] or part.dtype != self.dtype:
                part.close()
                raise MovieError(f"{f}: frames of {part.shape[1:]} {part.dtype} do not continue {self.path} "
                                 f"({self.shape[1:]} {self.dtype})")
            self._parts.append(part)
            frames += part.shape[0]
        self.shape = (frames,) + self.shape[1:]
        self.info["Frames"] = frames
        self.info["Files"] = [self.path] + [p.path for p in self._parts]

    # -- reading ------------------------------------------------------------------------------
    def _read(self, start, stop):
        if stop <= start:
            return self._empty()
        own = len(self._page_index)
        if start >= own or stop > own:
            out = np.empty((stop - start,) + self.shape[1:], self.dtype)
            pos = start
            if start < own:
                out[: own - start] = self._read_own(start, own)
                pos = own
            base = own
            for part in self._parts:
                n = part.shape[0]
                lo, hi = max(pos, base), min(stop, base + n)
                if hi > lo:
                    out[lo - start: hi - start] = part._read(lo - base, hi - base)
                    pos = hi
                base += n
            return out
        return self._read_own(start, stop)

    def _read_own(self, start, stop):
        idx = self._page_index[start:stop]
        if self._mm is not None:
            if len(idx) and idx[-1] - idx[0] == len(idx) - 1:
                return self._mm.read(int(idx[0]), int(idx[-1]) + 1, self.dtype)
            return np.concatenate([self._mm.read(int(i), int(i) + 1, self.dtype) for i in idx]) if len(idx) \
                else self._empty()
        out = np.zeros((len(idx),) + self.shape[1:], self.dtype)
        for k, i in enumerate(idx):
            page = self._pages[int(i)]
            if page is None:
                continue
            try:
                out[k] = np.asarray(page.asarray()).reshape(self.shape[1:])
            except Exception as exc:
                fname = getattr(getattr(page.parent, "filehandle", None), "path", self.path)
                raise MovieError(f"{fname}: frame {start + k} cannot be read; the file is truncated or damaged "
                                 f"({exc})") from None
        return out

    def close(self):
        for part in getattr(self, "_parts", []):
            part.close()
        self._parts = []
        mm = getattr(self, "_mm", None)
        if mm is not None:
            mm.close()
        self._mm = None
        for fh in getattr(self, "_other_handles", []):
            fh.close()
        self._other_handles = []
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
        self._tif = None
