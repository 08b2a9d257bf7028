"""Hand-offs to the tools people already use on a results file: cleanlab's columns and a FiftyOne dataset.

- :func:`cleanlab_issues` is the table cleanlab's ``Datalab.get_issues("label")`` returns, with its column
  names and meanings (``is_label_issue``, ``label_score``: higher means the given label is more likely right,
  ``given_label``, ``predicted_label``), one row per usable sample indexed by its Parquet row.
- :func:`write_fiftyone` writes a folder FiftyOne imports as ``fo.types.CSVDataset`` (``labels.csv``, absolute
  ``filepath`` per image, an empty ``data/``) and :func:`fiftyone_fields` gives the parsers that turn its columns into
  FiftyOne fields (``ground_truth`` and ``suggested`` as ``Classification``, ``p_clean`` a float, the flags
  booleans). :func:`load_fiftyone` is the two together. The importer reads only the CSV: no image is opened
  here, and every ``filepath`` is the dataset root joined with a row path that cannot leave it.
- :func:`label_studio_tasks` is a Label Studio tasks JSON (import it into a project whose labeling config is
  :func:`label_studio_config`): one task per usable row, its image served from local files, a prediction of
  the suggested class whose ``score`` is ``p_clean``, so sorting by prediction score puts the doubtful rows first.
- :func:`cvat_xml` is a "CVAT for images 1.1" annotation file: each image tagged with its given label, and the
  flagged ones also with a ``suspect`` tag that carries the suggested class and ``p_clean``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pandas as pd

from ..run.errors import UsageError
from ..run.files import write_atomic
from ..run.safety import read_file
from .results import flagged_rows, usable_rows

CLEANLAB_COLUMNS = ["is_label_issue", "label_score", "given_label", "predicted_label"]  # Datalab's order
FIFTYONE_COLUMNS = [
    "filepath",  # absolute path of the image
    "path",  # the Parquet's row identifier
    "ground_truth",  # the given label -> fo.Classification
    "suggested",  # the label the evidence points to -> fo.Classification (confidence: p_predicted)
    "p_predicted",
    "p_clean",
    "is_flagged",  # flagged and not withheld
    "withheld",
    "flag_reason",
    "duplicate_group",
    "is_outlier",
]


def cleanlab_issues(frame: pd.DataFrame) -> pd.DataFrame:
    """The usable rows as cleanlab's label-issue table (``Datalab.get_issues("label")``'s columns), lowest
    ``label_score`` not sorted: index = Parquet row, so ``frame.loc[issues.index]`` lines them up."""
    usable = usable_rows(frame)
    rows = frame[usable]
    return pd.DataFrame(
        {
            "is_label_issue": flagged_rows(frame)[usable],
            "label_score": rows["p_clean"].to_numpy(dtype=np.float64, na_value=np.nan),
            "given_label": rows["label"].astype(str).to_numpy(),
            "predicted_label": rows["predicted_label"].astype(str).to_numpy(),
        },
        index=rows.index,
    )


def fiftyone_rows(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The ``labels.csv`` table: one row per usable sample, its image at ``root / path``."""
    usable = usable_rows(frame)
    rows = frame[usable]
    root = Path(os.path.abspath(root))
    filepaths = []
    for path in rows["path"].astype(str):
        full = Path(os.path.normpath(root / path))
        if full != root and root not in full.parents:  # listing refuses such paths; a hand-edited file may not
            raise UsageError(f"row path {path!r} leaves the dataset root {root}")
        filepaths.append(str(full))

    def optional(column: str, default: Any) -> Any:
        return rows[column].to_numpy() if column in rows.columns else default

    return pd.DataFrame(
        {
            "filepath": filepaths,
            "path": rows["path"].astype(str).to_numpy(),
            "ground_truth": rows["label"].astype(str).to_numpy(),
            "suggested": rows["predicted_label"].astype(str).to_numpy(),
            "p_predicted": rows["p_predicted"].to_numpy(dtype=np.float64, na_value=np.nan),
            "p_clean": rows["p_clean"].to_numpy(dtype=np.float64, na_value=np.nan),
            "is_flagged": flagged_rows(frame)[usable],
            "withheld": pd.Series(optional("withheld", False)).fillna(False).astype(bool).to_numpy(),
            "flag_reason": pd.Series(optional("flag_reason", None)).fillna("").astype(str).to_numpy(),
            "duplicate_group": pd.Series(optional("duplicate_group", None), dtype="Int64").astype(str),
            "is_outlier": pd.Series(optional("is_outlier", False)).fillna(False).astype(bool).to_numpy(),
        }
    ).replace({"duplicate_group": {"<NA>": ""}})


