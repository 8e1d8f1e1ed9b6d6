"""Several ROIs and frame segments (Picasso 0.11's repeated ``--roi`` and ``--frame-bounds``).

ROIs are ``(y0, x0, y1, x1)`` half-open pixel rectangles: a spot belongs to an ROI when its centre pixel
``(y, x)`` satisfies ``y0 <= y < y1`` and ``x0 <= x < x1``. Overlapping ROIs are clipped into disjoint
rectangles, earlier ROIs taking precedence (:func:`clip_rois`), so no spot is counted twice. Identification
runs on the frame (or the ROIs' bounding box grown by ``box // 2 + 1`` pixels, :func:`padded_bbox`), so the
box test and the net gradient of a spot at an ROI's border see its real neighbours: borders keep their spots.

Frame segments are ``(first, last)`` 0-based inclusive, as Picasso's frame bounds; overlapping or touching
segments merge (:func:`merge_segments`).

With ``--regions-separately`` every ROI is written to its own file, in its own coordinates (x, y minus the
ROI's corner), named as Picasso names them: the first region ``_ref``, the others ``_ch1``, ``_ch2``, ...
"""

from __future__ import annotations

import numpy as np


class RegionError(ValueError):
    """An ROI or frame segment that cannot work; the message says which and what to use."""


def _norm(roi) -> tuple[int, int, int, int]:
    if len(roi) == 2:  # Picasso's [[y0, x0], [y1, x1]]
        (a, b), (c, d) = roi
        roi = (a, b, c, d)
    y0, x0, y1, x1 = (int(v) for v in roi)
    return min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)


def check_rois(rois, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The ROIs as normalised tuples; a clear error for an empty ROI or one outside the frame."""
    out = []
    for k, roi in enumerate(rois):
        y0, x0, y1, x1 = _norm(roi)
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise RegionError(f"ROI {k + 1} (y0 x0 y1 x1) = {y0} {x0} {y1} {x1} is not inside the {height}x{width} "
                              f"px frame; use 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width}")
        out.append((y0, x0, y1, x1))
    return out


def _subtract(a, b):
    """Rectangle ``a`` minus rectangle ``b``: at most four disjoint rectangles."""
    ay0, ax0, ay1, ax1 = a
    by0, bx0, by1, bx1 = b
    iy0, ix0, iy1, ix1 = max(ay0, by0), max(ax0, bx0), min(ay1, by1), min(ax1, bx1)
    if iy0 >= iy1 or ix0 >= ix1:
        return [a]
    pieces = [(ay0, ax0, iy0, ax1), (iy1, ax0, ay1, ax1),  # above, below (full width)
              (iy0, ax0, iy1, ix0), (iy0, ix1, iy1, ax1)]  # left, right (of the overlap's rows)
    return [p for p in pieces if p[0] < p[2] and p[1] < p[3]]


def clip_rois(rois, min_size: int = 0) -> list[tuple[int, int, int, int]]:
    """Disjoint rectangles covering the union of ``rois``; earlier ROIs keep their overlap.

    A later ROI may split into several pieces; pieces narrower than ``min_size`` pixels (that cannot hold a
    box) are dropped.
    """
    accepted: list[tuple[int, int, int, int]] = []
    for roi in rois:
        pieces = [_norm(roi)]
        for done in accepted:
            pieces = [q for p in pieces for q in _subtract(p, done)]
        accepted.extend(p for p in pieces if p[2] - p[0] >= max(min_size, 1) and p[3] - p[1] >= max(min_size, 1))
    return accepted


def roi_index(y, x, rois) -> np.ndarray:
    """Index (into ``rois``) of the first ROI holding each centre pixel ``(y, x)``; -1 for none."""
    y = np.asarray(y)
    x = np.asarray(x)
    out = np.full(y.shape, -1, np.int32)
    for k, (y0, x0, y1, x1) in enumerate(rois):
        inside = (y >= y0) & (y < y1) & (x >= x0) & (x < x1) & (out < 0)
        out[inside] = k
    return out


def padded_bbox(rois, box_size: int, height: int, width: int, extra: int = 0) -> tuple[int, int, int, int]:
    """The ROIs' bounding box grown by ``box_size // 2 + 1 + extra`` pixels (a prefilter's reach),
    clipped to the frame: the crop identification needs so that spots at ROI borders are found as in the
    whole frame."""
    pad = int(box_size) // 2 + 1 + int(extra)
    y0 = max(min(r[0] for r in rois) - pad, 0)
    x0 = max(min(r[1] for r in rois) - pad, 0)
    y1 = min(max(r[2] for r in rois) + pad, height)
    x1 = min(max(r[3] for r in rois) + pad, width)
    return y0, x0, y1, x1


def merge_segments(segments, n_frames: int) -> list[tuple[int, int]]:
    """Frame segments ``(first, last)`` (inclusive) sorted, merged where they overlap or touch, clipped to
    the movie; a clear error for a reversed segment or one starting after the movie."""
    out = []
    for k, seg in enumerate(segments):
        first, last = (int(v) for v in seg)
        if not 0 <= first <= last:
            raise RegionError(f"frame segment {k + 1} ({first} {last}) must satisfy 0 <= first <= last")
        if first >= n_frames:
            raise RegionError(f"frame segment {k + 1} starts at {first} but the movie has only {n_frames} frames "
                              "(0-based)")
        out.append((first, min(last, n_frames - 1)))
    out.sort()
    merged: list[tuple[int, int]] = []
    for first, last in out:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def in_segments(frames, segments) -> np.ndarray:
    """Boolean mask: frame numbers inside any of the (merged) inclusive segments."""
    frames = np.asarray(frames)
    keep = np.zeros(frames.shape, bool)
    for first, last in segments:
        keep |= (frames >= first) & (frames <= last)
    return keep


def segment_spans(segments) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` frame intervals of inclusive segments (what a run iterates over)."""
    return [(int(a), int(b) + 1) for a, b in segments]


