"""Decoded-image cache (``--cache DIR``): decode and resize every image once, reuse it as uint8 pixels.

Layout, one folder per input size (detect and a phase-2 run at the same size share it)::

    DIR/224px-v1/index.parquet        key (absolute path), file_size, mtime_ns, shard, row, status
    DIR/224px-v1/shard-<hex>.npy      uint8 [rows, 224, 224, 3], read through a memory map
    DIR/224px-v1/lock                 serialises index updates between processes

An image is stored as the scoring transform sees it before normalisation: short side resized to the
input size (bicubic), then center-cropped to a square. Scoring from the cache therefore gives the same
pixels as scoring from the files; training crops (random-resized-crop) are cut from that square instead
of from the full image. A file that could not be decoded is cached as its status, so it is not retried
every epoch. An entry is used only while the file's size and modification time are unchanged; a
changed file is decoded again into a new shard (the old row stays as garbage until ``rm -r DIR``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..run.atomic import raise_if_disk_full
from ..run.distributed import Dist
from ..run.errors import STATUS_OK, UsageError, option
from ..run.files import write_atomic
from .decode import describe_failure, load_image
from .listing import Listing
from .readers.base import PackedStrings
from .transforms import square_transform

CACHE_VERSION = 1
INDEX = "index.parquet"
SHARD_BYTES = 1 << 30  # at most ~1 GiB of pixels per shard file
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("file_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("shard", pa.string()),
        ("row", pa.int64()),
        ("status", pa.string()),
    ]
)


class CachedFailure(Exception):
    """A listed file that was unusable when it was cached; ``status`` is the row's status text."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class CachedImages:
    """The cached pixels of one listing, aligned to its sample indices.

    Picklable and fork-friendly: arrays, not per-sample objects; shards are memory-mapped lazily in
    each process that reads them (DataLoader workers included).
    """

    folder: Path
    size: int
    shards: list[str]  # shard file names in ``folder``
    shard_of: np.ndarray  # int32 [N]: index into ``shards``, -1 for a file cached as unusable
    row_of: np.ndarray  # int64 [N]: row in that shard
    failures: dict[int, str]  # sample index -> status, for the -1 entries
    _maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.shard_of)

    def pixels(self, index: int) -> np.ndarray:
        """uint8 [size, size, 3] of sample ``index``; raises :class:`CachedFailure` for an unusable file."""
        shard = int(self.shard_of[index])
        if shard < 0:
            raise CachedFailure(self.failures.get(index, "unreadable"))
        if shard not in self._maps:
            self._maps[shard] = np.load(self.folder / self.shards[shard], mmap_mode="r")
        return np.array(self._maps[shard][int(self.row_of[index])])

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels(index))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened by whoever unpickles (spawned workers)
        return state


MEMORY_PIXELS = 512 << 20  # bytes of decoded pixels a detect run keeps in memory (its reading pass fills them)


class MemoryImages:
    """Decoded pixels held in memory, aligned to a listing's sample indices: what the reading pass decoded,
    read back by the later passes (prompt training, the watcher, scoring) as :class:`CachedImages` are, so no
    row is decoded twice. Pixels are stored as the scoring transform sees them before normalisation (the
    cache's layout: training crops are cut from that square). ``fits`` says whether N rows fit
    ``MEMORY_PIXELS``."""

    def __init__(self, n: int, size: int) -> None:
        self.size = size
        self.array = np.zeros((n, size, size, 3), dtype=np.uint8)  # [N, S, S, 3]; pages touched as filled
        self.failures: dict[int, str] = {}  # sample index -> status of a row that could not be decoded

    @staticmethod
    def fits(n: int, size: int) -> bool:
        return n * size * size * 3 <= MEMORY_PIXELS

    def put(self, indices: np.ndarray, images: torch.Tensor, statuses: list[str]) -> None:
        """Keep a batch: ``images`` uint8 [B, 3, S, S] of samples ``indices`` [B], with their statuses."""
        pixels = images.permute(0, 2, 3, 1).numpy()  # [B, S, S, 3]
        for position, (index, status) in enumerate(zip(indices.tolist(), statuses, strict=True)):
            if status == STATUS_OK:
                self.array[index] = pixels[position]
            else:
                self.failures[int(index)] = status

    def pixels(self, index: int) -> np.ndarray:
        if index in self.failures:
            raise CachedFailure(self.failures[index])
        return self.array[index]

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels(index))


def cache_folder(root: str | os.PathLike[str], size: int) -> Path:
    return Path(root) / f"{size}px-v{CACHE_VERSION}"