def write_fiftyone(frame: pd.DataFrame, root: Path, out: str | os.PathLike[str]) -> Path:
    """Write ``out/labels.csv`` (atomically) for ``fo.Dataset.from_dir(out, dataset_type=fo.types.CSVDataset,
    fields=fiftyone_fields())``; returns ``out``. The images stay where they are."""
    folder = Path(out)
    (folder / "data").mkdir(parents=True, exist_ok=True)  # the importer wants it; filepaths are absolute
    table = fiftyone_rows(frame, root)

    def write(tmp: Path) -> None:
        table.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)

    write_atomic(folder / "labels.csv", write)
    return folder


def fiftyone_fields() -> dict[str, Any]:
    """Column parsers for FiftyOne's CSV importer: labels become ``fo.Classification``, numbers and flags
    typed (an empty cell leaves the field unset)."""
    import fiftyone as fo

    def flag(value: str) -> bool:
        return value == "True"

    return {
        "path": None,
        "ground_truth": lambda v: fo.Classification(label=v),
        "suggested": lambda v: fo.Classification(label=v),
        "p_predicted": float,
        "p_clean": float,
        "is_flagged": flag,
        "withheld": flag,
        "flag_reason": None,
        "duplicate_group": int,
        "is_outlier": flag,
    }


def load_fiftyone(folder: str | os.PathLike[str], *, name: str | None = None) -> Any:
    """A FiftyOne dataset of a :func:`write_fiftyone` folder (needs ``pip install 'deft-clean[fiftyone]'`` and
    the database FiftyOne runs)."""
    try:
        import fiftyone as fo
    except ImportError:
        raise UsageError("FiftyOne is not installed: pip install 'deft-clean[fiftyone]'") from None
    return fo.Dataset.from_dir(
        dataset_dir=str(folder), dataset_type=fo.types.CSVDataset, fields=fiftyone_fields(), name=name
    )


SUSPECT = "suspect"  # the CVAT tag on flagged rows
LABEL_STUDIO_FILES = "/data/local-files/?d="  # Label Studio's local-files URL (LOCAL_FILES_DOCUMENT_ROOT=dataset root)


def label_studio_config(classes: list[str]) -> str:
    """The labeling config the tasks of :func:`label_studio_tasks` fit: one image, one choice of class."""
    root = ElementTree.Element("View")
    ElementTree.SubElement(root, "Image", name="image", value="$image")
    choices = ElementTree.SubElement(root, "Choices", name="label", toName="image", choice="single")
    for name in classes:
        ElementTree.SubElement(choices, "Choice", value=str(name))
    return ElementTree.tostring(root, encoding="unicode")


def label_studio_tasks(frame: pd.DataFrame, *, image_prefix: str = LABEL_STUDIO_FILES) -> str:
    """Label Studio's tasks JSON for the usable rows, most doubtful (lowest p_clean) first: ``data`` holds the
    image URL (``image_prefix`` + the row path), the path, the given label, whether the row is flagged and why;
    one prediction per task chooses the suggested class with ``score`` = p_clean."""
    rows = frame[usable_rows(frame)].assign(flagged=flagged_rows(frame)[usable_rows(frame)])
    rows = rows.sort_values("p_clean", kind="stable", na_position="last")
    tasks = []
    for row in rows.itertuples(index=False):
        p_clean = None if pd.isna(row.p_clean) else round(float(row.p_clean), 6)
        reason = getattr(row, "flag_reason", None)
        tasks.append(
            {
                "data": {
                    "image": f"{image_prefix}{row.path}",
                    "path": str(row.path),
                    "given_label": str(row.label),
                    "flagged": bool(row.flagged),
                    "flag_reason": "" if reason is None or pd.isna(reason) else str(reason),
                },
                "predictions": [
                    {
                        "model_version": "deft-clean",
                        "score": p_clean,
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [str(row.predicted_label)]},
                            }
                        ],
                    }
                ],
            }
        )
    return json.dumps(tasks, indent=1)