def region_label(index: int) -> str:
    """Picasso's name of region ``index`` in a split field of view: ``ref``, then ``ch1``, ``ch2``, ..."""
    return "ref" if index == 0 else f"ch{index}"


def region_suffix(index: int) -> str:
    return f"_{region_label(index)}"


def to_region_coordinates(locs, roi) -> np.ndarray:
    """A copy of ``locs`` with x, y moved into the ROI's own frame (its corner at 0, 0)."""
    y0, x0, _, _ = _norm(roi)
    out = np.array(locs, copy=True)
    out["x"] = (np.asarray(out["x"], np.float64) - x0).astype(out["x"].dtype)
    out["y"] = (np.asarray(out["y"], np.float64) - y0).astype(out["y"].dtype)
    return out


def region_movie_info(movie_info: dict, roi) -> dict:
    """The movie-info document of one region: its own width and height, ``Region`` where it sat."""
    y0, x0, y1, x1 = _norm(roi)
    info = dict(movie_info)
    info.update(Width=int(x1 - x0), Height=int(y1 - y0), Region=[[int(y0), int(x0)], [int(y1), int(x1)]])
    return info


def roi_metadata(rois) -> list | None:
    """``ROI`` for the identification document: one ROI as Picasso < 0.11 writes it (``[[y0, x0], [y1, x1]]``),
    several as 0.11 does (a list of those)."""
    if not rois:
        return None
    rects = [[[int(r[0]), int(r[1])], [int(r[2]), int(r[3])]] for r in (_norm(r) for r in rois)]
    return rects[0] if len(rects) == 1 else rects


def segments_metadata(segments) -> list | None:
    """``Frame Bounds``: one segment as ``[first, last]``, several as a list of those (Picasso 0.11)."""
    if not segments:
        return None
    segs = [[int(a), int(b)] for a, b in segments]
    return segs[0] if len(segs) == 1 else segs
