"""The command line's help: fast (no torch import), flags shown as flags, options in panels, clear metavars."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from deft_clean.cli.app import app

runner = CliRunner()

# Runs the CLI in a fresh interpreter and reports whether torch got imported on the way.
PROBE = """
import sys
from deft_clean.cli.app import main
try:
    main({args!r})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["detect", "--help"], 0),
        (["train", "--help"], 0),
        (["detect"], 2),  # missing argument: a usage error
        (["detect", "data", "--epochs", "many"], 2),
        (["--version"], 0),
    ],
)
def test_help_and_usage_errors_do_not_import_torch(args, code):
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120, check=False
    )
    last = probe.stderr.strip().splitlines()[-1]
    assert last == f"NO-TORCH {code}", probe.stderr


def test_import_deft_clean_is_lazy_but_complete():
    code = (
        "import sys, deft_clean; assert 'torch' not in sys.modules; "
        "print(deft_clean.__version__, callable(deft_clean.detect), deft_clean.DetectResult.__name__, "
        "'detect' in dir(deft_clean))"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert probe.stdout.split() == ["0.1.0", "True", "DetectResult", "True"]


def help_text(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


def test_flags_are_shown_as_flags():
    text = help_text("train")
    line = next(line for line in text.splitlines() if "--clean-only" in line)
    assert "<bool>" not in line and "Train on is_clean rows only." in line
    for command in ((), ("detect",), ("train",), ("predict",), ("report",), ("export",)):
        assert "<bool>" not in help_text(*command)
    assert "--no-debug" not in help_text("detect")


def test_detect_options_are_grouped_into_panels():
    text = help_text("detect")
    panels = [line.split("─ ")[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert panels == ["Arguments", "Input", "Model", "Training", "Output", "Run"]
    model_panel = text.split("─ Model ")[1].split("─ Training ")[0]
    assert "--pretrained" in model_panel and "--quick" in model_panel and "--epochs" not in model_panel


def test_usage_lines_use_plain_metavars():
    detect = help_text("detect")
    assert "detect [OPTIONS] DATASET" in detect and "{dataset}" not in detect
    assert "--out" in detect and "PATH" in detect and "--class-names" in detect
    predict = help_text("predict")
    assert "predict [OPTIONS] MODEL_DIR INPUTS..." in predict
    assert "list[Path]" not in predict and "<path>..." in predict


def test_detect_says_loading_model_and_ends_with_time_unusable_and_next_command(tiny_clip, small_folder, tmp_path):
    out = tmp_path / "results.parquet"
    args = ["detect", str(small_folder), "--out", str(out), "--quick", *tiny_clip.cli_args()[:-1]]  # not --quiet
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"loading model {tiny_clip.config}" in result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("done in ") and lines[-2].endswith("s, 0 unusable file(s)")
    assert lines[-1] == f"next: deft-clean report {out} --html {tmp_path / 'report.html'}"

    quiet = runner.invoke(app, [*args, "--quiet", "--out", str(tmp_path / "quiet.parquet")])
    assert quiet.exit_code == 0 and quiet.stdout == "" and "loading model" not in quiet.stderr
