"""The documentation holds together: every relative link in the README and docs/ points at a file (and heading)
that exists, the README stays a front door, docs/results.md's column table is the Parquet schema, and every shell
and Python block in README.md, docs/*.md and examples/*.md runs as written.

How a block runs (the one rule, also in docs/architecture.md#docs-that-run): **unchanged, in a fresh temporary
folder that holds a toy stand-in under every input name the docs use, with the default weights loaded as the tiny
CLIP.** The stand-ins (:data:`STAND_INS`): ``dataset/``, ``new_images/``, ``noisy_digits/`` and ``test_digits/``
are small image folders of the tiny CLIP's classes, ``pets/`` a folder with its ``labels.csv`` table,
``hf_saved/`` the dataset saved by Hugging Face ``datasets``, ``shards/`` WebDataset shards,
``tiny-clip.json`` / ``tiny-clip.pt`` the tiny CLIP itself; ``results.parquet`` (with ``arrays/``), ``model/``,
``predictions.parquet`` and ``decisions.csv`` are one shared detect, train, predict and review of ``dataset/``.
A stand-in is put in the folder only when the block names it and does not write it itself (a block that runs
``detect --out results.parquet`` reads its own results). Weights ``ViT-B-16`` / ``openai`` (the defaults, named or
implied) load the tiny CLIP. A ``deft-clean`` command identical to one the shared run was made with (the README's
detect: the same without ``--save-arrays``) is not run twice: its outputs are copied from the shared run. Shell
lines must be ``deft-clean`` (or ``python -m deft_clean``) commands, run in this process through the command
line's own entry; Python blocks are executed as they stand (each with its own imports).

A block that cannot run here (an install, several GPUs, a download) carries the marker
``<!-- doc-test: skip (why) -->`` on the line before its fence; nothing is skipped silently.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from deft_clean import testing as toy
from deft_clean.outputs.results import SCHEMA
from tests.conftest import CLASSES, TinyClip, make_noisy_folder

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
PAGES.append(ROOT / "benchmarks" / "README.md")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TYPES = {"string": "string", "int64": "int64", "bool": "bool", "float": "float32"}  # arrow name -> the docs' word


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a link in an example is not a link)."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert broken == []


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 15_000
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("pip install -e '.[dev]'", "python -m pytest"):  # .ci/run runs exactly these
        assert command in readme and command in ci
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name}" in readme, f"the README does not link docs/{doc.name}"


def documented_columns() -> dict[str, str]:
    """column -> its type word, from the table under docs/results.md's "| column | type | meaning |"."""
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = text.split("| column | type | meaning |", 1)[1].split("\n\n", 1)[0]
    columns = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            columns[name] = cells[1].split(",")[0].strip()
    return columns


def test_parquet_column_table_is_the_schema():
    documented = documented_columns()
    schema = {field.name: TYPES.get(str(field.type), str(field.type)) for field in SCHEMA}
    assert list(documented) == list(schema), "docs/results.md's column table must list SCHEMA's columns in order"
    assert documented == schema


# --- every code block runs --------------------------------------------------------------------------------------

RUNNABLE = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python", "py": "python"}
# Input names the docs use, and the stand-in each block gets for it (see the module docstring).
STAND_INS = [
    "dataset",
    "new_images",
    "noisy_digits",
    "test_digits",
    "pets",
    "hf_saved",
    "shards",
    "tiny-clip.json",
    "tiny-clip.pt",
    "results.parquet",
    "arrays",
    "model",
    "predictions.parquet",
    "decisions.csv",
]
# The shared run on dataset/ that the blocks reading its outputs get, as (command, what it writes); a block's
# command equal to one of these gets those outputs copied in instead of running again (the README's detect is
# the shared one without --save-arrays).
SHARED = [
    (["detect", "./dataset", "--out", "results.parquet", "--save-arrays", "arrays/"], ["results.parquet", "arrays"]),
    (["train", "./dataset", "--results", "results.parquet", "--clean-only", "--out", "model/"], ["model"]),
    (["predict", "model/", "./new_images", "--out", "predictions.parquet"], ["predictions.parquet"]),
]
REUSED = [*SHARED, (["detect", "./dataset", "--out", "results.parquet"], ["results.parquet"])]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    language: str  # "shell" or "python"
    code: str
    skip: str | None  # the marker's reason

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        language = LANGUAGES.get(match["lang"])
        if language is None:
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = [x for x in text[: match.start()].splitlines() if x.strip()][-1:]
        marker = SKIP.search(before[0]) if before else None
        indent = len(match["indent"])
        code = "\n".join(x[indent:] for x in match["body"].splitlines())
        blocks.append(Block(page, line, language, code, marker["why"].strip() if marker else None))
    return blocks


