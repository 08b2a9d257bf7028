"""What every command checks before it writes or reads: outputs never overlap inputs, reads stay in the root.

deft-clean never writes onto a file it reads, never writes inside an image-folder dataset, never
replaces an existing output without ``--overwrite``, and never reads a file outside the dataset root.
All comparisons use real paths (symlinks and ``..`` resolved), so a link cannot sneak past them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import DataError, UsageError
from .errors import option as ref
from .files import check_writable

# C0 controls, DEL and C1 controls: ESC/OSC sequences in a label or file name must not reach a terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def printable(text: object) -> str:
    """``text`` with control characters (ESC, OSC, newlines, ...) shown as ``\\xNN`` escapes."""
    value = str(text)
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value.translate(_CONTROL)


def real(path: str | os.PathLike[str]) -> Path:
    """The path with every symlink and ``..`` resolved (the file need not exist)."""
    return Path(os.path.realpath(path))


def is_inside(path: Path, root: Path) -> bool:
    """True when real path ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or root in path.parents


def check_output(
    out: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    datasets: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    folder: bool = False,
    option: str = "out",
) -> None:
    """Refuse an output that would write onto an input, into a dataset folder, or over an existing file.

    Args:
        out: the file (or, with ``folder``, the folder) a command is about to write or replace.
        inputs: files and folders the command reads (results, tables, model folders, listed images);
            ``out`` may be none of them, may not lie inside an input folder and, when it is a folder, may
            contain none of them.
        datasets: image-folder dataset roots: nothing may be written inside them.
        overwrite: an existing ``out`` may be replaced (never an input, never inside a dataset).
        folder: ``out`` is a folder that will be replaced as a whole.

    Raises:
        UsageError: with one line naming ``out`` and what it collides with.
    """
    target = real(out)
    roots = [real(d) for d in datasets]
    for root in roots:
        if is_inside(target, root):
            raise UsageError(f"{ref(option)} {out} is inside the dataset {root}, which deft-clean never modifies")
        if folder and is_inside(root, target):
            raise UsageError(f"{ref(option)} {out} contains the dataset {root}, which deft-clean never modifies")
    prefix = f"{target}{os.sep}"
    for item in inputs:
        source = real(item)
        if source == target:
            raise UsageError(f"{ref(option)} {out} is also an input of this command ({item}); choose another path")
        if folder and str(source).startswith(prefix):
            raise UsageError(f"{ref(option)} {out} contains an input of this command ({item}); choose another folder")
        if is_inside(target, source) and source.is_dir():  # path comparison first: inputs may be 1M files
            # e.g. predict's model folder: a file written there would replace config.json or the weights
            raise UsageError(f"{ref(option)} {out} is inside {item}, an input of this command; choose another path")
    path = Path(out)
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{ref(option)} {out} is a file; pass a folder")
    check_writable(out, option=option)
    if not overwrite and (path.exists() or path.is_symlink()):
        if not folder and path.is_dir():
            raise UsageError(f"{ref(option)} {out} is a folder; pass a file path")
        if not folder or any(path.iterdir()):
            raise UsageError(f"{ref(option)} {out} exists; pass {ref('overwrite', True)} to replace it")


def check_regular_file(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> Path:
    """The real path of a file that may be read: a regular file, inside ``root`` (resolved) when given.

    Raises OSError (which readers turn into an unusable row) for a FIFO, a device, a folder, or a
    file that a symlink swapped in after listing points outside the dataset root.
    """
    resolved = real(path)
    if root is not None and not is_inside(resolved, real(root)):
        raise OSError(f"{path} links outside the dataset root {root}; not read")
    mode = os.stat(resolved).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{path} is not a regular file; not read")
    return resolved


def check_name(name: str, where: str | os.PathLike[str]) -> None:
    """Refuse a file or folder name that is not valid UTF-8 (it could not be written to the results)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{printable(os.path.join(where, name))}: the name is not valid UTF-8; rename it (e.g. with convmv) "
            "or move it out of the dataset"
        ) from None


def check_detect_paths(
    dataset: object,
    *,
    root: Path,
    source: str,
    paths: list[str],
    out: str | os.PathLike[str] | None,
    run_dir: str | os.PathLike[str] | None,
    overwrite: bool,
    extra_inputs: Iterable[object] = (),
) -> None:
    """Before any model is loaded: ``out`` and ``run_dir`` are writable and overlap no input or dataset."""
    named = [dataset, *extra_inputs]  # a DataFrame dataset (Python API) is not a path: its images are checked below
    inputs = [str(x) for x in named if isinstance(x, (str, os.PathLike)) and x]
    inputs = [x for x in inputs if os.path.exists(x)]
    datasets = [root] if source in ("folder", "hf", "webdataset") else []  # never write inside them
    if source in ("table", "dataframe"):
        inputs.extend(root / p for p in paths)
    if out is not None:
        check_output(out, inputs=inputs, datasets=datasets, overwrite=overwrite)
    if run_dir is not None:
        check_output(run_dir, inputs=inputs, datasets=datasets, overwrite=True, folder=True, option="run_dir")
