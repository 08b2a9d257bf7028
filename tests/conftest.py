"""Shared fixtures: a tiny CLIP pretrained for seconds on synthetic images, and planted-noise datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from deft_clean import testing as toy

N_CLASSES = 6
CLASSES = toy.SHAPE_CLASSES[:N_CLASSES]


@dataclass(frozen=True)
class TinyClip:
    config: Path  # open_clip model-config JSON
    checkpoint: Path  # state-dict checkpoint

    def options(self, **extra: object) -> dict:
        """Detect options for fast CPU runs with this model.

        The tiny model's 2-layer text tower is easier to knock off its pretrained region than a real
        CLIP's, so the tests start the contexts from the template it was trained with and use lr 0.01.
        """
        base = {
            "ctx_init": "a photo of a",
            "lr": 0.01,
            "vpt_tokens": 4,
            "epochs": 10,
            "model": str(self.config),
            "pretrained": str(self.checkpoint),
            "device": "cpu",
            "num_workers": 0,
            "batch_size": 32,
            "quiet": True,
        }
        base.update(extra)
        return base

    def cli_args(self) -> list[str]:
        return [
            "--model",
            str(self.config),
            "--pretrained",
            str(self.checkpoint),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--batch-size",
            "32",
            "--epochs",
            "2",
            "--vpt-tokens",
            "2",
            "--quiet",
        ]


@dataclass(frozen=True)
class NoisyFolder:
    root: Path
    true_label: dict[str, str]  # relative path -> true class name

    def truly_clean(self, frame) -> np.ndarray:
        return (frame["path"].map(self.true_label) == frame["label"]).to_numpy()


# Fixtures that pretrain or run the tiny CLIP: a test that uses one (directly or through another fixture) is
# end-to-end, and `pytest -m "not e2e"` leaves it out.
E2E_FIXTURES = {"tiny_clip"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    folder = tmp_path_factory.mktemp("tiny_clip")
    images, labels = toy.synthetic_images(60, N_CLASSES, seed=1)
    checkpoint = toy.pretrain_tiny_clip(
        images, labels, CLASSES, config_path=folder / "tiny-clip.json", checkpoint_path=folder / "tiny.pt", steps=200
    )
    return TinyClip(folder / "tiny-clip.json", checkpoint)


def make_noisy_folder(root: Path, *, per_class: int = 40, rate: float = 0.3, seed: int = 2) -> NoisyFolder:
    images, labels = toy.synthetic_images(per_class, N_CLASSES, seed=seed)
    noisy = toy.plant_noise(labels, N_CLASSES, rate, kind="symmetric", seed=seed + 1)
    paths = toy.write_image_folder(root, images, noisy, CLASSES)
    return NoisyFolder(root, {p: CLASSES[int(t)] for p, t in zip(paths, labels, strict=True)})


def fails(result, code: int, *fragments: str) -> str:
    """A CLI run (typer's CliRunner) that failed with ``code`` and one ``error: `` line holding ``fragments``."""
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and len(message.splitlines()) == 1, message
    assert "rerun with --debug" not in message and "Traceback" not in result.output, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def detected_and_trained(tiny_clip: TinyClip, base: Path, *, seed: int) -> tuple[Path, Path, Path]:
    """A small noisy folder under ``base``, its ``detect --quick`` results and a model trained for one epoch."""
    import deft_clean

    noisy = make_noisy_folder(base / "data", per_class=8, rate=0.2, seed=seed)
    results = base / "results.parquet"
    deft_clean.detect(noisy.root, out=results, quick=True, **tiny_clip.options())
    model = base / "model"
    deft_clean.train(
        noisy.root, results=results, out=model, epochs=1, device="cpu", num_workers=0, quiet=True, hflip=False
    )
    return noisy.root, results, model


@pytest.fixture(scope="session")
def noisy_folder(tmp_path_factory: pytest.TempPathFactory) -> NoisyFolder:
    return make_noisy_folder(tmp_path_factory.mktemp("noisy") / "data")


@pytest.fixture()
def small_folder(tmp_path: Path) -> Path:
    """A clean 3-class folder of 4 images each, for input-handling tests."""
    images, labels = toy.synthetic_images(4, 3, seed=5)
    toy.write_image_folder(tmp_path / "data", images, labels, ["cat", "dog", "sea_lion"])
    return tmp_path / "data"


def write_table(folder: Path, rows: list[dict], name: str = "data.csv") -> Path:
    """A CSV of ``rows`` (path, label, ...) in ``folder``."""
    import pandas as pd

    table = folder / name
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def folder_rows(root: Path) -> list[dict]:
    """The images of an image folder as table rows: path relative to ``root``, label = class folder."""
    return [{"path": p.relative_to(root).as_posix(), "label": p.parent.name} for p in sorted(root.rglob("*.png"))]


def collapse_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the learned prompts predict class 0 for every image (a collapse the detector must catch)."""
    from deft_clean.detecting import passes

    real = passes.score_samples

    def collapsed(*args, **kwargs):
        scores = real(*args, **kwargs)
        scores.predicted_index[:] = 0
        return scores

    monkeypatch.setattr(passes, "score_samples", collapsed)
