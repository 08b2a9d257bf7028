"""Issue 41: results that cannot point at themselves, duplicate groups that never chain, an overwrite that checks
what it deletes, outputs swapped in whole, locks created whole, model configs bounded before allocation.

Each test runs the real command on real files in a temporary home and checks the sha256 of every file outside
the named output before and after (:func:`untouched`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from deft_clean.cli.app import app
from deft_clean.outputs.results import write_results
from deft_clean.run.errors import DataError
from tests.conftest import fails
from tests.review_data import CLASSES, Review, make_review

runner = CliRunner()


def tree_hashes(root: Path, *, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file below ``root`` (a link: its target's text), except those inside ``skip``."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.name.endswith(".lock") or ".tmp" in path.name:
            continue  # a lock beside an output is the command's own
        if path.is_symlink():
            found[path.relative_to(root).as_posix()] = "-> " + os.readlink(path)
        elif path.is_file():
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def untouched(root: Path, out: Path | None = None) -> Iterator[None]:
    """Assert that no file under ``root`` outside ``out`` (the named output) changed, appeared or vanished."""
    before = tree_hashes(root, skip=out)
    yield
    assert tree_hashes(root, skip=out) == before


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home folder with a private key, the working directory of the test."""
    folder = tmp_path / "home"
    (folder / ".ssh").mkdir(parents=True)
    (folder / ".ssh" / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    (folder / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(folder)
    return folder


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def crafted(review: Review, path: Path, rows: list[dict] | None = None, **metadata: object) -> Path:
    """A results file like ``review``'s, its rows (path, label) and metadata replaced."""
    frame = review.frame.copy()
    if rows is not None:
        frame = pd.concat([frame.iloc[[0]]] * len(rows), ignore_index=True)
        frame["path"] = [r["path"] for r in rows]
        frame["label"] = [r["label"] for r in rows]
        frame["label_index"] = [CLASSES.index(r["label"]) for r in rows]
        frame["is_clean"] = True
        frame["status"] = "ok"
    meta = {"kind": "detect", "model": "tiny", "classes": CLASSES}
    meta.update({k: v for k, v in metadata.items() if v is not None})
    return write_results(frame, meta, path)


# 1. a results file never names its own rows' source; table rows are image files


def test_results_naming_themselves_as_their_table_copy_nothing(review, home):
    rows = [{"path": ".ssh/id_rsa", "label": "cat"}, {"path": "notes.txt", "label": "cat"}]
    results = crafted(review, home / "results.parquet", rows, source="table", dataset=str(home / "results.parquet"))
    out = home / "export"
    with untouched(home.parent):
        fails(invoke("export", results, "--out", out, "--mode", "copy"), 1, "not listed")
    assert not out.exists()


def test_a_results_file_is_never_a_dataset_table(review, home):
    images = review.root / "cat"
    rows = [{"path": f"data/cat/{p.name}", "label": "cat"} for p in sorted(images.glob("0*.png"))]
    results = crafted(review, review.root.parent / "r.parquet", rows, source="table")
    # names itself as its table: every row is an image the table's folder holds, but the table is deft-clean's
    results = crafted(review, results, rows, source="table", dataset=str(results))
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "export", "--mode", "copy"), 1, "deft-clean results file")


def test_table_rows_must_be_image_files(review, home):
    table = home / "list.csv"
    pd.DataFrame({"path": [".ssh/id_rsa", "notes.txt"], "label": ["cat", "dog [x]"]}).to_csv(table, index=False)
    rows = [{"path": ".ssh/id_rsa", "label": "cat"}, {"path": "notes.txt", "label": "dog [x]"}]
    results = crafted(review, home / "r.parquet", rows, source="table", dataset=str(table))
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "export", "--mode", "copy"), 1, "not listed")
        fails(invoke("export", results, "--out", home / "export.csv", "--mode", "csv"), 1, "not listed")


def test_a_home_folder_recorded_as_an_image_folder_is_refused_without_a_walk(review, home, monkeypatch):
    rows = [{"path": ".ssh/id_rsa", "label": "cat"}]
    results = crafted(review, home / "r.parquet", rows, source="folder", dataset=str(home))

    def walked(*args, **kwargs):
        raise AssertionError("the folder was walked")

    monkeypatch.setattr(os, "walk", walked)
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "export", "--mode", "copy"), 1, "not listed")


