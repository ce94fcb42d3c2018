"""Safe files: the one rule by which deepres writes a file, and the output folder's lock.

The rule, for every file deepres writes (study CSVs, ``study.json``, plots, unit
results, ``deepres bench --json/--csv/--plot``):

* **Never through a link.** :func:`atomic_write` writes a temporary file with a
  unique name in the target's folder, then renames it over the target
  (``os.replace``, atomic on one file system): a reader sees the old file or the new
  one, never a partial one, two writers never share a temporary file, and a symbolic
  or hard link planted at the target is replaced, never followed: the file it points
  to is left alone. :func:`write_text` is the same for text.
* **One file mode.** Every file gets ``0o666`` less the process's umask
  (:func:`file_mode`), what ``open()`` gives an ordinary new file: with the usual
  umask 022 a study folder is readable by all as a whole; with umask 077, by no one
  else. (``tempfile.mkstemp`` alone would make some files 0600 and others 0644.)
* **The lock file** ``.lock`` is opened with ``O_NOFOLLOW`` and used only if it is a
  regular file with one link (:class:`OutputLock`); it is removed when the lock is
  released, so a folder with no ``.lock`` is a folder no study is writing into (a
  study killed with SIGKILL may leave an empty one behind: the operating-system lock
  itself still ends with the process, so the file is harmless).
* :class:`OutputLock` is an exclusive lock on an output folder, so that two studies
  never write into one folder at the same time. :func:`run_locked` is how the study
  commands use it: fail at once, or with ``--wait`` say so and wait.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

__all__ = ["FolderLockedError", "OutputLock", "UnsafeFileError", "atomic_write", "file_mode", "run_locked",
           "write_text"]

T = TypeVar("T")


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask can only be read by setting it)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of every file deepres writes: ``0o666`` less the process's umask.

    Returns:
        The permission bits, e.g. ``0o644`` under the usual umask 022.

    Example:
        >>> file_mode() & 0o600
        384
    """
    return 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *, durable: bool = False) -> None:
    """Write ``path`` atomically: ``write(handle)`` fills a fresh temporary file, then it is renamed.

    A link at ``path`` is replaced, not followed (see the module docstring), and the
    file gets :func:`file_mode`.

    Args:
        path: the file to write (its folder must exist).
        write: called once with the temporary file, open for writing bytes.
        durable: also ``fsync`` the data before the rename, so that it survives a power
            failure, not only a killed process. Default False.

    Raises:
        IsADirectoryError: ``path`` is a folder.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "a.txt", lambda handle: handle.write(b"hello"))
        >>> (folder / "a.txt").read_text(), [p.name for p in folder.iterdir()]
        ('hello', ['a.txt'])
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` by :func:`atomic_write`.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_text(folder / "a.csv", "x\\n1\\n")
        >>> (folder / "a.csv").read_text()
        'x\\n1\\n'
    """
    data = text.encode()
    atomic_write(path, lambda handle: handle.write(data))


class FolderLockedError(RuntimeError):
    """Another process holds the lock on the output folder; ``holder`` says who, if it wrote it."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        who = f" ({holder})" if holder else ""
        super().__init__(f"another study is writing into {folder}{who}")


class UnsafeFileError(OSError):
    """A file deepres would write is a link or not a regular file: refused, nothing written."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_lock_file(path: Path) -> IO[str]:
    """``path`` opened for reading and writing, created if missing; never through a link."""
    flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, file_mode())
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise UnsafeFileError(errno.ELOOP, "the lock file is a symbolic link; refusing to follow it "
                                       "(remove it)", str(path)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise UnsafeFileError(errno.EPERM, f"the lock file is {what}; refusing to use it (remove it)",
                              str(path))
    return os.fdopen(fd, "r+")


class OutputLock:
    """An exclusive lock on an output folder (the folder is created if missing).

    Its file ``.lock`` is opened without following links and removed on release
    (see the module docstring).

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
            with _open_lock_file(self.path) as handle:
                return handle.read(500).strip()
        except OSError:
            return ""

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock.

        Args:
            wait: block until the holder releases it. Default False: raise instead.

        Raises:
            FolderLockedError: another process holds it (only without ``wait``).
            UnsafeFileError: ``.lock`` is a link or not a regular file.
            OSError: the folder or its lock file cannot be created (e.g. read-only).
        """
        if self._handle is not None:
            raise RuntimeError(f"the lock on {self.folder} is already held by this object")
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            handle = _open_lock_file(self.path)
            try:
                if not _lock(handle, wait):
                    raise FolderLockedError(self.folder, self.holder())
                if _same_file(handle, self.path):
                    break
            except BaseException:
                handle.close()
                raise
            # The holder removed the file as it released it: the lock we hold is on a file no one
            # else can open any more; take the one at the path now.
            handle.close()
        try:
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
        """Let the lock go and remove ``.lock`` (a no-op when not held)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            if _REMOVABLE:
                # Removed while still locked: a process waiting on it sees it is gone (see acquire).
                with contextlib.suppress(OSError):
                    if _same_file(handle, self.path):
                        self.path.unlink()
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


def _same_file(handle: IO[str], path: Path) -> bool:
    """Whether the open ``handle`` is the file at ``path`` now (not a removed one)."""
    try:
        here, there = os.fstat(handle.fileno()), os.lstat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


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
            (on ``--out``, with what to do about it), or its lock file is unsafe
            (:class:`UnsafeFileError`).
    """
    from deepres.options import OptionError

    try:
        return job(False)
    except UnsafeFileError as error:
        raise OptionError("--out", out, f"{error.strerror}: {error.filename}") from None
    except FolderLockedError as error:
        if not wait:
            reason = f"{error}; wait for it with --wait, or choose another --out"
            raise OptionError("--out", out, reason) from None
        print(f"{prog}: {error}; waiting for it to end", file=sys.stderr)
    try:
        return job(True)
    except UnsafeFileError as error:
        raise OptionError("--out", out, f"{error.strerror}: {error.filename}") from None


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

    _REMOVABLE = True  # flock locks the open file, not the name: removing the name is safe

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

    _REMOVABLE = False  # an open file cannot be removed there: the empty .lock stays
