"""The lowest layer of a safe write: a temporary next to the target, locked while written, renamed into place
with the user's umask; stale temporaries of dead writers cleaned up; a full disk said in one line.

:func:`deft_clean.run.files.write_atomic` adds the manifest bookkeeping on top (:mod:`deft_clean.run.ownership`
writes its own manifest with :func:`replace_atomic`, so the two never import each other).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import DeftCleanError

TMP_SUFFIX = ".tmp"


class DiskFullError(DeftCleanError):
    """No space left on the device while writing an output (exit code 1)."""

    exit_code = 1


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (private, 0600/0700) the usual umask permissions."""
    path.chmod((0o777 if path.is_dir() else 0o666) & ~current_umask())


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def clean_stale_temps(folder: Path, name: str) -> None:
    """Remove ``.<name>.*.tmp`` (and ``.old``) files or folders in ``folder`` whose writer is gone.

    A writer holds an exclusive flock on its temporary for as long as it writes; one that can be locked
    here was left behind by a killed process.
    """
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]
    except OSError:
        return
    for path in candidates:
        if not (path.name.endswith(TMP_SUFFIX) or path.name.endswith(f"{TMP_SUFFIX}.old")):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def raise_if_disk_full(exc: BaseException, target: Path) -> None:
    """Turn ENOSPC (or torch's zip writer failing on it) into one line that names the file."""
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if not full and isinstance(exc, RuntimeError) and "inline_container" in str(exc):
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(target.parent).free < 64 * 1024 * 1024
    # torch's zip writer and safetensors wrap the OS error in their own types: only the text is left
    text = str(exc) if isinstance(exc, Exception) else ""
    full = full or any(s in text for s in ("No space left", "StorageFull", "File too large", "FileTooLarge"))
    if full:
        raise DiskFullError(
            f"no space left on the device (or over the file-size limit) while writing {target}; free some space "
            "and rerun"
        ) from None


def replace_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a locked temporary next to ``path``, then rename it into place (a crash never
    leaves a partial file at ``path``; the file gets the permissions of a new file under the current umask)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the temporary as alive (see clean_stale_temps)
        write(tmp)
        apply_umask(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, target)
        raise
    finally:
        os.close(fd)
    return target