# 4. export lists labels again: a label fixed in the dataset since detect is refused, as train refuses it


def test_export_refuses_rows_whose_label_changed_since_detect(review, home):
    frame = review.frame.copy()
    cats = frame.index[frame["path"].str.startswith("cat/") & (frame["status"] == "ok")]
    frame.loc[cats, "label"] = "dog [x]"
    frame.loc[cats, "label_index"] = 1
    meta = {"kind": "detect", "classes": CLASSES}
    results = write_results(frame, {**meta, "source": "folder", "dataset": str(review.root)}, home / "r.parquet")
    for mode, out in (("symlink", home / "out"), ("csv", home / "out.csv")):
        with untouched(home.parent):
            fails(invoke("export", results, "--out", out, "--mode", mode), 1, "other labels", "'cat' now")
        assert not out.exists()


def test_export_refuses_a_table_label_fixed_after_detect(review, home):
    root = review.root
    files = [*sorted(root.glob("cat/0*")), *sorted(root.glob("dog*/0*"))]
    rows = [{"path": f"data/{p.relative_to(root).as_posix()}", "label": p.parent.name} for p in files]
    table = root.parent / "list.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    results = crafted(review, home / "r.parquet", rows, source="table", dataset=str(table))
    assert invoke("export", results, "--out", home / "before.csv", "--mode", "csv").exit_code == 0
    fixed = pd.DataFrame(rows)
    fixed.loc[0, "label"] = "dog [x]"
    fixed.to_csv(table, index=False)
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "after.csv", "--mode", "csv"), 1, "other labels")


# 9. crafted metadata, NUL bytes, huge paths, a FIFO or a device as results: one line each


@pytest.mark.parametrize("reader", [{"root": "/"}, {"recursive": True}, {"path_col": 3}])
def test_crafted_reader_options_are_one_line(review, home, reader):
    results = crafted(review, home / "r.parquet", source="folder", dataset=str(review.root), reader=reader)
    with untouched(home.parent):
        fails(invoke("export", results, "--out", home / "out"), 1, "'reader' entry is malformed")
        fails(invoke("report", results), 1, "'reader' entry is malformed")


def test_nul_bytes_and_huge_paths_in_rows_are_one_short_line(review, home):
    for bad in ("cat/a\0b.png", "cat/" + "x" * 5_000_000 + ".png"):
        rows = [{"path": bad, "label": "cat"}]
        results = crafted(review, home / "r.parquet", rows, source="folder", dataset=str(review.root))
        with untouched(home.parent):
            message = fails(invoke("export", results, "--out", home / "out"), 1)
        assert len(message) < 1000


def test_a_fifo_a_device_or_a_huge_name_as_results_is_one_line(home):
    fifo = home / "results.parquet"
    os.mkfifo(fifo)
    with untouched(home.parent):
        fails(invoke("report", fifo), 1, "not a regular file")
        fails(invoke("export", "/dev/zero", "--out", home / "out"), 1, "not a regular file")
        message = fails(invoke("report", home / ("y" * 100_000)), 2)
    assert len(message) < 1000


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


# 2 + 3. duplicate groups are cliques, when detect builds them and when export checks them again


def _morph(folder: Path, steps: int = 16) -> list[str]:
    """``steps + 1`` images blending one smooth picture into another, each step a near copy of the last."""
    rng = np.random.default_rng(3)
    ends = [np.kron(rng.integers(0, 255, (8, 8)), np.ones((8, 8))) for _ in range(2)]  # [64, 64] each
    paths = []
    for i in range(steps + 1):
        t = i / steps
        pixels = ((1 - t) * ends[0] + t * ends[1]).astype(np.uint8)
        name = f"morph/{i:02d}.png"
        (folder / "morph").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).convert("RGB").save(folder / name)
        paths.append(name)
    return paths


