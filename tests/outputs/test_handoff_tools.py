"""Hand-offs to annotation tools (issue 40): Label Studio tasks with p_clean as the prediction score, and a CVAT
for images 1.1 file with a suspect tag. Structure checked here; the tools' own importers are not installed."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from deft_clean.outputs.handoff import SUSPECT, cvat_xml, label_studio_config, label_studio_tasks
from tests.outputs.test_verdict import frame


def test_label_studio_tasks_put_the_doubtful_rows_first():
    rows = frame(["looks like 'cat'", None, "looks like 'dog'", None])
    tasks = json.loads(label_studio_tasks(rows))
    assert len(tasks) == 4
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert scores == sorted(scores) and scores[0] == 0.1  # flagged rows (p_clean 0.1) first
    first = tasks[0]
    assert first["data"]["flagged"] is True and first["data"]["image"].startswith("/data/local-files/?d=")
    result = first["predictions"][0]["result"][0]
    assert result["from_name"] == "label" and result["to_name"] == "image" and result["type"] == "choices"
    assert result["value"]["choices"] == [rows.loc[rows["path"] == first["data"]["path"], "predicted_label"].item()]
    config = ElementTree.fromstring(label_studio_config(["cat", "dog"]))
    assert config.find("Image").get("value") == "$image"
    assert [c.get("value") for c in config.iter("Choice")] == ["cat", "dog"]


def test_cvat_xml_tags_given_labels_and_suspects():
    rows = frame(["looks like 'cat'", None, None])
    root = ElementTree.fromstring(cvat_xml(rows, ["cat", "dog"], {"0.png": (28, 28)}))
    assert root.findtext("version") == "1.1"
    assert [label.findtext("name") for label in root.iter("label")] == ["cat", "dog", SUSPECT]
    images = root.findall("image")
    assert [i.get("name") for i in images] == ["0.png", "1.png", "2.png"] and images[0].get("width") == "28"
    tags = [[t.get("label") for t in i.findall("tag")] for i in images]
    assert tags == [["dog", SUSPECT], ["cat"], ["dog"]]
    suspect = images[0].find(f"tag[@label='{SUSPECT}']")
    assert suspect.find("attribute[@name='suggested']").text == "cat"
    assert suspect.find("attribute[@name='p_clean']").text == "0.1000"


def test_writers_leave_the_files_the_tools_import(tmp_path):
    from PIL import Image

    from deft_clean.outputs.handoff import write_cvat, write_label_studio

    rows = frame(["looks like 'cat'", None])
    Image.new("L", (20, 10)).save(tmp_path / "0.png")
    folder = write_label_studio(rows, ["cat", "dog"], tmp_path / "ls")
    assert len(json.loads((folder / "tasks.json").read_text())) == 2 and (folder / "config.xml").is_file()
    xml = ElementTree.parse(write_cvat(rows, ["cat", "dog"], tmp_path, tmp_path / "cvat.xml")).getroot()
    assert [(i.get("width"), i.get("height")) for i in xml.findall("image")] == [("20", "10"), ("0", "0")]
