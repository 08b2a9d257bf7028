"""Writing files safely: atomic replace with the user's umask, stale temp clean-up, run-folder locks.

Every file deft-clean writes goes through :func:`write_atomic`: a temporary ``.<name>.<random>.tmp``
next to the target, locked while it is written, then renamed into place. A later write to the same
folder removes temporaries whose writer died (their lock is free); a live writer's are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .atomic import TMP_SUFFIX, _try_lock, apply_umask, clean_stale_temps, current_umask, replace_atomic
from .errors import UsageError
from .errors import option as ref
from .ownership import note_written


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place.

    A crash or interruption never leaves a partial file at ``path``. The file gets the permissions of
    an ordinary new file under the current umask (not mkstemp's private 0600). A file its folder's manifest
    lists is recorded as rewritten by deft-clean (a checkpoint saved again, a resumed run's weights).
    """
    target = replace_atomic(path, write)
    note_written(target)
    return target


def make_staging_dir(target: Path) -> tuple[Path, int]:
    """A locked temporary folder next to ``target`` (see :func:`write_atomic`); returns (path, lock fd)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    fd = os.open(staging, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    apply_umask(staging)
    return staging, fd


@contextlib.contextmanager
def run_lock(*paths: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold an exclusive lock per path (a ``.<name>.lock`` file beside it) for the block; fail at once if taken.

    Two runs that write the same output or run folder would otherwise overwrite each other's results
    and checkpoints.
    """
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(Path(p).absolute() for p in paths if p is not None):
            stack.enter_context(_one_lock(path))
        yield


LOCK_MARK = b"deft-clean lock\n"  # what a lock file holds: a file beside an output without it is the user's


@contextlib.contextmanager
def _one_lock(path: Path) -> Iterator[None]:
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path.parent} ({exc.strerror}); choose another {ref('out')}") from None
    while True:
        fd = _open_lock(lock)
        if fd is None:
            continue  # released between our link and open: make it again
        if not _try_lock(fd):
            os.close(fd)
            raise UsageError(
                f"another deft-clean run is writing {path}; wait for it to finish or choose another {ref('out')}"
            )
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same and _marked(fd, lock):
            break
        os.close(fd)  # the previous holder removed the file between our open and lock: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                lock.unlink()  # ours: created by this run or a crashed one (it holds LOCK_MARK)
        os.close(fd)


def _open_lock(lock: Path) -> int | None:
    """An fd on the lock file, created whole (mark and all) when missing; None when it vanished between the
    two (its holder released it): try again. Never through a symlink, never a special file."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(lock).st_mode):  # a device node, FIFO or symlink is never opened
            raise _foreign(lock, "is not a regular file")
    _create_whole(lock)
    try:
        fd = os.open(lock, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink (dangling or not) sits where the lock goes
        raise _foreign(lock, f"cannot be opened as a lock ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _foreign(lock, "is not a regular file")
    return fd


def _create_whole(lock: Path) -> None:
    """Put a lock file holding the mark at ``lock`` unless something is there: the mark is written to a
    temporary first and linked into place, so no run ever sees a lock file without its mark."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"{lock.name}.", suffix=TMP_SUFFIX, dir=lock.parent)
    except OSError as exc:  # a read-only file system, no permission, no space
        raise UsageError(f"cannot write the lock file {lock} ({exc.strerror}); choose another {ref('out')}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # alive: clean_stale_temps leaves it alone
        os.write(fd, LOCK_MARK)
        os.fchmod(fd, 0o666 & ~current_umask())
        with contextlib.suppress(FileExistsError):
            os.link(name, lock)  # atomic; never replaces what is there
    except OSError as exc:
        raise UsageError(f"cannot write the lock file {lock} ({exc.strerror}); choose another {ref('out')}") from None
    finally:
        os.unlink(name)
        os.close(fd)


def _marked(fd: int, lock: Path) -> bool:
    """True for deft-clean's own lock file (it holds LOCK_MARK; an empty one, left by an earlier version's
    crash, is taken over); raise for anything else under that name."""
    content = os.pread(fd, len(LOCK_MARK) + 1, 0)
    if content == LOCK_MARK:
        return True
    if not content:  # no live holder (we hold the flock) and nothing of anyone's in it: ours to take
        os.pwrite(fd, LOCK_MARK, 0)
        return True
    os.close(fd)
    raise _foreign(lock, "is not a deft-clean lock file")


def _foreign(lock: Path, what: str) -> UsageError:
    return UsageError(
        f"{lock} {what}: deft-clean keeps its lock under that name beside the output and does not touch files "
        f"it did not write; move it away or choose another {ref('out')}"
    )


def check_writable(path: str | os.PathLike[str], *, option: str = "out") -> None:
    """Fail early when ``path`` cannot be created: a parent is a file, or the folder is not writable."""
    target = Path(path).absolute()
    ancestor = target if target.is_dir() else target.parent  # an existing folder output is written into
    while not ancestor.exists() and not ancestor.is_symlink():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{ref(option)} {path}: {ancestor} is not a folder, so nothing can be written there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{ref(option)} {path}: the folder {ancestor} is not writable")
