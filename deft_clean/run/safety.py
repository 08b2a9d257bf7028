"""What every command checks before it writes or reads: outputs never overlap inputs, reads stay in the root.

deft-clean never writes onto a file it reads, never writes inside a dataset folder (an image folder, a
table's folder, a saved Hugging Face dataset, the shards' folder), never lets two outputs of one command
overlap, never replaces an existing output without ``--overwrite``, and never reads a file outside the
dataset root. All comparisons use real paths (symlinks and ``..`` resolved), so a link cannot sneak past
them. :func:`check_outputs` is the one write check; :func:`read_file` is the one read of dataset bytes.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DataError, UsageError
from .errors import option as ref
from .files import check_writable
from .ownership import check_file_owned, check_folder_owned

# C0 controls, DEL and C1 controls: ESC/OSC sequences in a label or file name must not reach a terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
# Format characters (U+202E right-to-left override, zero-width joiners, ...) and line/paragraph separators
# reorder or hide what a terminal shows: a name could pose as another.
_INVISIBLE = ("Cf", "Zl", "Zp")
MAX_FILE_BYTES = 1 << 30  # largest image file read (1 GiB): a bigger one is an unusable row, never read
_NO_LIMIT = 1 << 62


def printable(text: object) -> str:
    """``text`` with control and format characters (ESC, OSC, newlines, U+202E, ...) shown as escapes."""
    value = str(text)
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    value = value.translate(_CONTROL)
    if value.isascii():
        return value
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _INVISIBLE else c for c in value)


def short(text: object, limit: int = 200) -> str:
    """:func:`printable` text cut to about ``limit`` characters: a crafted 5 MB path never fills a message."""
    value = printable(text)
    if len(value) <= limit:
        return value
    return f"{value[: limit // 2]}...{value[-(limit // 4) :]} ({len(value)} characters)"


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
    files: Sequence[str] = (),
    kind: str | None = None,
) -> None:
    """Refuse an output that would write onto an input, into a dataset folder, or over an existing file.

    One output on its own; commands call :func:`check_outputs`, which also compares their outputs.

    Args:
        out: the file (or, with ``folder``, the folder) a command is about to write or replace.
        inputs: files and folders the command reads (results, tables, model folders, listed images);
            ``out`` may be none of them, may not lie inside an input folder and, when it is a folder, may
            contain none of them.
        datasets: image-folder dataset roots: nothing may be written inside them.
        overwrite: an existing ``out`` may be replaced (never an input, never inside a dataset): a file only
            when it is a regular file deft-clean wrote (:mod:`deft_clean.run.ownership`); a folder is reused,
            and the command removes only what its manifest lists.
        folder: ``out`` is a folder that will be replaced as a whole.
        files: with ``folder``, the only entries written inside it (``--save-arrays``: the three array
            files); an input elsewhere in the folder is left alone, so it is no collision.
        kind: for a file, what it holds (``"results"``, ``"predictions"``, ``"export"``, ``"report"``):
            ``--overwrite`` replaces only a deft-clean file of the same kind.

    Raises:
        UsageError: with one line naming ``out`` and what it collides with.
    """
    target = real(out)
    roots = [real(d) for d in datasets]
    for root in roots:
        if is_inside(target, root):
            raise UsageError(f"{ref(option)} {out} is inside the dataset {root}, which deft-clean never modifies")
        if folder and _covers(target, root, files):
            raise UsageError(f"{ref(option)} {out} contains the dataset {root}, which deft-clean never modifies")
    prefix = f"{target}{os.sep}"
    for item in inputs:
        source = real(item)
        if source == target:
            raise UsageError(f"{ref(option)} {out} is also an input of this command ({item}); choose another path")
        if folder and str(source).startswith(prefix) and _covers(target, source, files):
            raise UsageError(f"{ref(option)} {out} contains an input of this command ({item}); choose another folder")
        if is_inside(target, source) and source.is_dir():  # path comparison first: inputs may be 1M files
            # e.g. predict's model folder: a file written there would replace config.json or the weights
            raise UsageError(f"{ref(option)} {out} is inside {item}, an input of this command; choose another path")
    path = Path(out)
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{ref(option)} {out} is a file; pass a folder")
    check_writable(out, option=option)
    if not folder:
        check_file_owned(out, option=option, overwrite=overwrite, kind=kind)  # a deft-clean file of that kind
    elif not overwrite:
        check_folder_owned(out, option=option)


def _covers(folder: Path, path: Path, files: Sequence[str]) -> bool:
    """True when writing folder ``folder`` (only its entries ``files``, when given) may touch ``path``."""
    if not is_inside(path, folder):
        return False
    return not files or (path != folder and path.relative_to(folder).parts[0] in files)


def check_regular_file(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int = MAX_FILE_BYTES,
    real_root: Path | None = None,
) -> Path:
    """The real path of a file that may be read: a regular file of at most ``limit`` bytes, inside ``root``
    (resolved) when given.

    Raises OSError (which readers turn into an unusable row) for a FIFO, a device, a folder, a file over
    the limit, or a file that a symlink swapped in after listing points outside the dataset root.
    Nothing is opened: a FIFO or a device is refused by its ``stat`` alone. ``real_root``: ``root`` as a
    reader resolved it once (the dataset root of the run; a root swapped since resolves elsewhere and its
    files are refused); without it the root is resolved on every call.
    """
    resolved = real(path)
    if root is not None and not is_inside(resolved, real_root if real_root is not None else real(root)):
        raise OSError(f"{path} lies outside the dataset root {root}; not read")
    _check_stat(os.stat(resolved), path, limit)
    return resolved


def _check_stat(info: os.stat_result, path: object, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path} is not a regular file; not read")
    if info.st_size > limit:
        raise OSError(f"{path} is {info.st_size} bytes, over the {limit}-byte limit for an image; not read")


def read_file(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int = MAX_FILE_BYTES,
    real_root: Path | None = None,
) -> bytes:
    """The bytes of a dataset file: the one read path of dataset bytes (decoding, hashing, caching, export).

    Refuses (OSError, which readers turn into an unusable row) what :func:`check_regular_file` refuses, and
    checks again on the open descriptor, so a file swapped for a FIFO or a bigger file after the check is
    not read either. At most ``limit`` bytes are ever read.
    """
    with open_regular(path, root=root, limit=limit, real_root=real_root) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(size + 1)  # + 1: a file that grew since fstat is seen, up to the limit
    if len(data) > limit:
        raise OSError(f"{path} grew over the {limit}-byte limit for an image while it was read; not read")
    return data


def open_regular(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = MAX_FILE_BYTES,
    real_root: Path | None = None,
) -> BinaryIO:
    """Open a regular file for reading (see :func:`read_file`); ``limit=None``: any size (a WebDataset shard,
    of which only a member is read)."""
    size_limit = limit if limit is not None else _NO_LIMIT
    resolved = check_regular_file(path, root=root, limit=size_limit, real_root=real_root)
    # O_NONBLOCK: opening a FIFO swapped in since the check returns at once (then fstat refuses it)
    fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    handle = os.fdopen(fd, "rb")
    try:
        _check_stat(os.fstat(fd), path, limit if limit is not None else _NO_LIMIT)
    except OSError:
        handle.close()
        raise
    return handle


def check_name(name: str, where: str | os.PathLike[str]) -> None:
    """Refuse a file or folder name that is not valid UTF-8 (it could not be written to the results)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{printable(os.path.join(where, name))}: the name is not valid UTF-8; rename it (e.g. with convmv) "
            "or move it out of the dataset"
        ) from None


