"""deft-clean report: counts equal the Parquet's, labels stay text, the HTML page is self-contained."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deft_clean.cli.app import app
from deft_clean.outputs.html_report import write_html
from deft_clean.outputs.summary import summarize
from tests.review_data import CLASSES, HOSTILE, Review, make_review

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # no wrapping or truncation in rich tables


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


def expected_counts(results: Path) -> dict:
    """Counts computed straight from the Parquet, independently of deft_clean.outputs.terminal_report."""
    frame = pd.read_parquet(results)
    usable = frame["status"] == "ok"
    flagged = usable & ~frame["is_clean"]
    return {
        "samples": len(frame),
        "usable": int(usable.sum()),
        "flagged": int(flagged.sum()),
        "unusable": int((~usable).sum()),
        "per_class": {
            c: (int((frame["label"] == c).sum()), int((flagged & (frame["label"] == c)).sum())) for c in CLASSES
        },
        "pairs": frame[flagged].groupby(["label", "predicted_label"]).size().to_dict(),
        "flagged_frame": frame[flagged],
    }


def table_rows(output: str) -> list[list[str]]:
    """Cells of every rich table row in the output, whichever box characters were used."""
    lines = [line for line in output.splitlines() if "│" in line or "|" in line]
    return [[cell.strip() for cell in re.split(r"[│┃|]", line)[1:-1]] for line in lines]


def test_summary_counts_match_parquet(review):
    want = expected_counts(review.results)
    data = summarize(review.frame, {"classes": CLASSES}, top=3)
    assert (data.samples, data.usable, data.flagged, data.unusable) == (
        want["samples"],
        want["usable"],
        want["flagged"],
        want["unusable"],
    )
    assert data.flagged == 5 and data.unusable == 1  # what review_data planted
    per_class = {r["class"]: (r["samples"], r["flagged"]) for r in data.per_class.to_dict("records")}
    assert per_class == want["per_class"]
    assert {(r["given"], r["suggested"]): r["count"] for r in data.pairs.to_dict("records")} == want["pairs"]
    assert list(data.suspicious["p_clean"]) == sorted(want["flagged_frame"]["p_clean"])[:3]


def test_terminal_report(review):
    result = runner.invoke(app, ["report", str(review.results), "--top", "3"], env=WIDE)
    assert result.exit_code == 0, result.output
    want = expected_counts(review.results)
    rows = table_rows(result.stdout)
    pct = f"{100 * want['flagged'] / want['usable']:.1f}"
    assert [str(v) for v in (want["samples"], want["usable"], want["flagged"], pct, want["unusable"])] in rows
    for name, (samples, flagged) in want["per_class"].items():
        assert any(r[:3] == [name, str(samples), str(flagged)] for r in rows), name  # "[x]" is not markup
    for (given, suggested), count in want["pairs"].items():
        assert [given, suggested, str(count)] in rows
    lowest = want["flagged_frame"].sort_values("p_clean").iloc[0]
    first = [lowest["path"], lowest["label"], lowest["predicted_label"], f"{lowest['p_clean']:.3f}"]
    assert first in [r[:4] for r in rows]  # then "why flagged"
    assert "3 most suspicious" in result.stdout


def test_quiet_report_prints_nothing(review, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(review.results), "--html", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and out.is_file()


def html_counts(page: str) -> dict:
    def number(id_: str) -> int:
        return int(re.search(rf'id="{id_}">(\d+)<', page).group(1))

    rows = re.findall(
        r'<tr data-class="([^"]*)"><td>.*?</td><td class="n samples">(\d+)</td>'
        r'<td class="n flagged">(\d+)</td>',
        page,
    )
    return {
        "samples": number("n-samples"),
        "usable": number("n-usable"),
        "flagged": number("n-flagged"),
        "unusable": number("n-unusable"),
        "per_class": {name: (int(s), int(f)) for name, s, f in rows},
        "cards": len(re.findall(r'<figure class="card"', page)),  # rendered by the page script
        "rows": len(review_rows(page)),  # flagged rows in the page's review data
        "thumbnails": page.count("data:image/jpeg;base64,"),
        "histogram": sum(int(n) for n in re.findall(r'<g class="bin" data-count="(\d+)"', page)),
        "heatmap": sum(int(n) for n in re.findall(r'<td data-given="[^"]*"[^>]*>(\d+)<', page)),
    }


def thumbnails(page: str) -> list[str]:
    found = re.search(r'<script type="application/json" id="review-thumbs">(.*?)</script>', page, re.S)
    return [uri.split(",", 1)[1] for uri in json.loads(found.group(1))] if found else []


def review_rows(page: str) -> list:
    found = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))["rows"] if found else []


def test_html_counts_escaping_and_self_contained(review, tmp_path):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(review.results), "--html", str(out), "--top", "4"], env=WIDE)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    want = expected_counts(review.results)
    got = html_counts(page)
    assert {k: got[k] for k in ("samples", "usable", "flagged", "unusable")} == {
        k: want[k] for k in ("samples", "usable", "flagged", "unusable")
    }
    assert {escape(k): v for k, v in want["per_class"].items()} == got["per_class"]
    assert got["rows"] == want["flagged"] and got["thumbnails"] == want["flagged"]  # every flagged row has its image
    assert len(thumbnails(page)) == want["flagged"]  # in their own block, parsed when a page needs them
    assert got["histogram"] == want["usable"] and got["heatmap"] == want["flagged"]
    # Every label is text: the hostile class never appears unescaped, not even in an attribute.
    assert HOSTILE not in page and escape(HOSTILE) in page
    # Self-contained: thumbnails are data URIs, nothing points at the network.
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "default-src 'none'" in page
    assert out.stat().st_size < 100_000


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    # Chromium's crash reporter and dconf write under HOME whatever the profile: give them the temp folder too.
    home = {"HOME": str(profile), "XDG_CONFIG_HOME": str(profile / "config"), "XDG_CACHE_HOME": str(profile / "cache")}
    env = {**os.environ, **home}
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=60, env=env)


def test_html_in_headless_chromium(review, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    out = tmp_path / "report.html"
    write_html(review.frame, {"classes": CLASSES, "dataset": str(review.root)}, out, top=50)
    # Open it filtered on the hostile class: the filter's JS runs and the value stays a string.
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", f"{out.as_uri()}#class={quote(HOSTILE)}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []  # no script errors, no blocked loads (CSP violations log here too)
    page = dom.stdout
    assert 'data-ready="1"' in page  # the page script ran to its end
    assert not re.search(r"<img[^>]*onerror", page)  # the hostile label became no element
    want = expected_counts(review.results)
    got = html_counts(page)
    assert {k: got[k] for k in ("samples", "flagged", "unusable")} == {
        k: want[k] for k in ("samples", "flagged", "unusable")
    }
    flagged = want["flagged_frame"]
    hostile = int(((flagged["label"] == HOSTILE) | (flagged["predicted_label"] == HOSTILE)).sum())
    assert int(re.search(r'id="n-shown">(\d+)<', page).group(1)) == hostile
    assert got["cards"] == hostile  # the filtered view is rendered, the other rows are not

    shot = tmp_path / "report.png"
    result = run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_for_100k_rows_is_quick_and_small(tmp_path):
    n, rng = 100_000, np.random.default_rng(0)
    classes = [f"class_{i}" for i in range(100)]
    label = rng.integers(0, 100, n)
    predicted = np.where(rng.random(n) < 0.2, rng.integers(0, 100, n), label)
    p_clean = rng.random(n).astype(np.float32)
    frame = pd.DataFrame(
        {
            "path": [f"class_{k}/{i}.jpg" for i, k in enumerate(label)],
            "label": np.array(classes)[label],
            "p_clean": pd.array(p_clean, dtype="Float32"),
            "is_clean": p_clean > 0.5,
            "predicted_label": np.array(classes)[predicted],
            "p_predicted": pd.array(rng.random(n).astype(np.float32), dtype="Float32"),
            "status": np.where(np.arange(n) % 1000 == 0, "unreadable: OSError: truncated", "ok"),
        }
    )
    out = write_html(frame, {"classes": classes}, tmp_path / "big.html", top=200, dataset_root=tmp_path)
    page = out.read_text(encoding="utf-8")
    got = html_counts(page)
    usable = frame["status"] == "ok"
    assert got["samples"] == n and got["flagged"] == int((usable & ~frame["is_clean"]).sum())
    assert got["rows"] == got["flagged"] and got["histogram"] == int(usable.sum())
    assert got["heatmap"] == got["flagged"]  # classes beyond the top 20 are pooled, not lost
    assert out.stat().st_size < 100 * got["flagged"]  # no reasons here: about 55 bytes a row


def test_report_after_dataset_moved(review, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(review.root, moved)
    out = tmp_path / "r.html"
    # Without --dataset the page still renders, with placeholders instead of thumbnails.
    result = runner.invoke(app, ["report", str(review.results), "--html", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "data:image/jpeg" not in out.read_text() and len(review_rows(out.read_text())) == 5
    args = ["report", str(review.results), "--html", str(out), "--dataset", str(moved), "-q", "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_text().count("data:image/jpeg") == 5


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [(["--top", "-1"], 2, "--top"), (["--dataset", "/nonexistent/x"], 2, "--dataset not found")],
)
def test_report_usage_errors(review, args, code, fragment):
    result = runner.invoke(app, ["report", str(review.results), *args])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and fragment in result.stderr


def test_report_on_a_non_results_file(tmp_path):
    bogus = tmp_path / "x.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(bogus)
    result = runner.invoke(app, ["report", str(bogus)])
    assert result.exit_code == 1 and "not a deft-clean results file" in result.stderr
