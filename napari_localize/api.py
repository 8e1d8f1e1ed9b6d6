"""The Python API: localize a movie file (or array) and write Picasso-compatible files.

The CLI and the napari widgets call these functions, so all three give identical results.
"""

from __future__ import annotations

import os

import numpy as np

from . import __version__
from .core.parameters import LocalizeParameters, fit_document, identify_document
from .core.pipeline import CancelToken, LocalizeStats, localize
from .io.locs import locs_paths, save_locs
from .io.movies import ArrayMovie, Movie, open_movie

GENERATED_BY = f"napari-localize v{__version__}"


def metadata_documents(movie_info: dict, p: LocalizeParameters, stats: LocalizeStats | None = None) -> list:
    """The ``_locs.yaml`` documents: movie info, identification, fit (with the run's counts)."""
    fit = fit_document(p, GENERATED_BY)
    if stats is not None:
        fit.update(stats.as_dict())
    return [dict(movie_info), identify_document(p, GENERATED_BY), fit]


def localize_movie(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None):
    """Localize a :class:`Movie` or an array ``(frames, height, width)``; return ``(locs, info, stats)``.

    ``info`` is the list of metadata documents that :func:`save_locs` writes to ``_locs.yaml``.
    """
    p = p or LocalizeParameters()
    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    locs, stats = localize(movie, p, progress=progress, cancel=cancel)
    return locs, metadata_documents(movie.info, p, stats), stats


def localize_file(path, p: LocalizeParameters | None = None, suffix: str = "", output_dir=None, progress=None,
                  cancel: CancelToken | None = None, movie_options: dict | None = None):
    """Localize the movie at ``path`` and write ``<base><suffix>_locs.hdf5`` and ``.yaml``.

    Nothing is written unless the whole run succeeds. Returns ``(hdf5_path, yaml_path, stats)``.
    """
    p = p or LocalizeParameters()
    hdf5_path, _ = locs_paths(path, suffix, output_dir)
    if output_dir is not None and not os.path.isdir(output_dir):
        raise FileNotFoundError(f"output folder {output_dir} does not exist")
    with open_movie(path, **(movie_options or {})) as movie:
        locs, info, stats = localize_movie(movie, p, progress, cancel)
    written = save_locs(hdf5_path, np.asarray(locs), info)
    return written[0], written[1], stats
