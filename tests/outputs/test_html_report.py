"""The HTML report in headless Chromium: it opens on images, clicks filter the cards, the health sections are
galleries, the pictures render, and paths named like Object.prototype members are ordinary rows.

Screenshots go to a temp folder (``DEFT_SCREENSHOT_DIR=benchmarks/results`` refreshes the committed ones) and
are checked: a file of real size whose image area is not a blank placeholder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageStat

from deft_clean.outputs.html_report import write_html
from deft_clean.outputs.results import load_results, write_results
from tests.outputs.test_review_decisions import browser, wait_for  # noqa: F401  (the fixture)
from tests.review_data import CLASSES, make_review

# the committed pictures are refreshed with DEFT_SCREENSHOT_DIR=benchmarks/results; a plain test run writes none
SHOTS = Path(os.environ.get("DEFT_SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "deft-clean-screenshots"))
UNRELIABLE = {  # an evidence verdict that puts the banner on the page
    "reliable": False,
    "image_accuracy": 0.57,
    "chance": 0.5,
    "flags_raised": 9,
    "flags_withheld": 3,
    "reasons": ["image evidence barely beats chance"],
}


def open_page(driver, page: Path, fragment: str = "") -> None:
    driver.get(page.as_uri() + fragment)
    wait_for(lambda: driver.find_element("tag name", "html").get_attribute("data-ready") == "1")
    wait_for(lambda: driver.execute_script("return [...document.images].every(i => i.complete)"))


def visible_images(driver, selector: str) -> list[dict]:
    """Loaded images under ``selector`` whose box lies inside the first screen (the viewport)."""
    return driver.execute_script(
        """
        return [...document.querySelectorAll(arguments[0])].map(img => {
          const r = img.getBoundingClientRect();
          return {w: img.naturalWidth, top: r.top, left: r.left, bottom: r.bottom, right: r.right};
        }).filter(b => b.w > 0 && b.top >= 0 && b.left >= 0 && b.bottom <= innerHeight && b.right <= innerWidth);
        """,
        selector,
    )


def shot(driver, name: str, box: dict | None = None) -> Path:
    """Save a screenshot and check it: real size, and (given an image's box) that box is not one flat colour."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if box is not None:
        scale = driver.execute_script("return window.devicePixelRatio") or 1
        with Image.open(path) as image:
            crop = image.convert("L").crop([int(box[k] * scale) for k in ("left", "top", "right", "bottom")])
            assert max(ImageStat.Stat(crop).stddev) > 10, f"{name}: the image area is blank"
    return path


def cards(driver) -> list:
    return driver.find_elements("css selector", "#cards .card")


@pytest.fixture()
def many(tmp_path):
    """A review folder with 6 flagged rows (more than --top 3), an unreliable evidence verdict, health columns."""
    review = make_review(tmp_path, per_class=6)  # p_clean stays within 0..1
    frame, metadata = load_results(review.results)
    metadata["evidence"] = UNRELIABLE
    usable = frame["status"] == "ok"
    clean = frame.index[usable & frame["is_clean"]]
    frame["outlier_score"] = pd.array(np.where(usable, 0.5, np.nan), dtype="Float32")
    frame["is_outlier"] = False
    frame.loc[clean[:3], ["outlier_score", "is_outlier"]] = (9.0, True)
    frame["duplicate_group"] = pd.array([None] * len(frame), dtype="Int64")
    frame.loc[clean[3:6], "duplicate_group"] = 0
    frame.loc[clean[6:8], "duplicate_group"] = 1
    frame["duplicate_kind"] = None
    frame.loc[clean[3:6], "duplicate_kind"] = "exact"
    frame.loc[clean[6:8], "duplicate_kind"] = "near"
    frame["duplicate_similarity"] = np.nan
    frame.loc[clean[6:8], "duplicate_similarity"] = 0.981
    return frame, metadata, review


def test_page_opens_on_images_and_clicks_filter(many, browser, tmp_path):  # noqa: F811
    frame, metadata, _ = many
    flagged = frame[(frame["status"] == "ok") & ~frame["is_clean"]]
    assert len(flagged) > 3
    page = write_html(frame, metadata, tmp_path / "r.html", top=3)
    open_page(browser, page)

    # The first screen: the verdict's banner, then the overview (class table beside the heatmap, both of which
    # filter the cards), then the cards with real images (past --top too).
    banner = browser.find_element("id", "evidence-banner").rect
    table, heatmap = browser.find_element("id", "classes").rect, browser.find_element("id", "heatmap").rect
    review = browser.find_element("id", "review").rect
    assert banner["y"] < table["y"] < review["y"] and heatmap["y"] < review["y"] and heatmap["x"] > table["x"]
    assert table["y"] < browser.execute_script("return window.innerHeight")  # the overview is on the first screen
    shot(browser, "report_overview.png")
    browser.execute_script("document.getElementById('review').scrollIntoView()")
    first = visible_images(browser, "#cards .card img")
    assert first
    assert all(c.find_element("tag name", "img").get_property("naturalWidth") > 0 for c in cards(browser))
    assert len(cards(browser)) == len(flagged)
    shot(browser, "report_first_screen.png", first[0])

    # A class row filters the cards to the rows given or suggested that class.
    target = CLASSES[1]
    browser.find_element("css selector", f'#classes tr[data-class="{target}"]').click()
    want = flagged[(flagged["label"] == target) | (flagged["predicted_label"] == target)]
    assert browser.find_element("id", "class-filter").get_property("value") == target
    assert {c.get_attribute("data-path") for c in cards(browser)} == set(want["path"])
    option = browser.find_element("css selector", f'#class-filter option[value="{target}"]').text
    assert option.endswith(f"({len(want)} card{'s' * (len(want) != 1)})")  # the count the filter shows

    # A heatmap cell filters to one given -> suggested pair.
    given, suggested = flagged.iloc[0]["label"], flagged.iloc[0]["predicted_label"]
    cell = next(
        td
        for td in browser.find_elements("css selector", "#heatmap td[data-given]")
        if td.get_attribute("data-given") == given and td.get_attribute("data-suggested") == suggested
    )
    browser.execute_script("arguments[0].scrollIntoView()", cell)
    cell.click()
    pair = flagged[(flagged["label"] == given) & (flagged["predicted_label"] == suggested)]
    assert int(cell.text) == len(pair)
    assert {c.get_attribute("data-path") for c in cards(browser)} == set(pair["path"])
    assert browser.find_element("id", "pair-chip").is_displayed()
    assert browser.find_element("id", "class-filter").get_property("value") == ""
    shot(browser, "report_filtered.png", visible_images(browser, "#cards .card img")[0])
    browser.find_element("id", "pair-clear").click()
    assert len(cards(browser)) == len(flagged)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_duplicates_and_outliers_are_galleries(many, browser, tmp_path):  # noqa: F811
    frame, metadata, _ = many
    page = write_html(frame, metadata, tmp_path / "r.html", top=3)
    open_page(browser, page)
    groups = browser.find_elements("css selector", "#duplicates .group")
    assert [len(g.find_elements("tag name", "img")) for g in groups] == [3, 2]
    assert "exact" in groups[0].text and "near" in groups[1].text and "0.981" in groups[1].text
    first, second = groups[0].rect, groups[1].rect
    assert abs(first["y"] - second["y"]) < 5 and second["x"] > first["x"]  # side by side
    outliers = browser.find_elements("css selector", "#outliers img")
    assert len(outliers) == 3 and all(img.get_property("naturalWidth") > 0 for img in outliers)
    browser.execute_script("document.getElementById('duplicates').scrollIntoView()")
    shot(browser, "report_galleries.png", visible_images(browser, "#duplicates img")[0])
    # Without the optional columns the galleries still render.
    page = write_html(frame.drop(columns=["duplicate_kind", "duplicate_similarity"]), metadata, tmp_path / "o.html")
    open_page(browser, page)
    assert len(browser.find_elements("css selector", "#duplicates .group img")) == 5


def test_pictures_render(many, browser, tmp_path):  # noqa: F811
    frame, metadata, _ = many
    metadata["history"] = [{"epoch": e, "loss": 2.0 / e, "clean_fraction": 0.5 + 0.05 * e} for e in range(1, 6)]
    metadata["text_evidence"] = "learned prompts"  # dropped prompts' curves are not drawn (see below)
    training = {"history": [{"epoch": e, "loss": 1.0 / e, "val_accuracy": 0.6 + 0.05 * e} for e in range(1, 5)]}
    predictions = pd.DataFrame(
        {"label": ["cat", "cat", "dog [x]", "dog [x]"], "predicted_label": ["cat"] * 3 + ["dog [x]"]}
    )
    page = write_html(frame, metadata, tmp_path / "r.html", training=training, predictions=predictions)
    open_page(browser, page)
    for chart in ("detect-curves", "train-curves"):
        lines = browser.find_elements("css selector", f"#{chart} polyline.series")
        assert len(lines) == 2 and all(line.rect["width"] > 100 for line in lines)
    cells = browser.find_elements("css selector", "#confusion rect.cell")
    counts = {
        (c.get_attribute("data-given"), c.get_attribute("data-predicted")): int(c.get_attribute("data-count"))
        for c in cells
    }
    assert counts == {("cat", "cat"): 2, ("cat", "dog [x]"): 0, ("dog [x]", "cat"): 1, ("dog [x]", "dog [x]"): 1}
    browser.execute_script("document.getElementById('pictures').scrollIntoView()")
    shot(browser, "report_pictures.png")
    metadata["text_evidence"] = "zero-shot"  # the prompts were dropped: their curves describe nothing shown
    page = write_html(frame, metadata, tmp_path / "r.html", training=training, predictions=predictions)
    assert 'id="detect-curves"' not in page.read_text() and 'id="train-curves"' in page.read_text()


def test_paths_named_like_object_members_are_not_reviewed(tmp_path, browser):  # noqa: F811
    review = make_review(tmp_path)
    frame, metadata = load_results(review.results)
    names = ["constructor", "toString", "__proto__", "hasOwnProperty"]
    source = review.root / frame.loc[frame["status"] == "ok", "path"].iloc[0]
    rows = []
    for i, name in enumerate(names):
        shutil.copy(source, review.root / "cat" / name)
        rows.append(frame.iloc[0].to_dict() | {"path": f"cat/{name}", "p_clean": 0.01 * (i + 1), "is_clean": False})
    frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    results = write_results(frame, metadata, tmp_path / "proto.parquet")
    frame, metadata = load_results(results)
    page = write_html(frame, metadata, tmp_path / "proto.html")
    open_page(browser, page)
    n_flagged = int(((frame["status"] == "ok") & ~frame["is_clean"]).sum())
    assert browser.find_element("id", "n-reviewed").text == "0"
    by_path = {c.get_attribute("data-path"): c for c in cards(browser)}
    assert all(by_path[f"cat/{n}"].get_attribute("data-decision") == "none" for n in names)
    # (files without an image extension are not rows an image folder lists, so this page has no thumbnails)
    assert len(by_path) == n_flagged
    by_path["cat/__proto__"].find_element("css selector", "button.keep").click()
    assert browser.find_element("id", "n-reviewed").text == "1"
    browser.refresh()
    wait_for(lambda: browser.find_element("tag name", "html").get_attribute("data-ready") == "1")
    by_path = {c.get_attribute("data-path"): c for c in cards(browser)}
    assert browser.find_element("id", "n-reviewed").text == "1"
    assert by_path["cat/__proto__"].get_attribute("data-decision") == "keep"
    assert by_path["cat/constructor"].get_attribute("data-decision") == "none"


def test_report_cli_draws_a_model_and_predictions(tmp_path):
    from typer.testing import CliRunner

    from deft_clean.cli.app import app

    review = make_review(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    history = [{"epoch": e, "loss": 1.0 / e, "val_accuracy": 0.5 + 0.1 * e} for e in range(1, 4)]
    (model / "metrics.json").write_text(json.dumps({"history": history}))
    predictions = tmp_path / "predictions.parquet"
    pd.DataFrame({"path": ["a", "b"], "label": ["cat", "cat"], "predicted_label": ["cat", "dog [x]"]}).to_parquet(
        predictions
    )
    out = tmp_path / "r.html"
    args = ["report", str(review.results), "--html", str(out), "--model", str(model), "--predictions", str(predictions)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.count('class="series"') == 2 and 'id="train-curves"' in page
    assert page.count('class="cell"') == 4 and "accuracy 50.0% on 2 labelled images" in page
    (model / "metrics.json").write_text("[1, 2]")
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 1 and "expected a JSON object of training metrics" in result.stderr


def test_report_thumbnails_option_caps_the_images(tmp_path):
    from typer.testing import CliRunner

    from deft_clean.cli.app import app

    review = make_review(tmp_path)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(review.results), "--html", str(out), "--thumbnails", "2"])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").count("data:image/jpeg;base64,") == 2
    result = CliRunner().invoke(
        app, ["report", str(review.results), "--html", str(tmp_path / "s.html"), "--thumbnails", "-1"]
    )
    assert result.exit_code == 2 and "--thumbnails must be 0 or more" in result.stderr