def prepare_cache(
    cache_dir: str | os.PathLike[str],
    listing: Listing,
    *,
    size: int,
    num_workers: int,
    progress: Any = None,
    stop: Any = None,
    ranks: Dist | None = None,
    batch_size: int = 64,
) -> CachedImages:
    """Make sure every file of ``listing`` is cached at ``size``; return the listing's view of the cache.

    Files missing from the cache, or changed since they were cached, are decoded (with ``num_workers``
    DataLoader workers) into new shards; each finished shard is added to the index at once, so an
    interrupted fill keeps what it did. Under torchrun every rank decodes its share of the missing
    files, then all ranks read the merged index (``cache_dir`` must be on a filesystem they all see).
    """
    if listing.spec.packed:
        raise UsageError(
            f"{option('cache', str(cache_dir))}: a "
            f"{listing.spec.name} is "
            f"already a packed, in-place store; drop {option('cache')} (it caches image files of folders and tables)"
        )
    folder = cache_folder(cache_dir, size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option('cache')} {cache_dir}: cannot create the cache folder ({exc.strerror})") from None
    keys = _keys(listing)
    stats = _stat(keys)
    rank, world = (ranks.rank, ranks.world) if ranks is not None and ranks.active else (0, 1)
    missing, looked_up = None, None
    if rank == 0:
        looked_up = _lookup(folder, keys, stats, size)
        missing = _distinct(keys, np.flatnonzero(looked_up[0] < 0))  # a file listed twice is decoded once
    if world > 1:  # one view of what is missing: a rank that looked later would see another rank's shards
        missing = ranks.all_gather(missing)[0]
    assert missing is not None
    mine = missing[rank::world]
    if progress is not None and len(missing):
        progress.start_task(f"caching {size}px images", len(mine))
    if len(mine):
        _fill(
            folder,
            keys,
            stats,
            mine,
            root=os.path.abspath(listing.root),
            size=size,
            num_workers=num_workers,
            batch_size=batch_size,
            progress=progress,
            stop=stop,
        )
    if world > 1:
        ranks.barrier()
    if len(missing) or world > 1:  # the index changed, or this rank has not read it
        looked_up = _lookup(folder, keys, stats, size)
    assert looked_up is not None
    found, shards, rows, statuses = looked_up
    if (found < 0).any():
        first = keys[int(np.flatnonzero(found < 0)[0])]
        raise UsageError(
            f"{option('cache')} {cache_dir}: {int((found < 0).sum())} file(s) are missing from the cache after "
            "filling it, "
            f"e.g. {first}; were files changed during the run? Under torchrun the cache folder must be on a "
            "filesystem that every rank sees"
        )
    names = sorted(set(shards[shards != ""].tolist()))
    number = {name: i for i, name in enumerate(names)}
    shard_of = np.array(
        [number.get(s, -1) if st is None else -1 for s, st in zip(shards, statuses, strict=True)], dtype=np.int32
    )
    failures = {int(i): statuses[i] for i in np.flatnonzero(shard_of < 0)}
    return CachedImages(folder, size, names, shard_of, rows.astype(np.int64), failures)


def _keys(listing: Listing) -> list[str]:
    root = os.path.abspath(listing.root)
    return [os.path.join(root, path) for path in listing.paths]


def _distinct(keys: list[str], indices: np.ndarray) -> np.ndarray:
    """The first of ``indices`` for each distinct key, in order."""
    first: dict[str, int] = {}
    for i in indices.tolist():
        first.setdefault(keys[i], i)
    return np.fromiter(first.values(), dtype=np.int64, count=len(first))


def _stat(keys: list[str]) -> np.ndarray:
    """int64 [N, 2]: size and mtime_ns of each file; -1 where it cannot be read (never matches)."""
    stats = np.full((len(keys), 2), -1, dtype=np.int64)
    for i, key in enumerate(keys):
        with contextlib.suppress(OSError):
            st = os.stat(key)
            stats[i] = (st.st_size, st.st_mtime_ns)
    return stats


def _read_index(folder: Path) -> pa.Table:
    path = folder / INDEX
    if not path.exists():
        return INDEX_SCHEMA.empty_table()
    try:
        return pq.read_table(path, schema=INDEX_SCHEMA)
    except Exception:  # unreadable or from another version: start over (the shards are only a cache)
        return INDEX_SCHEMA.empty_table()


def _intact_shards(folder: Path, shards: np.ndarray, rows: np.ndarray, size: int) -> dict[str, bool]:
    """Which of the shards that entries point to can be read with every row they need."""
    needed: dict[str, int] = {}
    for shard, row in zip(shards.tolist(), rows.tolist(), strict=True):
        needed[shard] = max(needed.get(shard, -1), row)
    intact = {}
    for shard, last_row in needed.items():
        try:
            pixels = np.load(folder / shard, mmap_mode="r")
            intact[shard] = (
                pixels.dtype == np.uint8 and pixels.shape[1:] == (size, size, 3) and pixels.shape[0] > last_row
            )
        except (OSError, ValueError):
            intact[shard] = False
    return intact


