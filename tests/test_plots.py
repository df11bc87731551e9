"""Plots: boxes really land on the image, and every chart writes a readable file."""
from __future__ import annotations

import cv2
import numpy as np

from utils.plots import Annotator, colors, plot_images, plot_labels, plot_results, plot_xy, save_one_box

RESULTS_COLUMNS = [
    "epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
    "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
    "x/lr0", "x/lr1", "x/lr2", "sparsity/global",
]


def test_colors_palette_is_fixed_and_bgr_is_reversed():
    assert colors(0) == (255, 56, 56)
    assert colors(20) == colors(0)
    assert colors(3, bgr=True) == colors(3)[::-1]


def test_annotator_draws_box_and_label():
    im = np.zeros((200, 300, 3), np.uint8)
    ann = Annotator(im, line_width=2)
    ann.box_label((50, 60, 150, 160), "cat 0.9", color=(0, 255, 0))
    out = ann.result()
    assert out.shape == im.shape
    assert (out[100, 50] == (0, 255, 0)).all()  # left edge of the box
    assert (out[100, 100] == 0).all()  # inside stays untouched
    tag = out[40:60, 50:100]
    assert (tag[..., 0] > 200).sum() > 20  # white (anti-aliased) label text on the green tag
    assert (tag == (0, 255, 0)).all(-1).any()  # tag filled with the box colour


def test_annotator_label_moves_inside_at_top_edge():
    ann = Annotator(np.zeros((100, 100, 3), np.uint8), line_width=1)
    ann.box_label((10, 0, 90, 80), "person", color=(0, 0, 255))
    assert (ann.result()[5:15, 20:40] == (0, 0, 255)).all(-1).any()


def test_annotator_copies_non_contiguous_input():
    im = np.zeros((50, 50, 3), np.uint8)[..., ::-1]
    ann = Annotator(im)
    ann.box_label((5, 5, 40, 40), "", color=(9, 9, 9))
    assert (ann.result() == 9).any()


def test_save_one_box_crops_with_gain_and_pad(tmp_path):
    im = np.zeros((100, 200, 3), np.uint8)
    im[20:60, 40:120] = (10, 20, 30)  # BGR object
    crop = save_one_box([40, 20, 120, 60], im, file=tmp_path / "crops" / "a.jpg", gain=1.0, pad=0, BGR=True)
    assert crop.shape == (40, 80, 3)
    assert (crop[0, 0] == (10, 20, 30)).all()
    rgb = save_one_box([40, 20, 120, 60], im, file=tmp_path / "crops" / "a.jpg", gain=1.0, pad=10)
    assert rgb.shape == (50, 90, 3) and (rgb[25, 45] == (30, 20, 10)).all()
    files = sorted(p.name for p in (tmp_path / "crops").iterdir())
    assert files == ["a.jpg", "a2.jpg"]
    saved = cv2.imread(str(tmp_path / "crops" / "a.jpg"))
    assert saved.shape == (40, 80, 3)
    sq = save_one_box([0, 0, 20, 60], im, gain=1.0, pad=0, square=True, save=False)
    assert sq.shape[0] == 60 and sq.shape[1] == 40  # square 60x60 clipped at the left border


def test_plot_results_writes_png_with_extra_columns(tmp_path):
    rng = np.random.default_rng(0)
    rows = [", ".join(f"{v:.5f}" for v in [e, *rng.random(len(RESULTS_COLUMNS) - 1)]) for e in range(6)]
    csv = tmp_path / "results.csv"
    csv.write_text(",".join(f"{c:>20s}" for c in RESULTS_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    out = plot_results(csv)
    assert out == tmp_path / "results.png"
    png = cv2.imread(str(out))
    assert png is not None and png.shape[1] > png.shape[0]  # 3 rows x 5 panels is wider than tall
    # the data is drawn: other values give another picture, the same values the same one
    other = tmp_path / "b" / "results.csv"
    other.parent.mkdir()
    flipped = [", ".join(f"{v:.5f}" for v in [e, *(1 - rng.random(len(RESULTS_COLUMNS) - 1))]) for e in range(6)]
    other.write_text(",".join(f"{c:>20s}" for c in RESULTS_COLUMNS) + "\n" + "\n".join(flipped) + "\n")
    assert cv2.imread(str(plot_results(other))).shape == png.shape
    assert (cv2.imread(str(plot_results(other))) != png).any(axis=-1).sum() > 500
    assert (cv2.imread(str(plot_results(csv))) == png).all()


def test_plot_xy_writes_png(tmp_path):
    out = plot_xy([0, 0.5, 0.75, 0.9], [[0.5, 0.49, 0.47, 0.40], [0.5, 0.5, 0.48, 0.44]], ["gmp", "oBERT"],
                  "sparsity", "mAP@0.5", tmp_path / "sub" / "map_vs_sparsity.png")
    img = cv2.imread(str(out))
    assert img is not None
    colored = (img.max(-1).astype(int) - img.min(-1)) > 60  # line pixels; axes, text and background are grey
    assert colored.sum() > 300
    hues = {tuple(int(c) // 64 for c in px) for px in img[colored]}
    assert len(hues) >= 2  # two curves, two colours
    assert cv2.imread(str(plot_xy([1, 2], [3, 4], file=tmp_path / "one.png"))) is not None


def test_plot_labels_and_plot_images(tmp_path):
    labels = np.array([[0, 0.5, 0.5, 0.2, 0.3], [1, 0.2, 0.3, 0.1, 0.1], [1, 0.7, 0.6, 0.4, 0.2]])
    assert cv2.imread(str(plot_labels(labels, ["circle", "square"], tmp_path))) is not None
    images = np.zeros((3, 3, 64, 96), np.float32)
    targets = np.array([[0, 0, 0.5, 0.5, 0.5, 0.5], [2, 1, 48, 32, 20, 20]], np.float32)  # normalised and pixels
    out = plot_images(images, targets, ["a.jpg", "b.jpg", "c.jpg"], tmp_path / "train_batch0.jpg", ["c", "s"])
    mosaic = cv2.imread(str(out))
    assert mosaic.shape == (128, 192, 3)
    assert (mosaic[:64, :96] != 0).any(axis=-1).sum() > 50  # tile 0 got a box
    preds = np.array([[1, 0, 10, 10, 8, 8, 0.9], [1, 0, 30, 30, 8, 8, 0.1]], np.float32)
    assert cv2.imread(str(plot_images(images, preds, None, tmp_path / "val_batch0_pred.jpg"))) is not None
