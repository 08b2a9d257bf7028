"""WebDataset shards: ``.tar`` files of samples ``<key>.<ext>`` (an image plus a ``cls`` or ``json`` label).

Shards are given as one path, a brace pattern (``shards-{000..003}.tar``, expanded by the ``webdataset``
library) or a list. Listing streams through each shard's member headers once and reads only the label
members; samples are grouped by key with webdataset's own naming rule (``base_plus_ext``), so shards
written by ``webdataset.ShardWriter`` / ``tarp`` / img2dataset read as webdataset reads them.

Rows are ``<shard path relative to the shards' folder>#<key>``. An image is read in place by seeking to
its member inside its shard (nothing is extracted to disk). That makes a row addressable like a file:
each torchrun rank reads only the rows of its share, the seeded epoch order and exact resume of a folder
run apply unchanged, and the same images give the same verdicts as a folder. Compressed shards
(``.tar.gz``) cannot be seeked: decompress them first.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...run.errors import DataError, UsageError, option
from ...run.safety import MAX_FILE_BYTES, open_regular, printable
from ..decode import decode_image
from .base import IMAGE_EXTENSIONS, PackedStrings, Rows

INSTALL = "pip install 'deft-clean[wds]'"
IMAGE_EXTS = tuple(e.lstrip(".") for e in sorted(IMAGE_EXTENSIONS))


def is_shards(dataset: Any) -> bool:
    """A ``.tar`` path, a brace pattern of them, or a list/tuple of them (no file system access)."""
    if isinstance(dataset, (list, tuple)):
        return bool(dataset) and all(is_shards(d) for d in dataset)
    if not isinstance(dataset, (str, os.PathLike)):
        return False
    return os.fspath(dataset).lower().endswith((".tar", ".tar.gz", ".tgz"))


def expand_shards(dataset: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The shard files ``dataset`` names, in order; refuses missing or compressed ones."""
    try:
        from webdataset.shardlists import expand_urls
    except ImportError:
        raise UsageError(f"reading WebDataset shards needs the webdataset package: {INSTALL}") from None
    patterns = [dataset] if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    shards = [Path(url) for pattern in patterns for url in expand_urls(os.fspath(pattern))]
    for shard in shards:
        if not shard.is_file():
            raise UsageError(f"shard not found: {shard}")
        if not shard.name.lower().endswith(".tar"):
            raise UsageError(f"{shard}: compressed shards cannot be read in place; decompress them (gunzip) first")
    if len({s.resolve() for s in shards}) != len(shards):
        raise UsageError(f"a shard is named twice in {os.fspath(dataset) if isinstance(dataset, str) else patterns}")
    return shards


def wds_rows(dataset: Any, *, label_key: str = "cls", labels_optional: bool = False) -> Rows:
    """The rows of WebDataset shards; ``label_key`` is a member extension (``cls``) or ``json:FIELD``.

    ``labels_optional`` (predict): shards without any label member list with ``labels=None``.
    """
    check_label_key(label_key)
    shards = expand_shards(dataset)
    root = Path(os.path.commonpath([str(s.resolve().parent) for s in shards]))
    names = [s.resolve().relative_to(root).as_posix() for s in shards]
    paths: list[str] = []
    labels: list[str | None] = []
    where: list[tuple[int, int, int]] = []  # (shard number, data offset, size) of each row's image
    for number, (shard, name) in enumerate(zip(shards, names, strict=True)):
        for key, image, label in _samples(shard, label_key, optional=labels_optional):
            paths.append(f"{name}#{key}")
            labels.append(label)
            where.append((number, *image))
    if not paths:
        raise DataError(f"{os.fspath(shards[0])}: the shards hold no samples")
    given = [dataset] if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    if labels_optional and None in labels:
        if any(label is not None for label in labels):
            first = paths[labels.index(None)]
            raise DataError(f"{first}: no {label_key!r} label while other samples have one; fix the shard")
        labels = None
    location = ",".join(os.path.abspath(os.fspath(d)) for d in given)  # the pattern itself, braces kept
    images = TarImages(root, names, np.asarray(where, dtype=np.int64))
    return Rows(root, paths, labels, images, "webdataset", location, {"label_key": label_key})


