"""Listing datasets and reading images of every kind Pillow opens."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from deft_clean.inputs.decode import load_image
from deft_clean.inputs.listing import list_dataset, load_class_names


def test_folder_listing_nested_and_filtered(small_folder):
    nested = small_folder / "cat" / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGB", (9, 9), "red").save(nested / "x.jpg")
    (small_folder / "cat" / "README.md").write_text("ignored")
    (small_folder / "dog" / ".hidden.png").write_bytes(b"ignored")
    listing = list_dataset(small_folder)
    assert listing.classes == ["cat", "dog", "sea_lion"]
    assert "cat/more/deeper/x.jpg" in listing.paths
    assert not any(p.endswith((".md", ".hidden.png")) for p in listing.paths)
    assert len(listing) == 13
    assert listing.prompt_names == ["cat", "dog", "sea lion"]
    assert listing.label_indices.tolist() == [listing.classes.index(x) for x in listing.labels]


def test_table_listing_and_class_names(small_folder, tmp_path):
    rows = ["path,label"] + [
        f"{p.relative_to(small_folder).as_posix()},{p.parent.name}" for p in sorted(small_folder.rglob("*.png"))
    ]
    table = small_folder / "list.csv"
    table.write_text("\n".join(rows))
    names = tmp_path / "names.csv"
    names.write_text("label,name\ncat,house cat\ndog,domestic dog\nsea_lion,sea lion\n")
    listing = list_dataset(table, class_names=names)
    assert listing.kind == "table" and len(listing) == 12
    assert listing.prompt_names == ["house cat", "domestic dog", "sea lion"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"cat": "kitty", "dog": "puppy", "sea_lion": "seal"}))
    assert load_class_names(js)["dog"] == "puppy"


def test_parquet_table_and_numeric_labels_sort_naturally(tmp_path):
    import pandas as pd

    for i in range(12):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    pd.DataFrame({"file": [f"{i}.png" for i in range(12)], "y": [str(i % 11) for i in range(12)]}).to_parquet(
        tmp_path / "t.parquet"
    )
    listing = list_dataset(tmp_path / "t.parquet", path_col="file", label_col="y")
    assert listing.classes[:3] == ["0", "1", "2"] and listing.classes[-1] == "10"


def save(image: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("RGB", "TIFF"),
        ("P", "GIF"),
        ("1", "PNG"),
        ("F", "TIFF"),
    ],
)
def test_every_mode_becomes_rgb(mode, fmt, tmp_path):
    base = Image.linear_gradient("L").resize((16, 12))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(base, dtype=np.uint16) * 257).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray(np.asarray(base, dtype=np.float32) / 255.0)
    else:
        image = base.convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(save(image, fmt).getvalue())
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (16, 12)
    if mode in ("L", "I;16", "F"):
        pixels = np.asarray(out)[..., 0]
        assert pixels.max() > 200 and pixels.min() < 30  # range kept, not clipped to white/black


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (20, 10), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 20)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "a.gif").size == (8, 8)


def test_decompression_bomb_raises_not_allocates(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (12, 12)).save(tmp_path / "big.png")  # 144 px: between 1x and 2x the limit
    with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
        load_image(tmp_path / "big.png")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_listing_and_reading_keep_no_file_open(small_folder):
    """A listing holds paths, not open files, and every read closes its file: at the default limit of 1,024 open
    files a dataset of any size lists and reads."""
    for i in range(300):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(small_folder / "cat" / f"extra{i:03d}.png")
    before = len(os.listdir("/proc/self/fd"))
    listing = list_dataset(small_folder)
    images = [listing.images.open(i) for i in range(len(listing))]
    assert len(images) == 312
    assert len(os.listdir("/proc/self/fd")) <= before
