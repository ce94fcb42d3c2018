"""Safe files in a study's output folder: atomic writes and the folder's lock.

* :func:`atomic_write` writes a file through a temporary file with a unique name in
  the same folder, then renames it over the target (``os.replace`` is atomic on one
  file system): a reader sees the old file or the new one, never a partial one, and
  two writers of the same file never share a temporary file.
* :class:`OutputLock` is an exclusive lock on an output folder, so that two studies
  never write into one folder at the same time. It is an operating-system lock on
  the file ``.lock`` in the folder: it ends with the process that holds it, so a
  killed study leaves no stale lock behind. :func:`run_locked` is how the study
  commands use it: fail at once, or with ``--wait`` say so and wait.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

__all__ = ["FolderLockedError", "OutputLock", "atomic_write", "run_locked"]

T = TypeVar("T")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *, durable: bool = False) -> None:
    """Write ``path`` atomically: ``write(handle)`` fills a fresh temporary file, then it is renamed.

    Args:
        path: the file to write (its folder must exist).
        write: called once with the temporary file, open for writing bytes.
        durable: also ``fsync`` the data before the rename, so that it survives a power
            failure, not only a killed process. Default False.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "a.txt", lambda handle: handle.write(b"hello"))
        >>> (folder / "a.txt").read_text(), [p.name for p in folder.iterdir()]
        ('hello', ['a.txt'])
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderLockedError(RuntimeError):
    """Another process holds the lock on the output folder; ``holder`` says who, if it wrote it."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        who = f" ({holder})" if holder else ""
        super().__init__(f"another study is writing into {folder}{who}")


class OutputLock:
    """An exclusive lock on an output folder (the folder is created if missing).

    Args:
        folder: the folder to lock.

    Example:
        >>> folder = tempfile.mkdtemp()
        >>> with OutputLock(folder).held():
        ...     try:
        ...         OutputLock(folder).acquire()
        ...     except FolderLockedError:
        ...         print("busy")
        busy
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._handle: IO[str] | None = None

    def holder(self) -> str:
        """What the holder wrote into the lock file: process id, host, start time ('' if unknown)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock.

        Args:
            wait: block until the holder releases it. Default False: raise instead.

        Raises:
            FolderLockedError: another process holds it (only without ``wait``).
            OSError: the folder or its lock file cannot be created (e.g. read-only).
        """
        if self._handle is not None:
            raise RuntimeError(f"the lock on {self.folder} is already held by this object")
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115  (held open as long as the lock)
        try:
            if not _lock(handle, wait):
                raise FolderLockedError(self.folder, self.holder())
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {platform.node()}, since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
        except BaseException:
            handle.close()
            raise
        self._handle = handle

    def release(self) -> None:
        """Let the lock go (closing the file releases it); a no-op when not held."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
            _unlock(handle)
            handle.close()

    @contextlib.contextmanager
    def held(self, *, wait: bool = False) -> Iterator[OutputLock]:
        """``with lock.held():`` acquires (see :meth:`acquire`) and releases on exit."""
        self.acquire(wait=wait)
        try:
            yield self
        finally:
            self.release()



def run_locked(job: Callable[[bool], T], out: str | Path, *, wait: bool, prog: str) -> T:
    """Run ``job(wait)``, a study that holds the lock on ``out`` while it writes there.

    Args:
        job: takes ``wait`` and raises :class:`FolderLockedError` when the
            folder is locked and ``wait`` is False.
        out: the output folder (for the message).
        wait: when the folder is locked, say so on stderr and wait for it
            instead of failing (the ``--wait`` option).
        prog: the command's name, for the message.

    Returns:
        What ``job`` returns.

    Raises:
        deepres.options.OptionError: the folder is locked and not ``wait``
            (on ``--out``, with what to do about it).
    """
    from deepres.options import OptionError

    try:
        return job(False)
    except FolderLockedError as error:
        if not wait:
            reason = f"{error}; wait for it with --wait, or choose another --out"
            raise OptionError("--out", out, reason) from None
        print(f"{prog}: {error}; waiting for it to end", file=sys.stderr)
    return job(True)


try:
    import fcntl

    def _lock(handle: IO[str], wait: bool) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _unlock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    def _lock(handle: IO[str], wait: bool) -> bool:
        while True:
            try:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
                time.sleep(0.5)

    def _unlock(handle: IO[str]) -> None:
        handle.seek(0)
        with contextlib.suppress(OSError):
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
