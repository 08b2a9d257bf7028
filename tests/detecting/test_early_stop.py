"""Prompt training that stops when it has learned: epoch budget, per-epoch judgement, threads that fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deft_clean
from deft_clean.detecting import early_stop as monitor_module
from deft_clean.detecting.early_stop import TrainingMonitor, epoch_budget, stratified_order
from deft_clean.run.cores import cgroup_cores, plan_cpu
from deft_clean.run.errors import UsageError
from deft_clean.run.options import DetectConfig

from ..detecting.test_domain_shift import defaults, pair_shifted  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("vpt_tokens", "advice"),
    [(20, "try --vpt-tokens 4: 20 prompt tokens a layer crowd this model's 16 image patches"), (4, "try a lower lr")],
    ids=["crowded", "lr"],
)
def test_a_collapse_stops_training_at_once_and_says_so(tiny_clip, pair_shifted, monkeypatch, vpt_tokens, advice):  # noqa: F811
    """Forced collapse: the learned prompts predict class 0 for every row from the first batch on. The warning's
    advice: fewer visual prompt tokens where the default 20 crowd the tiny model's 16 patch tokens, else the lr."""
    real = TrainingMonitor.judge

    def collapsed(self, epoch, previous, predicted, clean):
        return real(self, epoch, previous, np.zeros_like(predicted), clean)

    monkeypatch.setattr(TrainingMonitor, "judge", collapsed)
    result = deft_clean.detect(pair_shifted.root, **defaults(tiny_clip), vpt_tokens=vpt_tokens)  # 10 epochs at most
    assert len(result.history) <= 2
    assert result.history[-1]["stop"] == "collapse"
    assert result.metadata["text_evidence"] == "zero-shot"
    lines = [line for line in result.metadata["warnings"] if "collapsed" in line]
    assert len(lines) == 1 and "training stopped" in lines[0] and "epoch 2" in lines[0], lines
    assert advice in lines[0], lines
    assert result.frame["sim_pos"].isna().all()  # no scoring pass for dropped prompts


def test_collapse_advice_counts_prompt_tokens_against_patch_tokens():
    from deft_clean.detecting.selection import LOWER_LR, collapse_advice

    assert collapse_advice(16, 20).startswith("try --vpt-tokens 4:")
    assert collapse_advice(49, 20) == LOWER_LR  # ViT-B/32 at 224 px: 20 of 49 is not crowded
    assert collapse_advice(196, 20) == LOWER_LR and collapse_advice(None, 20) == LOWER_LR
    assert collapse_advice(4, 20).startswith("try --vpt-tokens 1:")


def test_the_papers_schedule_stays_available(tiny_clip, pair_shifted):  # noqa: F811
    options = {**tiny_clip.options(epochs=3), "early_stop": False, "images_per_epoch": "all"}
    result = deft_clean.detect(pair_shifted.root, **options)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(h["stop"] == "" for h in result.history)
    assert all(h["images"] == len(result.frame) for h in result.history)
    assert all(h["agreement"] is not None and 0 <= h["agreement"] <= 1 for h in result.history)
    assert result.history[-1]["clean_change"] is not None


def test_a_budget_trains_each_epoch_on_a_stratified_sample(tiny_clip, pair_shifted):  # noqa: F811
    options = {**tiny_clip.options(epochs=2), "early_stop": False, "images_per_epoch": 100}
    result = deft_clean.detect(pair_shifted.root, **options)
    assert [h["images"] for h in result.history] == [100, 100]


def test_stratified_order_covers_every_class_and_redraws_the_same_from_a_seed():
    labels = np.repeat(np.arange(5), [1000, 500, 100, 10, 2])
    order = stratified_order(labels, 300, 5, torch.Generator().manual_seed(0))
    counts = np.bincount(labels[order], minlength=5)
    assert 280 <= len(order) <= 340 and len(set(order)) == len(order)
    assert counts[4] == 2 and counts[3] == 10 and counts[2] >= 30  # rare classes covered
    assert counts[0] > counts[1] > counts[2]  # otherwise in proportion
    again = stratified_order(labels, 300, 5, torch.Generator().manual_seed(0))
    assert order == again
    assert order != stratified_order(labels, 300, 5, torch.Generator().manual_seed(1))


def test_epoch_budget():
    labels = np.arange(100_000) % 10
    assert epoch_budget("all", labels, 10) is None
    assert epoch_budget("auto", labels[:500], 10) is None  # a small dataset trains on every row
    assert epoch_budget("auto", labels, 10) == max(
        monitor_module.IMAGES_PER_CLASS * 10, monitor_module.MIN_EPOCH_IMAGES
    )
    assert epoch_budget("auto", np.arange(300_000) % 1000, 1000) == monitor_module.IMAGES_PER_CLASS * 1000
    assert epoch_budget(5000, labels, 10) == 5000
    assert DetectConfig(images_per_epoch="5000").images_per_epoch == 5000
    for bad in ("some", 0, -3, "1.5", True):
        with pytest.raises(UsageError, match="images_per_epoch"):
            DetectConfig(images_per_epoch=bad)


