"""The one way napari-localize writes a file: into a temporary file beside the target, published by rename.

Every result (the ``_locs.hdf5`` + ``_locs.yaml`` pair, z calibrations, camera calibrations, parameter files,
simulated movies) goes through :class:`Publisher`:

- each target's content is written to a hidden temporary file in the target's folder
  (``.napari-localize-tmp-<host>-<pid>-<random><ext>``), flushed to disk, then renamed over the target;
- several targets (a pair) are published together: under an exclusive lock on the folder (two processes publishing
  to one folder take turns, so concurrent runs never interleave a pair), an earlier result is kept as a hard link
  until every rename succeeded; if one fails, the ones already renamed are rolled back, so the pair on disk is
  either all old or all new;
- leaving the ``with`` block without :meth:`Publisher.commit` (an error, Ctrl-C, SIGTERM, a full disk) removes
  the temporary files and leaves any earlier result byte-identical.

Temporary files of ours left by a process that was killed (SIGKILL, a power cut) are removed by
:func:`sweep_stale_temps`, which :class:`Publisher` calls once per folder and process: only files of our naming,
made on this host by a process that no longer runs (or older than a day), and older than this process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
import time
import zlib

from ..core.errors import OutputError

TMP_PREFIX = ".napari-localize-tmp-"
BACKUP_PREFIX = ".napari-localize-bak-"
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"
_OURS = re.compile(r"^\.napari-localize-(tmp|bak)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-")
#: when this process started writing (temporary files older than this from dead processes are stale)
PROCESS_START = time.time()
#: a temporary file older than this is stale whoever made it (seconds)
STALE_AFTER = 24 * 3600.0
_swept: set = set()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of new files: what open() would give (mkstemp makes them private)
FILE_MODE = 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_stale_temps(folder, now: float | None = None) -> list[str]:
    """Remove our stale temporary files in ``folder``; return the names removed (never raises)."""
    removed = []
    now = time.time() if now is None else now
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _OURS.match(name)
        if m is None:
            continue
        path = os.path.join(folder, name)
        try:
            mtime = os.lstat(path).st_mtime
        except OSError:
            continue
        dead = m["host"] == _HOST and not _pid_alive(int(m["pid"]))
        if (dead and mtime < PROCESS_START) or now - mtime > STALE_AFTER:
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(name)
    return removed


def _describe(exc: OSError, what: str) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{what}: no space left on the disk (or quota exceeded); free space or use --output-dir elsewhere"
    if code == errno.EFBIG:
        return f"{what}: the file-size limit was reached (ulimit -f); raise the limit or write elsewhere"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}: the folder is not writable ({os.strerror(code)}); use --output-dir to write elsewhere"
    if code == errno.ENAMETOOLONG:
        return f"{what}: the file name is too long for the file system; shorten the movie name or the --suffix"
    return f"{what}: cannot be written ({' '.join(str(exc).split())})"


def check_name(target) -> None:
    """Raise :class:`OutputError` up front when ``target``'s name is too long to be created (or published)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(target)))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(name)) > limit:
        raise OutputError(f"{target}: the output name is too long ({len(os.fsencode(name))} bytes; the file "
                          f"system allows {limit}); rename the movie or give a shorter --suffix")