@dataclass(frozen=True)
class Output:
    """One path a command is about to write, for :func:`check_outputs`."""

    path: str | os.PathLike[str]
    option: str = "out"  # the option that names it (messages say --<option>)
    folder: bool = False  # a folder written (and, with overwrite, replaced) as a whole
    overwrite: bool = False  # an existing one may be replaced (a folder: a non-empty one may be reused)
    files: tuple[str, ...] = ()  # a folder of which only these entries are written; (): all of it
    kind: str | None = None  # a file: what it holds, so --overwrite replaces only a file of the same kind


def check_outputs(
    outputs: Sequence[Output],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    datasets: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """The one write check: refuse any output that overlaps an input, a dataset, or another output.

    Each output goes through :func:`check_output` against every input (dataset tables, listed images,
    results, decisions, class-names files, model files, the cache) and dataset folder; then the outputs are
    compared with each other by real path: no two may be the same, and none may lie inside another that
    is a folder (``--out arrs/features.npy --save-arrays arrs`` would write the arrays over the results).

    Raises:
        UsageError: one line naming the output, and the input or other output it collides with.
    """
    inputs, datasets = list(inputs), list(datasets)
    named = [o for o in outputs if o.path is not None and os.fspath(o.path) != ""]
    for output in named:
        check_output(
            output.path,
            inputs=inputs,
            datasets=datasets,
            overwrite=output.overwrite,
            folder=output.folder,
            option=output.option,
            kind=output.kind,
        )
    for i, first in enumerate(named):
        for second in named[i + 1 :]:
            _check_apart(first, second)


def _check_apart(first: Output, second: Output) -> None:
    one, two = real(first.path), real(second.path)
    if one == two:
        raise UsageError(
            f"{ref(first.option)} and {ref(second.option)} are the same path ({first.path}); give each its own"
        )
    for inner, outer, a, b in ((one, two, first, second), (two, one, second, first)):
        if b.folder and _covers(outer, inner, b.files):
            raise UsageError(
                f"{ref(a.option)} {a.path} is inside {ref(b.option)} {b.path}, which this command also writes; "
                "choose paths apart"
            )


def check_detect_paths(
    dataset: object,
    *,
    root: Path,
    paths: list[str],
    listed_files: bool,
    dataset_folder: bool,
    outputs: Sequence[Output],
    extra_inputs: Iterable[object] = (),
) -> None:
    """Before any model is loaded: detect's (or train's) outputs are writable and overlap no input, no
    dataset folder, and each other. With ``listed_files`` (a table's rows) the listed images are inputs;
    with ``dataset_folder`` (a folder, a saved Hugging Face dataset, the shards' folder) nothing is written
    inside ``root`` (the listing's :class:`~deft_clean.inputs.listing.DatasetSpec` says which)."""
    named = [dataset, *extra_inputs]  # a DataFrame dataset (Python API) is not a path: its images are checked below
    inputs: list[str | os.PathLike[str]] = [str(x) for x in named if isinstance(x, (str, os.PathLike)) and x]
    inputs = [x for x in inputs if os.path.exists(x)]
    datasets = [root] if dataset_folder else []  # never write inside them
    if listed_files:
        inputs.extend(root / p for p in paths)
    check_outputs(outputs, inputs=inputs, datasets=datasets)
