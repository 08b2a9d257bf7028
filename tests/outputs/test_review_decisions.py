"""The review loop: decisions CSV validated and applied by export/train/report, and made in a real browser."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deft_clean.cli.app import app
from deft_clean.outputs.export import plan_export
from deft_clean.outputs.html_report import write_html
from deft_clean.outputs.review_decisions import read_decisions
from deft_clean.run.errors import DataError
from deft_clean.training.train_rows import select_rows
from tests.review_data import CLASSES, HOSTILE, Review, make_review

runner = CliRunner()


@pytest.fixture()
def review(tmp_path: Path) -> Review:
    return make_review(tmp_path)


def flagged_paths(review: Review) -> list[str]:
    """Flagged paths, lowest p_clean first (the page's default order)."""
    return list(review.frame[review.flagged].sort_values("p_clean")["path"])


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def exported(out: Path) -> set[tuple[str, str]]:
    """(label folder, source path) of every symlink in an exported folder."""
    return {(p.relative_to(out).parts[0], str(p.resolve())) for p in out.rglob("*") if p.is_symlink()}


def expected_export(review: Review, decisions: dict[str, tuple[str, str]]) -> set[tuple[str, str]]:
    """What export --decisions must write, computed from the Parquet and the decisions alone."""
    want = set()
    for row in review.frame[review.usable].itertuples(index=False):
        source = str((review.root / row.path).resolve())
        if row.path in decisions:
            word, label = decisions[row.path]
            if word != "drop":
                want.add((label if word == "relabel" else row.label, source))
        elif row.is_clean:
            want.add((row.label, source))
    return want


def test_read_decisions_maps_words_to_rows(review, tmp_path):
    a, b, c = flagged_paths(review)[:3]
    csv = write_csv(tmp_path / "d.csv", ["path,decision,label", f"{a},keep,", f"{b},DROP,", f"{c},relabel,{HOSTILE}"])
    verdicts = read_decisions(csv, review.frame, {"classes": CLASSES})
    index = {p: i for i, p in enumerate(review.frame["path"])}
    assert verdicts.reviewed == 3 and verdicts.counts == {"keep": 1, "drop": 1, "relabel": 1}
    assert list(verdicts.keep[[index[a], index[b], index[c]]]) == [True, False, True]
    assert verdicts.label[index[a]] == review.frame.loc[index[a], "label"] and verdicts.label[index[c]] == HOSTILE


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (["path,decision,label", "nope/x.png,keep,"], "line 2: path 'nope/x.png' is not in the results"),
        (["path,decision,label", "{a},relabel,horse"], "line 2: unknown class 'horse'"),
        (["path,decision,label", "{a},keep,", "{a},drop,"], "line 3: path '{a}' is decided twice (first on line 2)"),
        (["path,decision,label", "{a},maybe,"], "line 2: decision must be one of keep, drop, relabel, got 'maybe'"),
        (["path,decision,label", "{a},relabel,"], "line 2: relabel needs a label"),
        (["path,decision,label", "{a},keep,{other}"], "use relabel"),
        (["path,decision,label", "cat/broken.png,keep,"], "line 2: 'cat/broken.png' is unusable"),
        (["file,verdict", "{a},keep"], "line 1: header must name the columns path,decision,label"),
    ],
)
def test_bad_decisions_file_is_one_clear_error(review, tmp_path, lines, fragment):
    a = flagged_paths(review)[0]
    given = review.frame.set_index("path").loc[a, "label"]
    other = next(c for c in CLASSES if c != given)
    csv = write_csv(tmp_path / "d.csv", [line.format(a=a, other=other) for line in lines])
    with pytest.raises(DataError, match="^" + str(csv)) as info:
        read_decisions(csv, review.frame, {"classes": CLASSES})
    assert fragment.format(a=a) in str(info.value)
    # The CLI prints it as one line on stderr.
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(review.results), "-o", str(out), "--decisions", str(csv)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and fragment.format(a=a) in result.stderr
    assert not out.exists()