def test_nothing_moving_stops_after_the_warmup():
    labels = np.arange(4000) % 10
    usable = np.ones(4000, dtype=bool)
    judge = TrainingMonitor(labels, usable, labels, warmup_epochs=1, early_stop=True, seed=0)
    assert 512 <= len(judge.watch) <= 530 and np.bincount(labels[judge.watch]).min() >= 50  # stratified
    m = len(judge.watch)
    right, clean = labels[judge.watch], np.ones(m, dtype=bool)
    checks = []
    for epoch in (1, 2, 3):
        checks.append(judge.judge(epoch, checks[-1] if checks else None, right, clean))
    assert [c.stop for c in checks] == ["", "still", "still"]
    assert checks[1].clean_change == 0.0 and checks[1].agreement == 1.0
    patient = TrainingMonitor(labels, usable, labels, warmup_epochs=1, early_stop=False, seed=0)
    first = patient.judge(1, None, right, clean)
    assert patient.judge(2, first, right, clean).stop == ""  # the paper's schedule: no early stop
    wrong = np.zeros(m, dtype=np.int64)
    down = patient.judge(3, patient.judge(2, first, wrong, clean), wrong, clean)
    assert down.stop == "collapse"  # a collapse stops even then


def test_threads_and_workers_fit_the_cores(tmp_path):
    assert plan_cpu(None, None, cores=2) == (0, 2)
    assert plan_cpu(None, None, cores=1) == (0, 1)
    assert plan_cpu(None, None, cores=16) == (8, 8)
    assert plan_cpu(None, None, cores=6) == (3, 3)
    assert plan_cpu(2, None, cores=2) == (2, 1)  # a given value is kept; the other fits around it
    assert plan_cpu(None, 4, cores=16) == (8, 4)
    assert plan_cpu(0, 3, cores=2) == (0, 3)
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cgroup_cores(quota) == 1.5
    quota.write_text("max 100000\n")
    assert cgroup_cores(quota) is None or cgroup_cores(quota) > 0  # v1 files may still give a quota
    with pytest.raises(UsageError, match="threads"):
        DetectConfig(threads=0)


def test_the_collapse_floor_is_a_share_of_zero_shots_agreement_with_the_image_evidence():
    """Prompts still learning under heavy noise agree with the image evidence less than zero-shot does, but not
    a third as much: they train on; prompts predicting one class fall below COLLAPSE_SHARE of it and stop."""
    labels = np.arange(2000) % 10
    usable = np.ones(2000, dtype=bool)
    image = labels.copy()  # the class the image probe gives each row
    zero_shot = np.where(np.arange(2000) % 5 == 0, (labels + 1) % 10, labels)  # agrees on 80% of the rows
    judge = TrainingMonitor(labels, usable, image, zero_shot, warmup_epochs=1, early_stop=False, seed=0)
    assert judge.floor == pytest.approx(monitor_module.COLLAPSE_SHARE * 0.8, abs=0.03)
    rows = judge.watch
    learning = np.where(rows % 3 == 0, (labels[rows] + 2) % 10, labels[rows])  # 67%: below 0.8, above the floor
    clean = np.ones(len(rows), dtype=bool)
    first = judge.judge(1, None, learning, clean)
    assert judge.judge(2, first, learning, clean).stop == ""
    one_class = np.zeros(len(rows), dtype=np.int64)
    assert judge.judge(3, judge.judge(2, first, one_class, clean), one_class, clean).stop == "collapse"


def _behind_monitor(**options):
    """2,000 rows, 10 classes, 20% of them mislabelled; the image evidence knows every row's true class and
    zero-shot agrees with it on 85% of the rows."""
    n = 2000
    truth = np.arange(n) % 10
    labels = np.where(np.arange(n) % 5 == 0, (truth + 1) % 10, truth)
    zero_shot = np.where(np.arange(n) % 7 == 0, (truth + 3) % 10, truth)
    monitor = TrainingMonitor(
        labels, np.ones(n, dtype=bool), truth, zero_shot, warmup_epochs=1, early_stop=True, seed=0, **options
    )
    return monitor, truth[monitor.watch], labels[monitor.watch]


