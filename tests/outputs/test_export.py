"""deft-clean export: exactly the kept rows, links that resolve, a source dataset left untouched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from deft_clean.cli.app import app
from deft_clean.outputs.export import FLAGGED_DIR, export_dataset
from deft_clean.run.errors import DataError
from deft_clean.run.ownership import MANIFEST
from tests.review_data import HOSTILE, RELABEL_MIN_P, Review, checksums, make_review

runner = CliRunner()


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


def export(review: Review, out: Path, *args: str):
    return runner.invoke(app, ["export", str(review.results), "--out", str(out), *args])


def exported_files(out: Path) -> dict[str, Path]:
    """OUT-relative path -> the source file it stands for (a link's target, or the copy itself)."""
    files = (p for p in sorted(out.rglob("*")) if (p.is_symlink() or p.is_file()) and p.name != MANIFEST)
    return {p.relative_to(out).as_posix(): p.resolve() for p in files}


def sources_by_label(review: Review, rows: pd.Series, label_column: str = "label") -> dict[str, list[Path]]:
    """Expected: new label -> sorted source files."""
    chosen = review.frame[rows]
    expected: dict[str, list[Path]] = {}
    for path, label in zip(chosen["path"], chosen[label_column], strict=True):
        expected.setdefault(label, []).append((review.root / path).resolve())
    return {k: sorted(v) for k, v in expected.items()}


def grouped(files: dict[str, Path]) -> dict[str, list[Path]]:
    result: dict[str, list[Path]] = {}
    for rel, target in files.items():
        result.setdefault(rel.rsplit("/", 1)[0], []).append(target)
    return {k: sorted(v) for k, v in result.items()}


def test_symlink_export_holds_exactly_the_clean_rows(review, tmp_path):
    before = checksums(review.root)
    out = tmp_path / "clean"
    result = export(review, out)
    assert result.exit_code == 0, result.output
    files = exported_files(out)
    assert all((out / rel).is_symlink() for rel in files)
    assert all(target.is_file() for target in files.values())  # every link resolves
    assert grouped(files) == sources_by_label(review, review.usable & review.frame["is_clean"])
    assert "cat/broken.png" not in {p.relative_to(review.root).as_posix() for p in files.values()}
    assert checksums(review.root) == before
    assert f"exported {int(review.frame['is_clean'].sum())} samples" in result.stdout


def test_relabel_adds_confident_flagged_rows_under_their_suggested_class(review, tmp_path):
    before = checksums(review.root)
    out = tmp_path / "clean"
    result = export(review, out, "--relabel", str(RELABEL_MIN_P))
    assert result.exit_code == 0, result.output
    frame = review.frame
    want = frame.assign(new_label=frame["label"].where(~review.relabelled, frame["predicted_label"]))
    review_new = Review(review.root, review.results, want)
    exported = review.usable & (frame["is_clean"] | review.relabelled)
    expected = sources_by_label(review_new, exported, "new_label")
    files = exported_files(out)
    assert grouped(files) == expected
    assert review.relabelled.sum() == 3 and len(files) == int(frame["is_clean"].sum()) + 3
    # cat/00000.png relabelled to "dog [x]" meets dog's own 00000.png: both kept, under distinct names.
    assert len([rel for rel in files if rel.startswith("dog [x]/00000-")]) == 2
    assert checksums(review.root) == before


def test_keep_flagged_and_copy_mode(review, tmp_path):
    before = checksums(review.root)
    out = tmp_path / "clean"
    result = export(review, out, "--mode", "copy", "--keep-flagged", "--relabel", str(RELABEL_MIN_P))
    assert result.exit_code == 0, result.output
    files = exported_files(out)
    assert not any((out / rel).is_symlink() for rel in files)
    for rel, copy in files.items():
        assert copy.read_bytes() in {(review.root / p).read_bytes() for p in review.frame["path"]}, rel
    flagged = {rel: p for rel, p in files.items() if rel.startswith(f"{FLAGGED_DIR}/")}
    left = review.flagged & ~review.relabelled
    assert sorted(rel.split("/")[1] for rel in flagged) == sorted(review.frame.loc[left, "label"])
    assert HOSTILE in {rel.split("/")[1] for rel in flagged}
    assert not any("broken" in rel for rel in files)  # unusable rows are never exported, not even for review
    assert len(files) == int(review.usable.sum())
    assert checksums(review.root) == before


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_export(review, tmp_path, suffix):
    out = tmp_path / f"clean{suffix}"
    result = export(review, out, "--mode", "csv", "--relabel", str(RELABEL_MIN_P))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(table.columns) == ["path", "label", "original_label", "p_clean", "relabelled"]
    kept = review.usable & (review.frame["is_clean"] | review.relabelled)
    assert len(table) == int(kept.sum()) and int(table["relabelled"].sum()) == int(review.relabelled.sum())
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    expected = review.frame[kept]
    by_path = dict(zip(table["path"], table["label"], strict=True))
    for path, label, predicted, moved in zip(
        expected["path"], expected["label"], expected["predicted_label"], review.relabelled[kept], strict=True
    ):
        assert by_path[str((review.root / path).resolve())] == (predicted if moved else label)


def test_library_summary(review, tmp_path):
    summary = export_dataset(review.results, out=tmp_path / "clean", relabel=RELABEL_MIN_P)
    flagged = int(review.flagged.sum())
    assert (summary.kept, summary.relabelled, summary.flagged, summary.unusable) == (
        int((review.usable & review.frame["is_clean"]).sum()),
        int(review.relabelled.sum()),
        0,
        1,
    )
    assert summary.dropped == flagged - summary.relabelled


def test_a_folder_deft_clean_did_not_write_is_never_written_into(review, tmp_path):
    out = tmp_path / "clean"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    for extra in ((), ("--overwrite",)):
        result = export(review, out, *extra)
        assert result.exit_code == 2 and "did not write it" in result.stderr, result.output
        assert "--overwrite" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["stale.txt"]


def test_overwrite_replaces_an_earlier_export_and_keeps_foreign_files(review, tmp_path):
    out = tmp_path / "clean"
    assert export(review, out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = export(review, out, "--relabel", str(RELABEL_MIN_P))
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    result = export(review, out, "--relabel", str(RELABEL_MIN_P), "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert len(exported_files(out)) == int(review.frame["is_clean"].sum()) + 3 + 1  # + notes.txt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clean")]  # no staging left behind


def test_refuses_an_existing_table_unless_overwrite(review, tmp_path):
    out = tmp_path / "clean.csv"
    out.write_text("keep me")
    assert export(review, out, "--mode", "csv").exit_code == 2 and out.read_text() == "keep me"
    assert export(review, out, "--mode", "csv", "--overwrite").exit_code == 2 and out.read_text() == "keep me"
    out.unlink()
    assert export(review, out, "--mode", "csv").exit_code == 0
    assert export(review, out, "--mode", "csv", "--overwrite").exit_code == 0
    assert out.read_text().startswith("path,label,")


def test_missing_image_files_are_a_data_error(review, tmp_path):
    os.remove(review.root / review.frame.loc[review.frame["is_clean"], "path"].iloc[0])
    out = tmp_path / "clean"
    result = export(review, out)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: 1 image file(s)") and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(DataError, match="missing"):
        export_dataset(review.results, out=out)


def test_moved_dataset_needs_dataset_option(review, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(review.root, moved)
    out = tmp_path / "clean"
    result = export(review, out)
    assert result.exit_code == 1 and "--dataset" in result.stderr
    result = export(review, out, "--dataset", str(moved))
    assert result.exit_code == 0, result.output
    assert all(str(target).startswith(str(moved.resolve())) for target in exported_files(out).values())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--mode", "hardlink"], "--mode"),
        (["--relabel", "1.5"], "--relabel"),
        (["--mode", "csv", "--keep-flagged"], "--keep-flagged"),
        (["--mode", "csv"], ".csv or .parquet"),
    ],
)
def test_usage_errors(review, tmp_path, args, fragment):
    out = tmp_path / "clean"
    result = export(review, out, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_refuses_to_write_over_the_dataset(review, tmp_path, where):
    before = checksums(review.root)
    out = {"inside": review.root / "clean", "same": review.root, "parent": tmp_path}[where]
    result = export(review, out, "--overwrite")
    assert result.exit_code == 2 and "never modifies" in result.stderr
    assert checksums(review.root) == before and not (review.root / "clean").exists()