def _lookup(
    folder: Path, keys: list[str], stats: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """For each key: the index position of a valid entry (-1 if none), its shard, row and status."""
    table = _read_index(folder)
    found = pc.index_in(pa.array(keys, pa.string()), value_set=table["key"])
    position = pc.fill_null(found, -1).to_numpy().astype(np.int64)
    hit = position >= 0
    sizes = table["file_size"].to_numpy()
    mtimes = table["mtime_ns"].to_numpy()
    valid = hit.copy()
    valid[hit] = (sizes[position[hit]] == stats[hit, 0]) & (mtimes[position[hit]] == stats[hit, 1])
    shard_col = np.asarray(table["shard"].to_pylist(), dtype=object)
    row_col = table["row"].to_numpy()
    if valid.any():  # an entry whose shard was deleted or cut short is decoded again, not an unusable row
        used = position[valid]
        intact = _intact_shards(folder, shard_col[used], row_col[used], size)
        valid[valid] = np.fromiter((intact.get(s, False) for s in shard_col[used]), dtype=bool, count=len(used))
    position = np.where(valid, position, -1)
    status_col = table["status"].to_pylist()
    shards = np.where(valid, shard_col[np.clip(position, 0, None)] if len(table) else "", "").astype(object)
    rows = np.where(valid, row_col[np.clip(position, 0, None)] if len(table) else -1, -1)
    statuses = [status_col[p] if p >= 0 else None for p in position]
    return position, shards, rows, statuses


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on the cache folder (index read-modify-write) across processes."""
    import fcntl

    with open(folder / "lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _add_to_index(folder: Path, entries: dict[str, list]) -> None:
    with _locked(folder):
        current = _read_index(folder)
        new = pa.table(entries, schema=INDEX_SCHEMA)
        # Newer entries replace older ones with the same key (a changed file).
        keep = pc.invert(pc.is_in(current["key"], value_set=new["key"]))
        merged = pa.concat_tables([current.filter(keep), new])
        write_atomic(folder / INDEX, lambda tmp: pq.write_table(merged, tmp))


class _Decode(Dataset):
    """Decode + square-crop ``files``; items are (uint8 [S, S, 3], position in ``files``, status).

    Files are read like the reader reads them: regular, bounded, inside ``root`` (the dataset root).
    """

    def __init__(self, files: list[str], size: int, root: str) -> None:
        self.files = PackedStrings(files)
        self.root = root
        self.size = size
        self.square = square_transform(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, str]:
        try:
            image = self.square(load_image(self.files[item], draft_size=self.size, root=self.root))
            return torch.from_numpy(np.array(image, dtype=np.uint8)), item, STATUS_OK
        except Exception as exc:  # any decode failure is a cached status, never a crash
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), item, describe_failure(exc)


def _new_shard(tmp: Path, shape: tuple[int, ...]) -> tuple[np.memmap, int]:
    """A memory-mapped ``.npy`` of ``shape`` whose blocks are all allocated on disk first, and the descriptor
    that holds its lock (the caller closes it).

    Writing through a map onto a sparse file that the disk cannot hold kills the process with SIGBUS; with
    the space reserved up front, a full disk is one ENOSPC here instead. The temporary stays flock'ed while
    this process lives, so that :func:`_remove_stale_shards` knows a killed writer's.
    """
    try:
        # Create and lock the file before mapping it: another rank's stale-shard sweep must never see it unlocked.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                if shutil.disk_usage(tmp.parent).free < os.fstat(fd).st_size:  # no fallocate here: check instead
                    raise OSError(errno.ENOSPC, "No space left on device") from None
        except BaseException:
            os.close(fd)
            raise
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, tmp)
        raise
    return pixels, fd


STALE_SECONDS = 60  # a shard temporary untouched this long, with its lock free, was left by a killed writer


def _remove_stale_shards(folder: Path) -> None:
    """Remove ``shard-*.npy.tmp`` files whose writer was killed (their lock is free)."""
    for path in folder.glob("shard-*.npy.tmp"):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer's
        else:
            if time.time() - os.fstat(fd).st_mtime > STALE_SECONDS:  # a writer that is just starting is not stale
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _fill(
    folder: Path,
    keys: list[str],
    stats: np.ndarray,
    indices: np.ndarray,
    *,
    root: str,
    size: int,
    num_workers: int,
    batch_size: int,
    progress: Any,
    stop: Any,
) -> None:
    per_shard = max(1, SHARD_BYTES // (size * size * 3))
    _remove_stale_shards(folder)
    for start in range(0, len(indices), per_shard):
        chunk = indices[start : start + per_shard]
        name = f"shard-{uuid.uuid4().hex[:16]}.npy"
        tmp = folder / (name + ".tmp")
        statuses: list[str | None] = [None] * len(chunk)
        pixels, lock = _new_shard(tmp, (len(chunk), size, size, 3))
        try:
            files = _Decode([keys[i] for i in chunk], size, root)  # this shard's files only, not the whole listing
            loader = DataLoader(files, batch_size=batch_size, num_workers=num_workers)
            for images, positions, batch_status in loader:
                positions = positions.numpy()
                pixels[positions] = images.numpy()
                for position, status in zip(positions, batch_status, strict=True):
                    if status != STATUS_OK:
                        statuses[int(position)] = status
                if progress is not None:
                    progress.advance(len(batch_status))
                if stop is not None:
                    stop.check()
            pixels.flush()
            del pixels
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(lock)
        _add_to_index(
            folder,
            {
                "key": [keys[i] for i in chunk],
                "file_size": stats[chunk, 0],
                "mtime_ns": stats[chunk, 1],
                "shard": [name] * len(chunk),
                "row": np.arange(len(chunk), dtype=np.int64),
                "status": statuses,
            },
        )