def test_prompts_clearly_behind_zero_shot_stop_training():
    """Prompts that agree with the image evidence on 70% of the rows where zero-shot agrees on 85%, and whose
    extra clean rows are half mislabelled, stop: the end-of-run judgement would choose zero-shot anyway."""
    monitor, truth, labels = _behind_monitor(epochs=10, behind_stop=True)
    m = len(truth)
    behind = np.where(np.arange(m) % 10 < 3, (truth + 2) % 10, truth)  # 70% agreement
    clean = np.arange(m) % 2 == 0  # the dual-prompt rule keeps half the rows, mislabelled ones among them
    moved = ~clean  # another half each epoch: the set is not still
    first = monitor.judge(1, None, behind, clean)
    second = monitor.judge(2, first, behind, moved)
    assert second.stop == ""  # the first epoch after the warm-up is never judged behind: it moves little
    check = monitor.judge(3, second, behind, clean)  # no gain since epoch 2: it will not catch up
    assert check.stop == "behind", monitor.behind
    assert monitor.behind["learned_agreement"] < monitor.behind["zero_shot_agreement"]
    assert monitor.behind["added_confirmed"] < monitor.behind["seed_confirmed"]


@pytest.mark.parametrize(
    "case", ["catching up", "as good", "adds confirmed rows", "paper schedule", "deft selection", "warm-up"]
)
def test_prompts_that_may_still_win_train_on(case):
    """Not behind: prompts gaining fast enough to catch up in the epochs left, prompts as good as zero-shot,
    prompts whose added rows the image evidence confirms, and runs without the check (--no-early-stop,
    --selection deft) or still in the warm-up."""
    options = {"epochs": 10, "behind_stop": case != "deft selection"}
    monitor, truth, labels = _behind_monitor(**options)
    if case == "paper schedule":
        monitor.early_stop = monitor.behind_stop = False
    m = len(truth)
    behind = np.where(np.arange(m) % 10 < 3, (truth + 2) % 10, truth)  # 70%
    start = np.where(np.arange(m) % 10 < 5, (truth + 2) % 10, truth)  # 50% one epoch before: +20 points
    clean = np.arange(m) % 2 == 0
    first = monitor.judge(1, None, behind, clean)
    second = monitor.judge(2, first, start if case == "catching up" else behind, ~clean)
    predicted = truth if case == "as good" else behind
    if case == "adds confirmed rows":
        clean = labels == truth  # every row they add is correctly labelled
    check = second if case == "warm-up" else monitor.judge(3, second, predicted, clean)
    assert check.stop != "behind", (case, monitor.behind)


def _far_behind(self, epoch, previous, predicted, clean):
    """The learned prompts trail the image evidence (80% agreement); half the seed clean each epoch: not still."""
    anchor, labels = self.anchor[self.watch], self.labels[self.watch]
    worse = np.where(np.arange(len(predicted)) % 5 == 0, (anchor + 1) % 3, anchor)
    seed = self.zero_shot[self.watch] == labels
    clean = seed & (np.arange(len(seed)) % 2 == epoch % 2)  # adds no row
    return REAL_JUDGE(self, epoch, previous, worse, clean)


def _still_and_trailing(self, epoch, previous, predicted, clean):
    """Three watched rows worse than zero-shot (not the "behind" margin); still from epoch 3 on."""
    anchor, labels, zero = self.anchor[self.watch], self.labels[self.watch], self.zero_shot[self.watch]
    worse = zero.copy()
    missed = np.flatnonzero(zero == anchor)[:3]
    worse[missed] = (anchor[missed] + 1) % 3
    seed = zero == labels  # adds no row to the seed
    clean = seed & (np.arange(len(seed)) % 2 == min(epoch, 2) % 2)  # moves until epoch 2, then stands still
    return REAL_JUDGE(self, epoch, previous, worse, clean)


REAL_JUDGE = TrainingMonitor.judge


@pytest.mark.parametrize(
    ("judge", "stop", "said"),
    [(_far_behind, "behind", "training stopped there"), (_still_and_trailing, "still", "nothing moved any more")],
)
def test_a_run_zero_shot_would_win_skips_the_scoring_pass_and_says_why(
    tiny_clip,  # noqa: F811
    pair_shifted,  # noqa: F811
    monkeypatch,
    judge,
    stop,
    said,
):
    """Forced: the learned prompts trail zero-shot, far behind (stopped at epoch 3) or a little while nothing
    moves (still at epoch 3); the end-of-run judgement would choose zero-shot, so no scoring pass runs, zero-shot
    evidence is used and the reason (not a warning: nothing failed) is in the metadata."""
    monkeypatch.setattr(TrainingMonitor, "judge", judge)
    result = deft_clean.detect(pair_shifted.root, **defaults(tiny_clip))
    assert result.history[-1]["stop"] == stop and len(result.history) == 3, result.history
    prompts = result.metadata["prompts"]
    assert prompts["outcome"] == "fallback" and said in prompts["reason"]
    assert prompts["learned_agreement"] < prompts["zero_shot_agreement"]
    assert not [line for line in result.metadata["warnings"] if "learned prompts" in line]
    assert result.metadata["text_evidence"] == "zero-shot"
    assert result.frame["sim_pos"].isna().all()  # no scoring pass