def check_label_key(label_key: str) -> None:
    """Refuse a ``label_key`` that names no member (``""``) or a ``json:`` without its field."""
    label_ext, colon, field = label_key.partition(":")
    if not label_ext.strip() or (colon and not field.strip()):
        raise UsageError(
            f"{option('label_key', label_key)} must be a member extension such as cls, or json:FIELD with a field "
            "name (e.g. json:label)"
        )


def _samples(shard: Path, label_key: str, *, optional: bool) -> list[tuple[str, tuple[int, int], str | None]]:
    """``(key, (offset, size) of the image member, label)`` per sample of one shard, in shard order.

    With ``optional``, a sample without the label member gets ``None`` instead of an error.
    """
    from webdataset.tariterators import base_plus_ext

    label_ext, _, field = label_key.partition(":")
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:  # headers only, streamed; "r:" refuses compressed data
            last = None
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None or os.path.basename(member.name).startswith("__"):
                    continue  # webdataset skips unsplittable names and __meta__ members too
                parts = members.setdefault(key, {})
                if ext.lower() in parts or (key != last and len(parts)):
                    # webdataset would yield two samples (or merge them): either way a row would be lost
                    raise DataError(
                        f"{printable(shard)}: sample key {printable(key)!r} appears twice ({printable(member.name)}); "
                        "give every sample its own key"
                    )
                parts[ext.lower()] = member
                last = key
            labels = {k: _read(tar, got.get(label_ext), k, shard, label_key, optional) for k, got in members.items()}
    except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{shard}: not a readable tar shard ({type(exc).__name__}: {exc})") from None
    samples = []
    for key, parts in members.items():
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        if image is None:
            raise DataError(f"{shard}: sample {key!r} has no image member ({', '.join(IMAGE_EXTS)}); fix the shard")
        label = labels[key]
        if label is not None and field:
            label = _field(label, field, key, shard)
        if label == "":
            raise DataError(f"{shard}: sample {key!r} has an empty label in its {label_ext!r} member")
        samples.append((key, (image.offset_data, image.size), label))
    return samples


def _read(
    tar: tarfile.TarFile, member: tarfile.TarInfo | None, key: str, shard: Path, label_key: str, optional: bool
) -> str | None:
    if member is None and optional:
        return None
    if member is None:
        wanted = label_key.partition(":")[0]
        raise DataError(f"{shard}: sample {key!r} has no {wanted!r} member; see {option('label_key')}")
    handle = tar.extractfile(member)
    return handle.read().decode("utf-8").strip() if handle is not None else ""


def _field(text: str, field: str, key: str, shard: Path) -> str:
    try:
        value = json.loads(text)[field]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
        raise DataError(
            f"{shard}: sample {key!r}: its json member has no field {field!r}; see {option('label_key')}"
        ) from None
    return "" if value is None else str(value).strip()


class TarImages:
    """Opens row ``i``'s image by reading its member's bytes at a known offset inside its shard."""

    def __init__(self, root: Path, shards: Sequence[str], where: np.ndarray) -> None:
        self.root = root
        self.shards = PackedStrings(shards)
        self.where = where  # int64 [N, 3]: shard number, data offset, size

    def read_bytes(self, index: int) -> bytes:
        number, offset, size = (int(v) for v in self.where[index])
        if size > MAX_FILE_BYTES:
            raise OSError(f"{self.shards[number]}: the member is {size} bytes, over the image limit; not read")
        with open_regular(self.root / self.shards[number], root=self.root, limit=None) as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f"{self.shards[number]} is shorter than when it was listed; list it again")
        return data

    def open(self, index: int, *, draft_size: int | None = None) -> Image.Image:
        return decode_image(self.read_bytes(index), draft_size=draft_size)