def test_detect_groups_a_morph_into_cliques_not_one_chain(tmp_path):
    from deft_clean.detecting.health import content_hashes, dataset_health
    from deft_clean.inputs.pixel_similarity import DUPLICATE_THRESHOLD, MAX_RESIDUAL, pixel_similarity, thumbnail
    from deft_clean.inputs.readers.base import FileImages

    paths = _morph(tmp_path)
    angles = np.radians(1.5 * np.arange(len(paths)))
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)  # neighbours follow the morph
    images = FileImages(tmp_path, paths)
    thumbs = [thumbnail(Image.open(tmp_path / p)) for p in paths]

    def copies(i: int, j: int) -> bool:
        similarity, residual = pixel_similarity(thumbs[i][None], thumbs[j][None])
        return bool(similarity[0] >= DUPLICATE_THRESHOLD and residual[0] <= MAX_RESIDUAL)

    assert all(copies(i, i + 1) for i in range(len(paths) - 1)) and not copies(0, len(paths) - 1)
    with untouched(tmp_path):
        health = dataset_health(
            features, np.ones(len(paths), bool), hashes=content_hashes(tmp_path, paths), images=images
        )
    groups = health.duplicate_group
    assert len(set(groups[groups >= 0])) >= 2  # the chain is split
    for g in set(groups[groups >= 0]):
        members = np.flatnonzero(groups == g)
        assert all(copies(int(i), int(j)) for i in members for j in members if i < j)
        first = members[0]
        for i in members[1:]:  # the similarity is to the group's representative, within the threshold
            assert health.duplicate_similarity[i] >= DUPLICATE_THRESHOLD
            assert health.duplicate_similarity[i] == pytest.approx(
                pixel_similarity(thumbs[i][None], thumbs[first][None])[0][0], abs=1e-4
            )


def _grouped(review: Review, home: Path, groups: dict[int, list[int]], name: str) -> Path:
    frame = review.frame.copy()
    frame["duplicate_group"] = pd.array([None] * len(frame), dtype="Int64")
    frame["duplicate_kind"] = None
    for g, rows in groups.items():
        frame.loc[rows, "duplicate_group"] = g
        frame.loc[rows, "duplicate_kind"] = "exact"
    meta = {"kind": "detect", "classes": CLASSES, "source": "folder", "dataset": str(review.root)}
    return write_results(frame, meta, home / name)


def test_export_keeps_every_image_of_two_pairs_given_one_group(review, home):
    clean = list(review.frame.index[review.usable & review.frame["is_clean"]])
    a, a2, c, c2 = clean[:4]
    path = review.frame["path"]
    for src, dst in ((a, a2), (c, c2)):
        (review.root / path[dst]).write_bytes((review.root / path[src]).read_bytes())
    merged = _grouped(review, home, {7: [a, a2, c, c2]}, "merged.parquet")
    honest = _grouped(review, home, {7: [a, a2], 8: [c, c2]}, "honest.parquet")

    def exported(results: Path, out: Path) -> set[str]:
        with untouched(home.parent, out):
            result = invoke("export", results, "--out", out, "--mode", "csv", "--drop-duplicates")
        assert result.exit_code == 0, result.output
        return {p.split("/data/", 1)[1] for p in pd.read_csv(out)["path"]}

    assert {path[i] for i in (a, a2, c, c2)} <= exported(merged, home / "merged.csv")
    kept = exported(honest, home / "honest.csv")
    assert path[a] in kept and path[c] in kept and path[a2] not in kept and path[c2] not in kept