BLOCKS = [block for page in RUNNABLE for block in code_blocks(page)]


def test_every_block_is_fenced_and_every_skip_says_why():
    """A command in an indented block would escape the test; a skip marker must sit on a block and give a reason."""
    for page in RUNNABLE:
        outside = FENCE.sub("", page.read_text(encoding="utf-8"))
        indented = re.findall(r"^ {4,}(?:deft-clean|python|torchrun|pip) .*$", outside, flags=re.M)
        assert indented == [], f"{page.relative_to(ROOT)}: put these in a fenced bash block: {indented}"
        markers = len(re.findall(r"^\s*<!--\s*doc-test", page.read_text(encoding="utf-8"), flags=re.M))
        assert markers == sum(1 for b in BLOCKS if b.page == page and b.skip), f"{page}: a marker not on a block"
    assert len([b for b in BLOCKS if not b.skip]) >= 15


def commands(code: str) -> list[list[str]]:
    """The shell block's commands: continuation lines joined, comments dropped, words split as bash would."""
    words = [shlex.split(line, comments=True) for line in code.replace("\\\n", " ").splitlines()]
    return [w for w in words if w]


def deft_clean_args(words: list[str], block: Block) -> list[str]:
    if words[0] == "deft-clean":
        return words[1:]
    if words[:3] == ["python", "-m", "deft_clean"]:
        return words[3:]
    raise AssertionError(f"{block}: `{shlex.join(words)}` is not a deft-clean command; mark the block skipped")


@contextmanager
def toy_weights(tiny_clip: TinyClip) -> Iterator[None]:
    """While inside, weights ViT-B-16 / openai (named or the defaults) load the tiny CLIP."""
    from deft_clean.models import clip

    for name in ("deft_clean.detecting.detect", "deft_clean.models.classifier"):  # the callers, imported first
        importlib.import_module(name)
    real = clip.load_clip

    def load_clip(model, pretrained, **options):
        if (model, pretrained) == ("ViT-B-16", "openai"):
            model, pretrained = str(tiny_clip.config), str(tiny_clip.checkpoint)
        return real(model, pretrained, **options)

    holders = [
        m for name, m in list(sys.modules.items()) if name.startswith("deft_clean") and vars(m).get("load_clip") is real
    ]
    with pytest.MonkeyPatch.context() as patch:
        for module in holders:
            patch.setattr(module, "load_clip", load_clip)
        yield


def run_cli(args: list[str], where: str) -> None:
    from typer.testing import CliRunner

    from deft_clean.cli.app import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (
        f"{where}: `deft-clean {shlex.join(args)}` exited {result.exit_code}:\n{result.output}"
    )


def write_hf(source: Path, target: Path) -> None:
    import datasets

    from deft_clean.inputs.listing import list_dataset

    listing = list_dataset(source)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=listing.classes)})
    columns = {"image": [str(source / p) for p in listing.paths], "label": listing.label_indices.tolist()}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns, features=features)}).save_to_disk(str(target))


def write_shards(source: Path, target: Path, count: int = 16) -> None:
    """``target/train-000.tar`` ... one sample or more each, labels in the ``json`` member (as docs/inputs.md)."""
    import webdataset

    target.mkdir()
    files = sorted(source.rglob("*.png"))
    for shard in range(count):
        with webdataset.TarWriter(str(target / f"train-{shard:03d}.tar")) as writer:
            for i, file in enumerate(files[shard::count]):
                key = f"s{shard:03d}-{i:03d}"
                writer.write({"__key__": key, "png": file.read_bytes(), "json": {"label": file.parent.name}})