class Publisher:
    """Temporary files for ``targets`` in their folders, published together by :meth:`commit`.

    Examples
    --------
    >>> with Publisher([h5, yml]) as pub:                 # doctest: +SKIP
    ...     write_table(pub.temp(h5)); write_yaml(pub.temp(yml))
    ...     pub.commit()
    """

    def __init__(self, targets):
        self.targets = [os.path.abspath(os.fspath(t)) for t in targets]
        self._temps: dict[str, str] = {}
        self.committed = False
        for target in self.targets:
            folder = os.path.dirname(target)
            if not os.path.isdir(folder):
                raise OutputError(f"{target}: the folder {folder} does not exist")
            check_name(target)
            if folder not in _swept:
                _swept.add(folder)
                sweep_stale_temps(folder)

    def __enter__(self):
        return self

    def temp(self, target) -> str:
        """The temporary file (created empty) whose content becomes ``target`` on commit."""
        target = os.path.abspath(os.fspath(target))
        if target not in self._temps:
            folder = os.path.dirname(target)
            ext = os.path.splitext(target)[1]
            try:
                fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_HOST}-{os.getpid()}-", suffix=ext, dir=folder)
            except OSError as exc:
                raise OutputError(_describe(exc, target)) from None
            os.close(fd)
            self._temps[target] = tmp
        return self._temps[target]

    def replace_temp(self, target) -> str:
        """Drop ``target``'s temporary file and return a new, empty one (to rewrite the content another way)."""
        target = os.path.abspath(os.fspath(target))
        old = self._temps.pop(target, None)
        try:
            return self.temp(target)
        finally:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.remove(old)

    def commit(self) -> list[str]:
        """Publish every target (all or none); return their paths."""
        missing = [t for t in self.targets if t not in self._temps]
        if missing:
            raise OutputError(f"{missing[0]}: nothing was written for it")
        folders = sorted({os.path.dirname(t) for t in self.targets})
        with contextlib.ExitStack() as stack:
            for folder in folders:
                stack.enter_context(_folder_lock(folder))
            try:
                for target in self.targets:
                    tmp = self._temps[target]
                    os.chmod(tmp, FILE_MODE)
                    _fsync(tmp)
            except OSError as exc:
                raise OutputError(_describe(exc, target)) from None
            self._publish_all()
        for folder in folders:
            _fsync_dir(folder)
        self.committed = True
        return list(self.targets)

    def _publish_all(self):
        backups: dict[str, str | None] = {}
        done: list[str] = []
        try:
            for target in self.targets:
                backups[target] = _backup(target) if len(self.targets) > 1 else None
            for target in self.targets:
                os.replace(self._temps[target], target)
                done.append(target)
                del self._temps[target]
        except OSError as exc:
            for target in reversed(done):  # roll back: the earlier result, or nothing, as before
                with contextlib.suppress(OSError):
                    if backups.get(target):
                        os.replace(backups.pop(target), target)
                    else:
                        os.remove(target)
            raise OutputError(_describe(exc, target) + "; the earlier result (if any) is unchanged") from None
        finally:
            for b in backups.values():
                if b is not None:
                    with contextlib.suppress(OSError):
                        os.remove(b)

    def abort(self):
        """Remove the temporary files (never raises)."""
        for tmp in self._temps.values():
            with contextlib.suppress(OSError):
                os.remove(tmp)
        self._temps.clear()

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
        return False


def _backup(target) -> str | None:
    """A hard link to the current ``target`` (to roll back to), or None when there is none."""
    if not os.path.exists(target):
        return None
    folder = os.path.dirname(target)
    for _ in range(10):
        name = os.path.join(folder, f"{BACKUP_PREFIX}{_HOST}-{os.getpid()}-{os.urandom(4).hex()}"
                                    f"{os.path.splitext(target)[1]}")
        try:
            os.link(target, name)
            return name
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network or FAT file systems): no rollback copy
            return None
    return None


@contextlib.contextmanager
def _folder_lock(folder):
    """An exclusive advisory lock on ``folder`` (POSIX flock on the directory; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: os.replace is atomic per file; pairs are not serialised
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder):
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(target, text: str) -> str:
    """Publish ``text`` as ``target`` atomically."""
    with Publisher([target]) as pub:
        try:
            with open(pub.temp(target), "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise OutputError(_describe(exc, target)) from None
        pub.commit()
    return os.fspath(target)


def describe_os_error(exc: OSError, what: str) -> str:
    """A one-line, actionable message for an OSError while writing ``what``."""
    return _describe(exc, what)
