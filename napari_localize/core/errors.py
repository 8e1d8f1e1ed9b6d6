"""The project's error types: every failure a user can cause is one of these, with the file named and the fix said.

All derive from :class:`LocalizeError` (a :class:`ValueError`, so older ``except ValueError`` code still works).
Entry points (CLI, API, napari reader, batch, Dask) let these through as they are; anything else that escapes a
reader or writer is turned into one of them at the boundary (see :func:`napari_localize.io.errors.as_project_error`).
"""

from __future__ import annotations


class LocalizeError(ValueError):
    """Base of every napari-localize error; the message names the file or value and what to do."""


class MovieError(LocalizeError):
    """A movie that cannot be read as asked (damaged, truncated, unsupported, wrong shape)."""


class ParameterError(LocalizeError):
    """A parameter that cannot work; the message names the value and the valid range."""


class OutputError(LocalizeError):
    """A result that cannot be written (no space, read-only folder, name collision, name too long)."""


class RunInterrupted(BaseException):
    """A run stopped by a signal (SIGINT, SIGTERM, SIGHUP); ``signum`` tells which.

    A :class:`BaseException` like :class:`KeyboardInterrupt`, so ``except Exception`` blocks do not swallow it
    and every ``with`` block (temporary files) unwinds on the way out.
    """

    def __init__(self, signum: int, name: str = ""):
        super().__init__(f"interrupted by {name or signum}")
        self.signum = int(signum)
        self.name = name