@pytest.fixture(scope="module")
def stand_ins(tiny_clip: TinyClip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder holding every stand-in, the shared detect / train / predict among them."""
    import pandas as pd

    import deft_clean

    folder = tmp_path_factory.mktemp("doc_stand_ins")
    make_noisy_folder(folder / "dataset", per_class=6, rate=0.2, seed=11)
    images, labels = toy.synthetic_images(3, len(CLASSES), seed=12)
    toy.write_image_folder(folder / "new_images", images, labels, CLASSES)
    shutil.copytree(folder / "dataset", folder / "noisy_digits")
    shutil.copytree(folder / "new_images", folder / "test_digits")
    shutil.copy(tiny_clip.config, folder / "tiny-clip.json")
    shutil.copy(tiny_clip.checkpoint, folder / "tiny-clip.pt")
    pets = sorted((folder / "dataset").rglob("*.png"))
    (folder / "pets" / "img").mkdir(parents=True)
    for i, file in enumerate(pets):
        shutil.copy(file, folder / "pets" / "img" / f"{i:04d}.png")
    table = {"file": [f"img/{i:04d}.png" for i in range(len(pets))], "species": [p.parent.name for p in pets]}
    pd.DataFrame(table).to_csv(folder / "pets" / "labels.csv", index=False)
    write_hf(folder / "dataset", folder / "hf_saved")
    write_shards(folder / "dataset", folder / "shards")
    with toy_weights(tiny_clip), pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for args, _ in SHARED:
            run_cli(args, "the shared run")
    flagged = deft_clean.load(folder / "results.parquet").flagged()
    decisions = ["drop", "drop", "relabel", "relabel"]
    rows = [
        {"path": row.path, "decision": decision, "label": row.predicted_label if decision == "relabel" else ""}
        for decision, row in zip(decisions, flagged.itertuples(), strict=False)
    ]
    pd.DataFrame(rows, columns=["path", "decision", "label"]).to_csv(folder / "decisions.csv", index=False)
    return folder


def written(block: Block) -> set[str]:
    """Names the block writes itself (an --out of a command, out= / save / save_arrays in Python)."""
    found = re.findall(r"(?:--out|--save-arrays|--html)[ =]([^\s]+)", block.code)
    found += re.findall(r"(?:\bout=|\.save\(|save_arrays=|\.save_arrays\()\s*[\"']([^\"']+)", block.code)
    return {Path(name).parts[0] for name in found if not name.startswith("/")}


def seed(block: Block, stand_ins: Path, here: Path) -> None:
    names = set(re.findall(r"[\w./-]+", block.code))
    mentioned = {Path(name).parts[0] for name in names if not name.startswith("/") and Path(name).parts}
    for name in STAND_INS:
        if name in mentioned and name not in written(block):
            copy(stand_ins / name, here / name)


def run_shell(block: Block, stand_ins: Path, here: Path) -> None:
    """Each command in turn; one the shared run made is copied from it until the block runs a detect or train of
    its own (whose results or model a later command may read instead of the shared ones)."""
    reused = {tuple(args): outputs for args, outputs in REUSED}
    shared_so_far = True
    for words in commands(block.code):
        args = deft_clean_args(words, block)
        outputs = reused.get(tuple(args), []) if shared_so_far else []
        if outputs and not any((here / name).exists() for name in outputs):
            for name in outputs:
                copy(stand_ins / name, here / name)
            continue
        shared_so_far = shared_so_far and args[0] not in ("detect", "train")
        run_cli(args, str(block))


def copy(source: Path, target: Path) -> None:
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=pytest.mark.skip(reason=f"marked in the doc: {b.skip}")) if b.skip else b for b in BLOCKS],
    ids=str,
)
def test_code_block_runs_as_written(block, tiny_clip, stand_ins, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    seed(block, stand_ins, here)
    monkeypatch.chdir(here)
    with toy_weights(tiny_clip):
        if block.language == "shell":
            run_shell(block, stand_ins, here)
        else:
            exec(compile(block.code, str(block), "exec"), {"__name__": "__doc_block__"})