def test_export_keeps_a_chain_given_one_group(review, home):
    paths = _morph(review.root, steps=4)  # 5 images, each a near copy of the next, the ends far apart
    frame = review.frame.copy()
    extra = pd.concat([frame[review.usable & frame["is_clean"]].iloc[[0]]] * len(paths), ignore_index=True)
    extra["path"], extra["label"], extra["label_index"] = paths, "cat", 0
    frame = pd.concat([frame, extra], ignore_index=True)
    frame["duplicate_group"] = pd.array([None] * (len(frame) - len(paths)) + [3] * len(paths), dtype="Int64")
    frame["duplicate_kind"] = [None] * (len(frame) - len(paths)) + ["near"] * len(paths)
    # the morph's rows sit in a folder "morph" labelled "cat": a label the folder does not give is refused,
    # so the morph is listed under cat/
    (review.root / "cat" / "morph").mkdir()
    for p in paths:
        (review.root / p).rename(review.root / "cat" / p)
    frame.loc[frame.index[-len(paths) :], "path"] = [f"cat/{p}" for p in paths]
    meta = {"kind": "detect", "classes": CLASSES, "source": "folder", "dataset": str(review.root)}
    results = write_results(frame, meta, home / "chain.parquet")
    out = home / "chain.csv"
    with untouched(home.parent, out):
        result = invoke("export", results, "--out", out, "--mode", "csv", "--drop-duplicates")
    assert result.exit_code == 0, result.output
    kept = {p.split("/data/", 1)[1] for p in pd.read_csv(out)["path"]}
    assert {f"cat/{p}" for p in paths} <= kept


# 5. --overwrite removes a listed path only while it is still the file deft-clean wrote; 6. swapped in whole


def _exported(review: Review, out: Path, *extra: str) -> None:
    result = invoke("export", review.results, "--out", out, *extra)
    assert result.exit_code == 0, result.output


def test_overwrite_refuses_a_link_replaced_by_a_real_file(review, home):
    out = home / "clean"
    _exported(review, out)
    link = next(p for p in sorted(out.rglob("*.png")) if p.is_symlink())
    link.unlink()
    link.write_bytes(b"my own file now")
    with untouched(home.parent):
        fails(invoke("export", review.results, "--out", out, "--overwrite"), 1, "since deft-clean wrote it")
    assert link.read_bytes() == b"my own file now"


def test_overwrite_refuses_an_edited_copy(review, home):
    out = home / "clean"
    _exported(review, out, "--mode", "copy")
    copy = sorted(out.rglob("*.png"))[0]
    with copy.open("ab") as handle:
        handle.write(b"edited")
    with untouched(home.parent):
        fails(invoke("export", review.results, "--out", out, "--mode", "copy", "--overwrite"), 1, "changed")


def test_a_manifest_copied_into_another_folder_removes_nothing(review, home):
    from deft_clean.run.ownership import MANIFEST

    out = home / "clean"
    _exported(review, out)
    mine = home / "photos"
    for p in sorted(out.rglob("*.png")):  # the user's own files under the very names the manifest lists
        dest = mine / p.relative_to(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"mine")
    (mine / MANIFEST).write_bytes((out / MANIFEST).read_bytes())
    with untouched(home.parent):
        fails(invoke("export", review.results, "--out", mine, "--overwrite"), 1, "not written for this folder")


def test_a_listed_file_turned_folder_leaves_the_old_export_whole(review, home):
    out = home / "clean"
    _exported(review, out, "--mode", "copy")
    victim = sorted(out.rglob("*.png"))[0]
    victim.unlink()
    victim.mkdir()
    (victim / "inside.txt").write_text("mine")
    with untouched(home.parent):
        fails(invoke("export", review.results, "--out", out, "--mode", "copy", "--overwrite"), 1, "now a folder")


def test_an_export_that_fails_midway_leaves_the_old_one_whole(review, home, monkeypatch):
    from deft_clean.outputs import export

    out = home / "clean"
    _exported(review, out, "--mode", "copy")
    real_copy, calls = export._copy, []

    def failing(source, file, root):
        calls.append(source)
        if len(calls) > 3:
            raise OSError(5, "Input/output error")
        real_copy(source, file, root)

    monkeypatch.setattr(export, "_copy", failing)
    with untouched(home.parent):
        result = invoke("export", review.results, "--out", out, "--mode", "copy", "--overwrite")
        assert result.exit_code != 0
    monkeypatch.setattr(export, "_copy", real_copy)
    before = tree_hashes(out)
    _exported(review, out, "--mode", "copy", "--overwrite")  # a whole replacement: two renames
    assert tree_hashes(out).keys() == before.keys()
    assert not [p for p in home.iterdir() if p.name.startswith(".clean.")]  # nothing left beside it