def test_export_applies_decisions_over_automatic_verdict(review, tmp_path):
    a, b, c = flagged_paths(review)[:3]
    kept = review.frame[review.usable & review.frame["is_clean"]]["path"].iloc[0]  # a clean row a human drops
    decisions = {a: ("keep", ""), b: ("drop", ""), c: ("relabel", "cat"), kept: ("drop", "")}
    csv = write_csv(
        tmp_path / "d.csv", ["path,decision,label", *(f"{p},{w},{lab}" for p, (w, lab) in decisions.items())]
    )
    out = tmp_path / "out"
    # --relabel 0.9 would move some flagged rows automatically; the human decision on b and c still wins.
    args = ["export", str(review.results), "-o", str(out), "--decisions", str(csv), "--relabel", "0.9"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "4 human decisions applied" in result.stdout
    plan = plan_export(review.frame, relabel=0.9)
    auto = {p: lab for p, lab in zip(plan["path"], plan["label"], strict=True)}
    want = {(lab, str((review.root / p).resolve())) for p, lab in auto.items() if p not in decisions}
    want |= {(review.frame.set_index("path").loc[a, "label"], str((review.root / a).resolve()))}
    want |= {("cat", str((review.root / c).resolve()))}
    assert exported(out) == want


def test_report_counts_reviewed(review, tmp_path):
    a, b = flagged_paths(review)[:2]
    kept = review.frame[review.usable & review.frame["is_clean"]]["path"].iloc[0]
    csv = write_csv(tmp_path / "d.csv", ["path,decision,label", f"{a},keep,", f"{b},relabel,cat", f"{kept},drop,"])
    result = runner.invoke(app, ["report", str(review.results), "--decisions", str(csv)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "reviewed 2 of 5 flagged (1 keep, 1 drop, 1 relabel); 1 decisions on rows detect kept" in result.stdout


def test_terminal_report_says_why_flagged(review, tmp_path):
    from deft_clean.outputs.results import load_results, write_results

    frame, metadata = load_results(review.results)
    lowest = frame[review.flagged].sort_values("p_clean").index[0]
    frame.loc[lowest, "flag_reason"] = "looks like 'dog [x]' (image evidence 0.91)"
    results = write_results(frame, metadata, tmp_path / "why.parquet")
    result = runner.invoke(app, ["report", str(results), "--top", "3"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "why flagged" in result.stdout and "looks like 'dog [x]' (image evidence 0.91)" in result.stdout


def test_train_rows_follow_decisions(review, tmp_path):
    a, b, c = flagged_paths(review)[:3]
    kept = review.frame[review.usable & review.frame["is_clean"]]["path"].iloc[0]
    target = next(k for k in reversed(CLASSES) if k != review.frame.set_index("path").loc[c, "label"])
    csv = write_csv(
        tmp_path / "d.csv",
        ["path,decision,label", f"{a},keep,", f"{b},drop,", f"{c},relabel,{target}", f"{kept},drop,"],
    )
    verdicts = read_decisions(csv, review.frame, {"classes": CLASSES})
    index = {p: i for i, p in enumerate(review.frame["path"])}
    for clean_only in (True, False):
        rows, labels, n_relabelled = select_rows(
            review.frame, clean_only=clean_only, threshold=None, relabel=None, verdicts=verdicts, classes=CLASSES
        )
        auto, _, _ = select_rows(review.frame, clean_only=clean_only, threshold=None, relabel=None)
        chosen = dict(zip(rows.tolist(), labels.tolist(), strict=True))
        assert index[b] not in chosen and index[kept] not in chosen
        assert chosen[index[a]] == review.frame.loc[index[a], "label_index"]
        assert chosen[index[c]] == CLASSES.index(target) and n_relabelled == 1
        assert set(chosen) == (set(auto.tolist()) | {index[a], index[c]}) - {index[b], index[kept]}


def test_html_embeds_every_flagged_row_with_its_reason(tmp_path):
    review = make_review(tmp_path)
    frame = review.frame.copy()
    flagged = review.flagged
    frame.loc[flagged, "flag_reason"] = [f"looks like 'x' ({i})" for i in range(int(flagged.sum()))]
    out = write_html(frame, {"classes": CLASSES, "dataset": str(review.root)}, tmp_path / "r.html", top=2)
    page = out.read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") == int(flagged.sum())  # every flagged row has its thumbnail
    assert all(f"looks like 'x' ({i})" in page for i in range(int(flagged.sum())))
    assert '<option value="0">looks like</option>' in page  # the reason filter groups by wording
    assert HOSTILE not in page


# ----------------------------------------------------------------------------------------------------
# A real browser: headless Chromium driven by Selenium with Debian's chromium-driver.


def browser_or_skip() -> tuple[str, str]:
    """Paths of chromium and chromedriver. Missing: a failure under CI (which installs them), else a skip."""
    chromium, driver = shutil.which("chromium") or "", shutil.which("chromedriver") or ""
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = ""
    if chromium and driver:
        return chromium, driver
    message = "the browser test needs chromium, chromium-driver (apt) and selenium (the dev extra)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install them")
    pytest.skip(message)


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_or_skip()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = Options()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    home = tmp_path / "home"  # Chromium's crash reporter and dconf write under HOME whatever the profile
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "c"), "XDG_CACHE_HOME": str(home / "cache")}
    driver = webdriver.Chrome(service=Service(chromedriver, env=env), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting in the browser")


def card(driver, path: str):
    from selenium.webdriver.common.by import By

    return next(
        c for c in driver.find_elements(By.CSS_SELECTOR, "#cards .card") if c.get_attribute("data-path") == path
    )


def text(driver, id_: str) -> str:
    return driver.find_element("id", id_).text


def test_review_in_browser_then_export(review, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page = write_html(review.frame, {"classes": CLASSES, "dataset": str(review.root)}, tmp_path / "r.html", top=50)
    browser.get(page.as_uri())
    wait_for(lambda: browser.find_element(By.TAG_NAME, "html").get_attribute("data-ready") == "1")
    a, b, c, d, _ = flagged_paths(review)
    assert [x.get_attribute("data-path") for x in browser.find_elements(By.CSS_SELECTOR, "#cards .card")] == (
        flagged_paths(review)
    )
    card(browser, a).find_element(By.CSS_SELECTOR, "button.keep").click()
    card(browser, b).find_element(By.CSS_SELECTOR, "button.drop").click()
    row_c = review.frame.set_index("path").loc[c]
    target = next(k for k in CLASSES if k not in (row_c["label"], row_c["predicted_label"]))  # "any class"
    select = card(browser, c).find_element(By.CSS_SELECTOR, "select.relabel")
    select.click()  # fills the class list
    Select(select).select_by_value(target)
    card(browser, d).send_keys("a")  # keyboard: accept the suggested class
    assert text(browser, "n-reviewed") == "4" and text(browser, "n-review") == "5"

    browser.refresh()  # decisions survive a reload (localStorage)
    wait_for(lambda: browser.find_element(By.TAG_NAME, "html").get_attribute("data-ready") == "1")
    assert text(browser, "n-reviewed") == "4"
    assert card(browser, c).get_attribute("data-decision") == "relabel"
    Select(browser.find_element(By.ID, "decision-filter")).select_by_value("none")
    assert [x.get_attribute("data-path") for x in browser.find_elements(By.CSS_SELECTOR, "#cards .card")] == [
        flagged_paths(review)[4]
    ]
    # Click to enlarge, Escape to close.
    card(browser, flagged_paths(review)[4]).find_element(By.TAG_NAME, "img").click()
    assert browser.find_element(By.ID, "lightbox").is_displayed()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not browser.find_element(By.ID, "lightbox").is_displayed()

    browser.find_element(By.ID, "download").click()
    csv = wait_for(lambda: next(iter(browser.downloads.glob("decisions*.csv")), None))
    wait_for(lambda: csv.read_text().count("\n") == 5)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []

    suggested_d = review.frame.set_index("path").loc[d, "predicted_label"]
    decisions = {a: ("keep", ""), b: ("drop", ""), c: ("relabel", target), d: ("relabel", suggested_d)}
    got = pd.read_csv(csv, keep_default_na=False)
    assert list(got.columns) == ["path", "decision", "label"]
    assert {p: w for p, w in zip(got["path"], got["decision"], strict=True)} == {
        p: w for p, (w, _) in decisions.items()
    }
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(review.results), "-o", str(out), "--decisions", str(csv)])
    assert result.exit_code == 0, result.output
    assert exported(out) == expected_export(review, decisions)


def big_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = [f"class_{i}" for i in range(100)]
    label = rng.integers(0, 100, n)
    predicted = np.where(rng.random(n) < 0.2, rng.integers(0, 100, n), label)
    p_clean = rng.random(n).astype(np.float32)
    return pd.DataFrame(
        {
            "path": [f"class_{k}/{i}.jpg" for i, k in enumerate(label)],
            "label": np.array(classes)[label],
            "p_clean": pd.array(p_clean, dtype="Float32"),
            "is_clean": p_clean > 0.5,
            "predicted_label": np.array(classes)[predicted],
            "p_predicted": pd.array(rng.random(n).astype(np.float32), dtype="Float32"),
            "flag_reason": [f"looks like 'class_{k}' (image evidence 0.{i % 97:02d})" for i, k in enumerate(predicted)],
            "status": "ok",
        }
    )


def test_100k_flagged_rows_page_in_browser(browser, tmp_path):
    frame = big_frame(200_000)  # about 100k flagged
    flagged = int((~frame["is_clean"]).sum())
    page = write_html(frame, {"classes": sorted(set(frame["label"]))}, tmp_path / "big.html", dataset_root=tmp_path)
    per_row = page.stat().st_size / flagged
    assert per_row < 150, f"{per_row:.0f} bytes per flagged row"  # about 95 with a 50-character reason
    browser.get(page.as_uri())  # no wall-clock assertion: a bound on the wait only, for a loaded machine
    wait_for(lambda: browser.find_element("tag name", "html").get_attribute("data-ready") == "1", timeout=300)
    assert text(browser, "n-review") == str(flagged) and text(browser, "page-count") == str(-(-flagged // 100))
    browser.find_element("id", "next").click()
    assert text(browser, "page-no") == "2" and len(browser.find_elements("css selector", "#cards .card")) == 100
    Select = __import__("selenium.webdriver.support.ui", fromlist=["Select"]).Select
    Select(browser.find_element("id", "class-filter")).select_by_value("class_3")
    shown = int(text(browser, "n-shown"))
    want = int(((~frame["is_clean"]) & ((frame["label"] == "class_3") | (frame["predicted_label"] == "class_3"))).sum())
    assert shown == want and text(browser, "page-no") == "1"


def test_missing_browser_fails_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install them"):
        browser_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browser_or_skip()


def test_health_sections_in_browser_screenshot(review, browser, tmp_path):
    """The report's Duplicates and Outliers sections render and are visible in a real browser; a screenshot
    of them is saved (``DEFT_SCREENSHOT_DIR`` keeps it, e.g. for the README)."""
    from selenium.webdriver.common.by import By

    frame = review.frame.copy()
    clean = frame.index[review.usable & frame["is_clean"]]
    frame["outlier_score"] = pd.array(np.where(review.usable, 0.5, np.nan), dtype="Float32")
    frame["is_outlier"] = False
    frame.loc[clean[0], ["outlier_score", "is_outlier"]] = (9.0, True)
    frame["duplicate_group"] = pd.array([None] * len(frame), dtype="Int64")
    frame.loc[[clean[1], clean[2]], "duplicate_group"] = 0
    page = write_html(frame, {"classes": CLASSES, "dataset": str(review.root)}, tmp_path / "health.html", top=5)
    browser.get(page.as_uri())
    wait_for(lambda: browser.find_element(By.TAG_NAME, "html").get_attribute("data-ready") == "1")
    groups, outliers = browser.find_element(By.ID, "n-dup-groups"), browser.find_element(By.ID, "n-outliers")
    assert groups.text == "1" and outliers.text == "1"
    browser.execute_script("arguments[0].scrollIntoView();", groups)
    assert groups.is_displayed() and outliers.is_displayed()
    shot = Path(os.environ.get("DEFT_SCREENSHOT_DIR", tmp_path)) / "report_health.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
