"""The shape of a results file's ``deft_clean`` metadata, checked when it is read back.

A results file is data, not instructions: every key a report, export, review or train reads is checked for
its type here, so that a malformed or crafted entry is one clear line instead of a crash deep in a report.
Keys a reader does not use are left alone (newer versions may add some); missing keys read as absent, as in
files from earlier versions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..run.errors import DataError
from ..run.safety import printable

Check = Callable[[Any], bool]
SOURCE_KINDS = ("folder", "table", "dataframe", "files", "hf", "webdataset")


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _list_of(check: Check, length: int | None = None) -> Check:
    return lambda value: isinstance(value, list) and (length is None or len(value) == length) and all(map(check, value))


# the reader options detect records (see inputs.readers): a name a reader does not take (``root``,
# ``recursive``...) would reach it as an unexpected keyword
READER_KEYS = ("path_col", "label_col", "split", "label_key", "id_col")


def _reader(value: Any) -> bool:
    return isinstance(value, dict) and all(k in READER_KEYS and _optional(_text)(v) for k, v in value.items())


def _record(fields: dict[str, Check]) -> Check:
    """A dict whose listed keys, where present, pass their checks."""
    return lambda value: isinstance(value, dict) and not _bad_fields(value, fields)


def _bad_fields(value: dict[str, Any], fields: dict[str, Check]) -> list[str]:
    return [key for key, check in fields.items() if key in value and not check(value[key])]


INTERVAL = _optional(_list_of(_number, 2))
PER_CLASS = _record(
    {
        "class": _text,
        "rows": _int,
        "image_accuracy": _optional(_number),
        "image_interval": INTERVAL,
        "visible": _optional(lambda v: isinstance(v, bool)),
        "flags": _int,
        "noise": _optional(_number),
        "noise_interval": INTERVAL,
    }
)
PAIR = _record(
    {
        "classes": _list_of(_text),
        "flags": _int,
        "rows": _int,
        "kappa_image_label": _optional(_number),
        "kappa_image_text": _optional(_number),
        "seen": lambda v: isinstance(v, bool),
    }
)
EVIDENCE_FIELDS: dict[str, Check] = {
    "reliable": lambda v: isinstance(v, bool),
    "settled": lambda v: isinstance(v, bool),
    **{
        key: _optional(_number)
        for key in (
            "image_accuracy",
            "text_accuracy",
            "chance",
            "image_p_value",
            "kappa_image_label",
            "kappa_text_label",
            "kappa_image_text",
            "label_noise",
            "expected_flag_precision",
        )
    },
    "image_interval": INTERVAL,
    "flags_raised": _int,
    "flags_withheld": _int,
    "flags_cleared": _int,
    "advice": _text,
    "reasons": _list_of(_text),
    "per_class": _list_of(PER_CLASS),
    "pairs": _list_of(PAIR),
}
FIELDS: dict[str, Check] = {
    "dataset": _optional(_text),
    "source": lambda v: v is None or v in SOURCE_KINDS,
    "reader": _optional(_reader),
    "path_col": _text,
    "label_col": _text,
    "model": _optional(_text),
    "model_name": _optional(_text),
    "pretrained": _optional(_text),
    "created": _optional(_text),
    "image_size": _optional(lambda v: _int(v) and 16 <= v <= 4096),  # px: what a model can be given
    "mean": _optional(_list_of(_number, 3)),
    "std": _optional(_list_of(lambda v: _number(v) and v > 0, 3)),  # divides every pixel
    "options": _optional(lambda v: isinstance(v, dict)),
    "history": _optional(_list_of(lambda v: isinstance(v, dict))),
    "text_evidence": _optional(_text),
    "selection": _optional(lambda v: isinstance(v, dict)),
    "warnings": _optional(_list_of(_text)),
    "evidence": _optional(_record(EVIDENCE_FIELDS)),
}


def check_metadata(metadata: dict[str, Any], file: Path) -> None:
    """Refuse metadata whose entries do not have the types detect writes (one line naming the entry)."""
    bad = _bad_fields(metadata, FIELDS)
    if not bad:
        return
    key = bad[0]
    detail = ""
    if key == "evidence" and isinstance(metadata[key], dict):
        inner = _bad_fields(metadata[key], EVIDENCE_FIELDS)
        detail = f" (its {inner[0]!r} entry)" if inner else ""
    if key == "reader" and isinstance(metadata[key], dict):
        inner = [k for k, v in metadata[key].items() if k not in READER_KEYS or not _optional(_text)(v)]
        detail = f" (its {printable(str(inner[0])[:100])!r} entry; a reader takes {', '.join(READER_KEYS)})"
    raise DataError(f"{file}: the metadata's {key!r} entry is malformed{detail}; rerun detect to write it again")