def cvat_xml(frame: pd.DataFrame, classes: list[str], sizes: dict[str, tuple[int, int]] | None = None) -> str:
    """A "CVAT for images 1.1" file for the usable rows: each ``<image>`` (name = row path; width and height
    from ``sizes``, 0 when unknown) carries a tag of its given label, and a ``suspect`` tag with the suggested
    class and p_clean as attributes when it is flagged."""
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    labels = ElementTree.SubElement(ElementTree.SubElement(ElementTree.SubElement(root, "meta"), "task"), "labels")
    for name in [*map(str, classes), SUSPECT]:
        label = ElementTree.SubElement(labels, "label")
        ElementTree.SubElement(label, "name").text = name
        ElementTree.SubElement(label, "type").text = "tag"
        attributes = ElementTree.SubElement(label, "attributes")
        if name == SUSPECT:
            for attribute, kind, values in (
                ("suggested", "select", "\n".join(map(str, classes))),
                ("p_clean", "text", ""),
            ):
                entry = ElementTree.SubElement(attributes, "attribute")
                ElementTree.SubElement(entry, "name").text = attribute
                ElementTree.SubElement(entry, "mutable").text = "False"
                ElementTree.SubElement(entry, "input_type").text = kind
                ElementTree.SubElement(entry, "default_value").text = values.split("\n")[0] if values else ""
                ElementTree.SubElement(entry, "values").text = values
    usable = usable_rows(frame)
    flagged = flagged_rows(frame)[usable]
    for i, (row, is_flagged) in enumerate(zip(frame[usable].itertuples(index=False), flagged, strict=True)):
        width, height = (sizes or {}).get(str(row.path), (0, 0))
        image = ElementTree.SubElement(
            root, "image", id=str(i), name=str(row.path), width=str(width), height=str(height)
        )
        ElementTree.SubElement(image, "tag", label=str(row.label), source="manual")
        if is_flagged:
            tag = ElementTree.SubElement(image, "tag", label=SUSPECT, source="auto")
            ElementTree.SubElement(tag, "attribute", name="suggested").text = str(row.predicted_label)
            p_clean = "" if pd.isna(row.p_clean) else f"{float(row.p_clean):.4f}"
            ElementTree.SubElement(tag, "attribute", name="p_clean").text = p_clean
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


def _refuse_existing(path: Path) -> None:
    """A hand-off file is new: deft-clean never replaces a file it cannot tell it wrote (the user's own tasks)."""
    if os.path.lexists(path):
        raise UsageError(f"{path} exists; remove it or write the hand-off to another place")


def write_label_studio(frame: pd.DataFrame, classes: list[str], out: str | os.PathLike[str]) -> Path:
    """Write ``out/tasks.json`` (:func:`label_studio_tasks`) and ``out/config.xml`` (:func:`label_studio_config`);
    serve the images with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to the dataset root. Returns ``out``."""
    folder = Path(out)
    for name in ("tasks.json", "config.xml"):
        _refuse_existing(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("tasks.json", label_studio_tasks(frame)), ("config.xml", label_studio_config(classes))):
        write_atomic(folder / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return folder


def write_cvat(frame: pd.DataFrame, classes: list[str], root: Path, out: str | os.PathLike[str]) -> Path:
    """Write :func:`cvat_xml` to ``out`` (upload it as "CVAT for images 1.1" to a task made from the images
    under ``root``); image sizes are read from the files' headers (0 where unreadable)."""
    from PIL import Image

    sizes = {}
    for path in frame.loc[usable_rows(frame), "path"].astype(str):
        try:  # a results file is data: its rows are read as the dataset's files are (regular, inside root, bounded)
            with Image.open(io.BytesIO(read_file(Path(root) / path, root=root))) as image:
                sizes[path] = image.size
        except (OSError, ValueError):
            continue
    text = cvat_xml(frame, classes, sizes)
    _refuse_existing(Path(out))
    return write_atomic(Path(out), lambda tmp: tmp.write_text(text, encoding="utf-8"))
