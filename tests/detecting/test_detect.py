"""Phase 1 end to end on a tiny CLIP: planted noise is found, outputs round-trip, runs reproduce."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import deft_clean
from deft_clean.outputs.results import REQUIRED_COLUMNS


@pytest.fixture(scope="module")
def detected(tiny_clip, noisy_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("detect") / "results.parquet"
    result = deft_clean.detect(noisy_folder.root, out=out, seed=0, **tiny_clip.options())
    return result, out


def clean_set_scores(selected: np.ndarray, truly_clean: np.ndarray) -> tuple[float, float]:
    hits = np.sum(selected & truly_clean)
    return hits / max(selected.sum(), 1), hits / truly_clean.sum()


def test_finds_planted_symmetric_noise(detected, noisy_folder):
    result, _ = detected
    frame = result.frame
    truth = noisy_folder.truly_clean(frame)
    assert 0.25 < 1 - truth.mean() < 0.35  # 30% planted noise
    precision, recall = clean_set_scores(frame["is_clean"].to_numpy(), truth)
    assert precision >= 0.9, f"clean-set precision {precision:.3f}"
    assert recall >= 0.9, f"clean-set recall {recall:.3f}"
    # the suggested label recovers the true class of most flagged samples
    flagged = ~frame["is_clean"].to_numpy() & ~truth
    true_labels = frame["path"].map(noisy_folder.true_label).to_numpy()
    assert np.mean(frame["predicted_label"].to_numpy()[flagged] == true_labels[flagged]) >= 0.8


def test_a_flag_is_a_label_more_likely_wrong_than_right(detected, noisy_folder):
    """p_clean is the probability that the label is right: every flag has p_clean < 0.5, every usable row below
    0.5 is flagged (nothing is withheld or cleared here), and the estimated noise rate is the planted one."""
    result, _ = detected
    frame = result.frame
    p = frame["p_clean"].to_numpy(dtype=float, na_value=np.nan)
    flagged = ~frame["is_clean"].to_numpy()
    assert (p[flagged] < 0.5).all() and (p[~flagged] >= 0.5).all()
    assert (frame["predicted_index"][flagged] != frame["label_index"][flagged]).all()  # never "four -> four"
    truth = noisy_folder.truly_clean(frame)
    assert abs(result.metadata["selection"]["estimated_noise"] - (1 - truth.mean())) < 0.05
    assert abs(flagged.mean() - (1 - truth.mean())) < 0.05


def test_strong_evidence_is_reliable_and_nothing_is_withheld(detected):
    evidence = detected[0].metadata["evidence"]
    assert evidence["reliable"] is True and evidence["flags_withheld"] == 0
    assert not detected[0].frame["withheld"].any()
    assert 0.2 <= evidence["label_noise"] <= 0.4  # 30% planted
    assert evidence["expected_flag_precision"] >= 0.8
    for entry in evidence["per_class"]:
        assert entry["noise_interval"][0] <= entry["noise"] <= entry["noise_interval"][1]


def test_p_clean_ranks_noisy_below_clean(detected, noisy_folder):
    frame = detected[0].frame
    truth = noisy_folder.truly_clean(frame)
    p = frame["p_clean"].to_numpy(dtype=float)
    # AUC by pairwise comparison
    auc = np.mean(p[truth][:, None] > p[~truth][None, :])
    assert auc >= 0.9


def test_parquet_round_trips_with_schema_and_metadata(detected, noisy_folder, tiny_clip):
    result, out = detected
    frame, metadata = deft_clean.load_results(out)
    assert list(frame.columns) == list(REQUIRED_COLUMNS)
    pd.testing.assert_frame_equal(frame, result.frame)
    assert metadata == result.metadata
    assert metadata["classes"] == sorted(set(noisy_folder.true_label.values()))
    assert metadata["model"] == str(tiny_clip.config)
    assert metadata["pretrained"] == str(tiny_clip.checkpoint)
    assert metadata["options"]["epochs"] == 10 and metadata["seed"] == 0
    assert metadata["deft_clean_version"] == deft_clean.__version__
    assert "created" in metadata
    schema = pq.read_schema(out)
    assert str(schema.field("p_clean").type) == "float"
    assert str(schema.field("is_clean").type) == "bool"
    # listing order: class folders, then file names
    assert frame["path"].tolist() == sorted(frame["path"], key=lambda p: (p.split("/")[0], p))
    flagged = ~frame["is_clean"]
    assert frame.loc[flagged, "flag_reason"].notna().all() and frame.loc[~flagged, "flag_reason"].isna().all()


def test_same_seed_same_scores(tiny_clip, noisy_folder, detected):
    again = deft_clean.detect(noisy_folder.root, seed=0, **tiny_clip.options())
    np.testing.assert_array_equal(
        again.frame["p_clean"].to_numpy(dtype=float), detected[0].frame["p_clean"].to_numpy(dtype=float)
    )


def test_threshold_rule_is_pure_p_clean(tiny_clip, noisy_folder):
    """The paper's dual-prompt rule (``--selection deft``) with the threshold rule flags exactly p_clean <= 0.5 (the
    fused rule flags by per-class counts, so a row just under 0.5 may stand there)."""
    result = deft_clean.detect(
        noisy_folder.root,
        selection="deft",
        clean_rule="threshold",
        epochs=2,
        **{k: v for k, v in tiny_clip.options().items() if k != "epochs"},
    )
    frame = result.frame
    assert (frame["is_clean"] == (frame["p_clean"] > 0.5)).all()


def test_a_default_run_decodes_every_row_once(tiny_clip, noisy_folder, monkeypatch):
    """One decode per image per run: training, the watcher, scoring and health read what the first pass kept."""
    from deft_clean.inputs import decode

    real, decoded = decode._decode, []

    def counting(file, draft_size):
        decoded.append(1)
        return real(file, draft_size)

    monkeypatch.setattr(decode, "_decode", counting)
    options = {**tiny_clip.options(epochs=3), "num_workers": 0, "early_stop": False}
    result = deft_clean.detect(noisy_folder.root, seed=0, **options)
    assert len(result.history) == 3  # the prompts trained: three epochs and a watcher over the same rows
    assert len(decoded) == len(result.frame), f"{len(decoded)} decodes for {len(result.frame)} rows"
    assert "duplicate_group" in result.frame  # health ran, on the kept thumbnails and hashes
    timings = result.metadata["timings"]
    assert set(timings) >= {"decode", "forward", "training", "selection", "health"}
    assert all(v >= 0 for v in timings.values()) and timings["training"] > 0
    prompts = result.metadata["prompts"]
    assert prompts["outcome"] in ("learned", "fallback") and prompts["epochs"] == 3
    assert (prompts["reason"] == "") == (prompts["outcome"] == "learned")


def test_quick_records_its_prompts_outcome(tiny_clip, noisy_folder):
    result = deft_clean.detect(noisy_folder.root, seed=0, quick=True, health=False, **tiny_clip.options())
    assert result.metadata["prompts"]["outcome"] == "quick" and result.metadata["prompts"]["adaptation"] == "none"
    assert result.metadata["timings"]["training"] == 0.0 and result.metadata["timings"]["health"] == 0.0
    assert result.evidence.kept.memory is None  # no later pass reads pixels: only thumbnails and hashes are kept
