"""Label checking on a corpus of broken files: every bad case is skipped and counted with a warning, nothing crashes."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data_config import DatasetError
from utils.dataloaders import LoadImagesAndLabels
from utils.labels import load_or_scan, read_cache, verify_image_label

GOOD_ROW = "0 0.5 0.5 0.2 0.2\n"


@pytest.fixture(scope="module")
def jpeg_bytes(coco128_dir: Path) -> bytes:
    """A real 640x480 COCO JPEG; corrupt variants are built from its bytes in tmp_path only."""
    return (coco128_dir / "images" / "train2017" / "000000000009.jpg").read_bytes()


def make_pair(root: Path, name: str, image: bytes | None, label: str | None, suffix: str = ".jpg") -> tuple[str, str]:
    """Write images/<name><suffix> and labels/<name>.txt under root; None skips that file."""
    im, lb = root / "images" / f"{name}{suffix}", root / "labels" / f"{name}.txt"
    im.parent.mkdir(parents=True, exist_ok=True)
    lb.parent.mkdir(parents=True, exist_ok=True)
    if image is not None:
        im.write_bytes(image)
    if label is not None:
        lb.write_text(label)
    return str(im), str(lb)


def check(tmp_path: Path, name: str, image: bytes, label: str | None, nc: int | None = 80):
    """verify_image_label on one freshly written pair."""
    return verify_image_label(*make_pair(tmp_path, name, image, label), nc=nc)


def assert_dropped(r, file_name: str, *phrases: str) -> None:
    """Dropped pair: counted corrupt, no labels, one warning naming the file and the reason."""
    assert r.corrupt == 1 and r.labels is None and r.shape is None
    assert "WARNING" in r.msg and file_name in r.msg, r.msg
    for phrase in phrases:
        assert phrase in r.msg, r.msg


def test_good_pair(tmp_path, jpeg_bytes):
    r = check(tmp_path, "good", jpeg_bytes, GOOD_ROW)
    assert (r.found, r.missing, r.empty, r.corrupt, r.msg) == (1, 0, 0, 0, "")
    assert r.shape == (480, 640)
    assert r.labels.dtype == np.float32 and r.labels.shape == (1, 5)
    np.testing.assert_allclose(r.labels[0], [0, 0.5, 0.5, 0.2, 0.2])


@pytest.mark.parametrize("name, make, reason", [
    ("corrupt", lambda b: b"\x00" * 64 + b[64:], "not an image file"),  # SOI/APP headers wiped
    ("zero", lambda b: b"", "empty file (0 bytes)"),
    ("text", lambda b: b"this is a text file, not a picture\n", "not an image file"),
])
def test_bad_images_are_dropped(tmp_path, jpeg_bytes, name, make, reason):
    r = check(tmp_path, name, make(jpeg_bytes), GOOD_ROW)
    assert_dropped(r, f"{name}.jpg", reason)


def test_tiny_image_is_dropped(tmp_path):
    ok, buf = cv2.imencode(".png", np.zeros((5, 5, 3), np.uint8))
    r = verify_image_label(*make_pair(tmp_path, "tiny", buf.tobytes(), GOOD_ROW, ".png"), nc=80)
    assert_dropped(r, "tiny.png", "under 10 pixels")


def test_truncated_jpeg_is_restored(tmp_path, jpeg_bytes):
    im_file, lb_file = make_pair(tmp_path, "trunc", jpeg_bytes[: len(jpeg_bytes) * 6 // 10], GOOD_ROW)
    r = verify_image_label(im_file, lb_file, 80)
    assert r.corrupt == 0 and r.shape == (480, 640) and len(r.labels) == 1
    assert "trunc.jpg" in r.msg and "truncated JPEG restored and saved" in r.msg
    assert Path(im_file).read_bytes()[-2:] == b"\xff\xd9"  # re-encoded, complete file
    assert verify_image_label(im_file, lb_file, 80).msg == ""  # second scan is clean


def test_truncated_jpeg_in_read_only_folder_is_kept_untouched(tmp_path, jpeg_bytes):
    data = jpeg_bytes[: len(jpeg_bytes) * 6 // 10]
    im_file, lb_file = make_pair(tmp_path, "trunc_ro", data, GOOD_ROW)
    folder = Path(im_file).parent
    folder.chmod(0o555)
    try:
        r = verify_image_label(im_file, lb_file, 80)
    finally:
        folder.chmod(0o755)
    assert r.corrupt == 0 and r.shape == (480, 640) and "read-only" in r.msg and "trunc_ro.jpg" in r.msg
    assert Path(im_file).read_bytes() == data


def test_exif_rotation_swaps_shape(tmp_path, jpeg_bytes):
    """Shape is reported after EXIF rotation, the same way cv2.imread will load the pixels."""
    path = tmp_path / "images" / "rot.jpg"
    path.parent.mkdir(parents=True)
    im = Image.open(io.BytesIO(jpeg_bytes))
    exif = im.getexif()
    exif[274] = 6  # rotate 90 degrees clockwise on display
    im.save(path, exif=exif.tobytes())
    r = verify_image_label(str(path), str(tmp_path / "labels" / "rot.txt"), 80)
    assert r.shape == (640, 480) == cv2.imread(str(path)).shape[:2]


def test_missing_label_file_is_background(tmp_path, jpeg_bytes):
    r = check(tmp_path, "nolabel", jpeg_bytes, None)
    assert (r.missing, r.found, r.corrupt, r.msg) == (1, 0, 0, "") and r.labels.shape == (0, 5)


@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_label_file_is_background(tmp_path, jpeg_bytes, text):
    r = check(tmp_path, "empty", jpeg_bytes, text)
    assert (r.found, r.empty, r.corrupt, r.msg) == (1, 1, 0, "") and r.labels.shape == (0, 5)


@pytest.mark.parametrize("name, label, reason", [
    ("cols4", "0 0.5 0.5 0.2\n", "row 1 has 4 columns, expected 5"),
    ("cols6", GOOD_ROW + "1 0.5 0.5 0.2 0.2 0.9\n", "row 2 has 6 columns, expected 5"),
    ("nonnum", "0 0.5 abc 0.2 0.2\n", "row 1 has a non-numeric value 'abc'"),
    ("nan", "0 nan 0.5 0.2 0.2\n", "row 1 has a NaN or infinite value"),
    ("inf", "0 0.5 inf 0.2 0.2\n", "row 1 has a NaN or infinite value"),
    ("f32overflow", "0 0.5 0.5 0.2 1e39\n", "row 1 has a value too large for float32"),
    ("over1", "0 1.2 0.5 0.2 0.2\n", "row 1 has coordinates outside [0, 1]: 1.2 0.5 0.2 0.2"),
    ("tiny_over1", "0 1.0000002 0.5 0.2 0.2\n", "row 1 has coordinates outside [0, 1]"),
    ("below0", "0 -0.1 0.5 0.2 0.2\n", "row 1 has coordinates outside [0, 1]"),
    ("zero_w", "0 0.5 0.5 0 0.2\n", "row 1 has non-positive width/height: 0 0.2"),
    ("neg_h", "0 0.5 0.5 0.2 -0.1\n", "row 1 has non-positive width/height: 0.2 -0.1"),
    ("cls_ge_nc", "80 0.5 0.5 0.2 0.2\n", "row 1 has class id 80 but nc=80 (valid ids are 0..79)"),
    ("cls_neg", "-1 0.5 0.5 0.2 0.2\n", "row 1 has invalid class id -1"),
    ("cls_float", "1.5 0.5 0.5 0.2 0.2\n", "row 1 has invalid class id 1.5"),
])
def test_bad_label_rows_drop_the_pair(tmp_path, jpeg_bytes, name, label, reason):
    r = check(tmp_path, name, jpeg_bytes, label)
    assert r.found == 1
    assert_dropped(r, f"{name}.txt", "ignoring image and labels", reason)


def test_exact_one_is_accepted(tmp_path, jpeg_bytes):
    r = check(tmp_path, "edge", jpeg_bytes, "3 1 0 1 1\n")
    assert r.corrupt == 0 and len(r.labels) == 1


def test_class_check_off_without_nc(tmp_path, jpeg_bytes):
    r = check(tmp_path, "bigcls", jpeg_bytes, "500 0.5 0.5 0.2 0.2\n", nc=None)
    assert r.corrupt == 0 and r.labels[0, 0] == 500


def test_duplicate_rows_removed_in_file_order(tmp_path, jpeg_bytes):
    rows = "5 0.3 0.3 0.1 0.1\n" + GOOD_ROW + "5 0.3 0.3 0.1 0.1\n" + GOOD_ROW
    r = check(tmp_path, "dups", jpeg_bytes, rows)
    assert r.corrupt == 0 and "dups.txt" in r.msg and "2 duplicate label row(s) removed" in r.msg
    np.testing.assert_allclose(r.labels[:, 0], [5, 0])  # first occurrences, original order


def test_no_trailing_newline_and_crlf(tmp_path, jpeg_bytes):
    r = check(tmp_path, "nonl", jpeg_bytes, "0 0.5 0.5 0.2 0.2\r\n1 0.25 0.25 0.1 0.1")
    assert (r.corrupt, r.msg) == (0, "") and r.labels.shape == (2, 5)


def test_polygon_row_becomes_its_box(tmp_path, jpeg_bytes):
    r = check(tmp_path, "poly", jpeg_bytes, "2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    np.testing.assert_allclose(r.labels[0], [2, 0.3, 0.4, 0.4, 0.4], atol=1e-6)


def build_corpus(root: Path, jpeg: bytes) -> None:
    """One dataset holding every case above plus an orphan label."""
    make_pair(root, "a_good", jpeg, GOOD_ROW)
    make_pair(root, "b_dups", jpeg, GOOD_ROW * 2)
    make_pair(root, "c_empty", jpeg, "")
    make_pair(root, "d_nolabel", jpeg, None)
    make_pair(root, "e_trunc", jpeg[: len(jpeg) // 2], GOOD_ROW)
    make_pair(root, "f_zero", b"", GOOD_ROW)
    make_pair(root, "g_text", b"hello", GOOD_ROW)
    make_pair(root, "h_cols", jpeg, "0 0.5 0.5 0.2\n")
    make_pair(root, "i_cls", jpeg, "80 0.5 0.5 0.2 0.2\n")
    make_pair(root, "j_orphan", None, GOOD_ROW)


def test_dataset_scan_counts_and_warnings(tmp_path, jpeg_bytes, caplog):
    build_corpus(tmp_path, jpeg_bytes)
    with caplog.at_level(logging.INFO):
        ds = LoadImagesAndLabels(str(tmp_path / "images"), img_size=64, batch_size=4, prefix="val: ", nc=80)
    # 'images' counts label files found (Ultralytics): h_cols/i_cls count, f_zero/g_text fail before their labels
    assert ds.scan_summary == "val: 6 images, 2 backgrounds, 4 corrupt, 1 orphan labels"
    assert [Path(f).stem for f in ds.im_files] == ["a_good", "b_dups", "c_empty", "d_nolabel", "e_trunc"]
    assert [len(lb) for lb in ds.labels] == [1, 1, 0, 0, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for stem in ("b_dups.txt", "e_trunc.jpg", "f_zero.jpg", "g_text.jpg", "h_cols.txt", "i_cls.txt"):
        assert sum(stem in w for w in warnings) == 1, (stem, warnings)
    assert ds.scan_summary in caplog.text
    assert len(ds) == 5 and ds[2][1].shape == (0, 6)  # background images still load


def test_cache_is_json_and_invalidated_by_size_change(tmp_path, jpeg_bytes):
    build_corpus(tmp_path, jpeg_bytes)
    ds = LoadImagesAndLabels(str(tmp_path / "images"), img_size=64, nc=80)
    cache = tmp_path / "labels.cache"  # <labels dir>.cache
    data = json.loads(cache.read_text())  # plain JSON: no pickle involved in loading it
    assert data["counts"] == {"found": 6, "missing": 1, "empty": 1, "corrupt": 4}
    again = LoadImagesAndLabels(str(tmp_path / "images"), img_size=64, nc=80)
    assert again.scan.from_cache and again.scan_summary == ds.scan_summary
    for a, b in zip(ds.labels, again.labels):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    (tmp_path / "labels" / "h_cols.txt").write_text(GOOD_ROW)  # fixed file: new size -> rescan
    fixed = LoadImagesAndLabels(str(tmp_path / "images"), img_size=64, nc=80)
    assert not fixed.scan.from_cache and fixed.scan.corrupt == 3 and len(fixed) == 6


def test_cache_depends_on_nc_and_survives_garbage(tmp_path, jpeg_bytes):
    make_pair(tmp_path, "x", jpeg_bytes, "5 0.5 0.5 0.2 0.2\n")
    ims, lbs = [str(tmp_path / "images" / "x.jpg")], [str(tmp_path / "labels" / "x.txt")]
    cache = tmp_path / "labels.cache"
    assert load_or_scan(ims, lbs, cache, nc=80).corrupt == 0
    assert load_or_scan(ims, lbs, cache, nc=3).corrupt == 1  # same files, stricter nc: not served from cache
    cache.write_bytes(b"\x93NUMPY garbage")
    assert read_cache(cache, "whatever") is None
    assert load_or_scan(ims, lbs, cache, nc=80).corrupt == 0


def test_read_only_labels_folder_skips_cache(tmp_path, jpeg_bytes, caplog):
    make_pair(tmp_path / "ro", "x", jpeg_bytes, GOOD_ROW)
    parent = tmp_path / "ro"
    parent.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING):
            ds = LoadImagesAndLabels(str(parent / "images"), img_size=64)
    finally:
        parent.chmod(0o755)
    assert len(ds) == 1 and not (parent / "labels.cache").exists() and "not writeable" in caplog.text


def test_missing_labels_folder(tmp_path, jpeg_bytes, caplog):
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(jpeg_bytes)
    with caplog.at_level(logging.WARNING):
        ds = LoadImagesAndLabels(str(tmp_path / "images"), img_size=64, prefix="val: ")
    assert ds.scan_summary == "val: 0 images, 3 backgrounds, 0 corrupt, 0 orphan labels"
    assert "no label files found" in caplog.text
    with pytest.raises(DatasetError, match="cannot train without labels"):
        LoadImagesAndLabels(str(tmp_path / "images"), img_size=64, augment=True)


def test_empty_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"val: no images found in .*images"):
        LoadImagesAndLabels(str(tmp_path / "images"), prefix="val: ")


def test_missing_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        LoadImagesAndLabels(str(tmp_path / "nope"))


def test_all_images_corrupt(tmp_path):
    make_pair(tmp_path, "bad", b"", GOOD_ROW)
    with pytest.raises(DatasetError, match="all 1 images .* are corrupt"):
        LoadImagesAndLabels(str(tmp_path / "images"))


def test_txt_list_with_relative_lines(tmp_path, jpeg_bytes):
    make_pair(tmp_path, "a", jpeg_bytes, GOOD_ROW)
    make_pair(tmp_path, "b", jpeg_bytes, "")
    (tmp_path / "val.txt").write_text("./images/a.jpg\nimages/b.jpg\n")
    ds = LoadImagesAndLabels(str(tmp_path / "val.txt"), img_size=64)
    assert [Path(f).name for f in ds.im_files] == ["a.jpg", "b.jpg"]
    assert (tmp_path / "val.cache").is_file() and os.path.isabs(ds.im_files[0])