# 7. locks created whole: racing runs never see a lock without its mark; an empty lock is taken over


def _race(out: str, rounds: int, queue) -> None:
    from deft_clean.run.errors import UsageError
    from deft_clean.run.files import run_lock

    outcomes = []
    for _ in range(rounds):
        try:
            with run_lock(out):
                outcomes.append("held")
        except UsageError as exc:
            outcomes.append("busy" if "another deft-clean run" in str(exc) else str(exc))
    queue.put(outcomes)


def test_four_racing_runs_never_see_a_lock_without_its_mark(tmp_path):
    import multiprocessing

    (tmp_path / "keep.txt").write_text("mine")
    out = tmp_path / "clean"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with untouched(tmp_path, out):
        workers = [context.Process(target=_race, args=(str(out), 150, queue)) for _ in range(4)]
        for worker in workers:
            worker.start()
        outcomes = [o for _ in workers for o in queue.get(timeout=120)]
        for worker in workers:
            worker.join(timeout=60)
    assert set(outcomes) <= {"held", "busy"}, sorted(set(outcomes))
    assert outcomes.count("held") > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".clean")]  # no lock or temporary left


def test_an_empty_lock_without_a_holder_is_taken_over(review, home):
    out = home / "clean"
    (home / ".clean.lock").write_bytes(b"")  # what a crash of an earlier version could leave
    with untouched(home.parent, out):
        result = invoke("export", review.results, "--out", out)
    assert result.exit_code == 0, result.output
    assert not (home / ".clean.lock").exists()


def test_files_deft_clean_rewrites_stay_its_own(tmp_path):
    """A listed file that deft-clean writes again (a checkpoint each epoch, a resumed run's weights) stays
    removable; the same file edited by hand refuses the removal."""
    from deft_clean.run.errors import DataError
    from deft_clean.run.files import write_atomic
    from deft_clean.run.ownership import remove_listed, write_manifest

    folder = tmp_path / "model"
    folder.mkdir()
    write_atomic(folder / "checkpoint.pt", lambda tmp: tmp.write_bytes(b"epoch 1"))
    write_manifest(folder, ["checkpoint.pt", "model.safetensors"])  # a resumed run lists what is there
    for epoch in (2, 3):
        write_atomic(folder / "checkpoint.pt", lambda tmp, e=epoch: tmp.write_bytes(b"epoch %d" % e))
    write_atomic(folder / "model.safetensors", lambda tmp: tmp.write_bytes(b"weights"))
    (folder / "checkpoint.pt").write_bytes(b"edited by hand")
    with untouched(tmp_path), pytest.raises(DataError, match="changed or replaced"):
        remove_listed(folder, ["checkpoint.pt", "model.safetensors"])
    write_atomic(folder / "checkpoint.pt", lambda tmp: tmp.write_bytes(b"epoch 4"))
    assert remove_listed(folder, ["checkpoint.pt", "model.safetensors"]) == 2


# 8. model configs bounded before anything is allocated, for every way a model comes in; --seed bounded


def _tiny_config(**vision: object) -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16, **vision},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }


@pytest.mark.parametrize(
    ("vision", "fragment"),
    [
        ({"width": 10**9}, "vision_cfg.width = 1000000000 must be a whole number from 1 to 16384"),
        ({"layers": 100_000}, "vision_cfg.layers = 100000"),
        ({"patch_size": 0}, "vision_cfg.patch_size = 0"),
        ({"image_size": 1e12}, "vision_cfg.image_size"),
        ({"mlp_ratio": "4"}, "vision_cfg.mlp_ratio"),
        ({"width": 16_384, "layers": 256}, "G parameters"),
    ],
)
def test_a_model_json_past_the_bounds_is_refused_before_building(review, home, vision, fragment):
    model = _json(home / "hostile.json", _tiny_config(**vision))
    out = home / "r.parquet"
    with untouched(home.parent, out):
        args = ("detect", review.root, "--out", out, "--model", model, "--pretrained", "none", "--quick", "-q")
        fails(invoke(*args), 2, fragment)


