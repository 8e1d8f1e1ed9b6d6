"""A z-stack with several frames per z position, seen as an ordinary stack of one frame per position.

Picasso 0.11 calibrates from stacks that hold ``N`` frames per z step (several fields of view, or repeats):
``frame_order="fov"`` when the N frames of a step follow each other (step = frame // N), ``"z"`` when the
whole z scan is repeated N times (step = frame % steps). :class:`StepTiledMovie` places the N frames of a
step side by side (with a gap of ``gap`` pixels filled with the step's median, so no box straddles two
frames and no edge looks like a spot): every bead of every field of view is then followed through z by the
ordinary calibration, and nothing is averaged across fields of view.
"""

from __future__ import annotations

import numpy as np

from ._base import Movie, MovieError, movie_info

FRAME_ORDERS = ("fov", "z")


def step_frames(n_frames: int, frames_per_step: int, frame_order: str) -> np.ndarray:
    """``(steps, frames_per_step)`` movie frame indices: row s holds the frames taken at z step s."""
    n = int(frames_per_step)
    if n < 1:
        raise MovieError(f"frames per step must be >= 1, got {frames_per_step}")
    if frame_order not in FRAME_ORDERS:
        raise MovieError(f"frame order must be one of {', '.join(FRAME_ORDERS)}, got {frame_order!r}")
    steps = int(n_frames) // n
    if steps < 1:
        raise MovieError(f"{frames_per_step} frames per step but the stack has only {n_frames} frames")
    if frame_order == "fov":
        return np.arange(steps * n).reshape(steps, n)
    return np.arange(steps * n).reshape(n, steps).T


class StepTiledMovie(Movie):
    """``(steps, height, N * width + (N - 1) * gap)``: the N frames of each z step side by side."""

    def __init__(self, movie, frames_per_step: int, frame_order: str = "fov", gap: int = 8):
        self._movie = movie
        f, h, w = (int(v) for v in movie.shape)
        self._index = step_frames(f, frames_per_step, frame_order)
        self.n = int(frames_per_step)
        self.gap = int(gap)
        self.frame_width = w
        self.shape = (len(self._index), h, self.n * w + (self.n - 1) * self.gap)
        self.dtype = np.dtype(movie.dtype)
        self.path = getattr(movie, "path", None)
        info = dict(getattr(movie, "info", {}) or {})
        info.update(Frames=self.shape[0], Width=self.shape[2])
        info["Frames per step"] = self.n
        info["Frame order"] = frame_order
        self.info = movie_info(self.shape, self.dtype, self.path, **{
            k: v for k, v in info.items() if k not in ("Byte Order", "Data Type", "Frames", "Height", "Width",
                                                       "File")})
        self.unused_frames = f - self._index.size

    def _read(self, start, stop):
        out = np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        w, g = self.frame_width, self.gap
        for k, row in enumerate(self._index[start:stop]):
            frames = [np.asarray(self._movie[int(i)]) for i in row]
            fill = np.median(np.stack(frames))
            out[k] = np.asarray(fill).astype(self.dtype)
            for j, frame in enumerate(frames):
                out[k, :, j * (w + g): j * (w + g) + w] = frame
        return out

    def close(self):
        pass
