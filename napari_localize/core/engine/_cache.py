"""Numba cache keys that see the engine: no cached kernel runs stale engine code after an edit.

numba stamps a cached function with the hash of the file that defines it. A kernel that inlines
``register_jitable`` functions from other files (the engine) would keep running the old code after those
files change. The locator installed here wraps numba's own choice of cache directory for every function of
this package and adds the hash of every file of ``core/engine/`` to the stamp, so editing any engine file
invalidates every cached kernel of the package (they recompile once). Rule: jitted code calls jitted code of
other modules only inside ``core/engine/``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba.core.caching import CacheImpl, _CacheLocator

PACKAGE_DIR = Path(__file__).resolve().parents[2]
ENGINE_DIR = Path(__file__).resolve().parent


def engine_stamp() -> str:
    """sha256 over the sources of ``core/engine/`` (read at every call: an edit is seen at once)."""
    h = hashlib.sha256()
    for f in sorted(ENGINE_DIR.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class EngineAwareLocator(_CacheLocator):
    """numba's default locator for a function of this package, with the engine's hash in the stamp."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        # what numba reads of its own locators beyond the interface (``_py_file`` and ``_lineno``, for the
        # warning that a function cannot be cached) comes from the wrapped one
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            if PACKAGE_DIR not in Path(py_file).resolve().parents:
                return None
        except OSError:
            return None
        for other in CacheImpl._locator_classes:
            if other is cls:
                continue
            inner = other.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return (self._inner.get_source_stamp(), engine_stamp())


def install():
    """Put :class:`EngineAwareLocator` first in numba's locator list (idempotent)."""
    if EngineAwareLocator not in CacheImpl._locator_classes:
        CacheImpl._locator_classes.insert(0, EngineAwareLocator)