def test_text_tower_fields_are_bounded_too():
    from deft_clean.models.limits import check_model_config
    from deft_clean.run.errors import UsageError

    for field, value in (("context_length", 10**7), ("vocab_size", 10**9), ("heads", 10**6), ("width", -1)):
        config = _tiny_config()
        config["text_cfg"][field] = value
        with pytest.raises(UsageError, match=f"text_cfg.{field} = "):
            check_model_config(config, "x.json")
    with pytest.raises(UsageError, match="embed_dim"):
        check_model_config({**_tiny_config(), "embed_dim": 10**8}, "x.json")
    check_model_config(_tiny_config(), "x.json")  # the tiny model itself passes


def test_every_open_clip_config_is_within_the_bounds():
    import open_clip

    from deft_clean.models.limits import check_model_config

    for name in open_clip.list_models():
        check_model_config(open_clip.get_model_config(name), name)


def test_a_model_folder_clip_config_past_the_bounds_is_refused(tmp_path):
    from deft_clean.models.classifier import load_model
    from deft_clean.run.errors import DataError

    folder = tmp_path / "model"
    folder.mkdir()
    config = {
        "backbone": "clip",
        "model_name": "hostile",
        "pretrained": "none",
        "clip_config": _tiny_config(width=10**9),
        "image_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "classes": ["cat", "dog"],
    }
    _json(folder / "config.json", config)
    (folder / "model.safetensors").write_bytes(b"")
    with untouched(tmp_path), pytest.raises(DataError, match="vision_cfg.width = 1000000000"):
        load_model(folder)


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", str(2**63)])
def test_a_seed_torch_cannot_take_is_a_usage_error_before_loading(review, home, seed):
    out = home / "r.parquet"
    absent = home / "absent-model.json"  # loading it would fail: the seed is refused first
    with untouched(home.parent, out):
        fails(invoke("detect", review.root, "--out", out, "--model", absent, "--seed", seed, "-q"), 2, "--seed")
        args = ("train", review.root, "--results", review.results, "--out", home / "m", "--seed", seed, "-q")
        fails(invoke(*args), 2, "--seed")


def test_a_manifest_whose_records_were_stripped_removes_nothing(review, home):
    from deft_clean.run.ownership import MANIFEST

    out = home / "clean"
    _exported(review, out, "--mode", "copy")
    manifest = json.loads((out / MANIFEST).read_text())
    for records in ({"a": 1}, {}, {f: ["file", 1, 2, "3"] for f in manifest["files"]}):
        (out / MANIFEST).write_text(json.dumps({**manifest, "records": records}))
        with untouched(home.parent):
            fails(invoke("export", review.results, "--out", out, "--mode", "copy", "--overwrite"), 1, "not written")


def test_row_checks_resolve_each_folder_once_yet_every_link_on_its_own(review, home):
    """checked_root resolves a class folder once for all its plain files; a linked file among them is still
    followed on its own, and a linked class folder is judged by where it leads."""
    from deft_clean.inputs.readers.recorded import checked_root
    from deft_clean.outputs.results import load_results

    frame, metadata = load_results(review.results)
    paths = frame["path"].astype(str).tolist()
    assert checked_root(metadata, paths) == review.root
    outside = home / "outside"
    outside.mkdir()
    last = review.root / paths[-1]  # after its folder's plain files: the folder is resolved (and cached) by then
    shutil.copyfile(last, outside / "copy.png")
    original = last.read_bytes()
    last.unlink()
    last.symlink_to(outside / "copy.png")
    with pytest.raises(DataError, match="link outside the dataset root"):
        checked_root(metadata, paths)
    last.unlink()
    last.symlink_to(review.root / paths[0])  # a link to another image inside the root is a plain image
    assert checked_root(metadata, paths) == review.root
    last.unlink()
    last.mkdir()  # a folder named like an image is not a file
    with pytest.raises(DataError, match="not listed"):
        checked_root(metadata, paths)
    last.rmdir()
    last.write_bytes(original)
    folder = last.parent
    folder.rename(outside / folder.name)
    folder.symlink_to(outside / folder.name, target_is_directory=True)
    with pytest.raises(DataError, match="link outside the dataset root"):
        checked_root(metadata, paths)
