"""Synthetic shapes dataset: reproducible, valid YOLO labels, and boxes that hug the drawn shapes."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from utils.synthetic import NAMES, Shape, background, draw_shape, main, parse_opt, random_shapes, render, run, shape_box


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".yaml"}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(run(tmp_path / "a", n_train=5, n_val=2, imgsz=128, seed=3).parent)
    b = _files(run(tmp_path / "b", n_train=5, n_val=2, imgsz=128, seed=3).parent)
    c = _files(run(tmp_path / "c", n_train=5, n_val=2, imgsz=128, seed=4).parent)
    assert len(a) == 14 and a == b
    assert a != c


def test_layout_yaml_and_labels_valid(tmp_path):
    yaml_path = run(tmp_path / "shapes", n_train=12, n_val=4, imgsz=160, seed=0)
    data = yaml.safe_load(yaml_path.read_text())
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert list(data["names"].values()) == list(NAMES) and data["nc"] == len(NAMES)
    root = tmp_path / "shapes"
    assert str(root.resolve()) == data["path"]
    for split, n in (("train", 12), ("val", 4)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels]
        for f in labels:
            lab = np.loadtxt(f, ndmin=2)
            assert 1 <= len(lab) <= 5 and lab.shape[1] == 5
            assert set(lab[:, 0]) <= set(range(len(NAMES)))
            xy, wh = lab[:, 1:3], lab[:, 3:5]
            assert (wh > 0).all() and (xy - wh / 2 >= 0).all() and (xy + wh / 2 <= 1 + 1e-6).all()


def test_rerun_with_fewer_images_leaves_no_stale_files(tmp_path):
    run(tmp_path / "d", n_train=6, n_val=2, imgsz=64)
    run(tmp_path / "d", n_train=3, n_val=1, imgsz=64)
    assert len(list((tmp_path / "d" / "images" / "train").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "d" / "labels" / "train").glob("*.txt"))) == 3


@pytest.mark.parametrize("cls", range(len(NAMES)))
def test_box_hugs_the_drawn_shape(cls):
    rng = np.random.default_rng(cls)
    for _ in range(10):
        s = Shape(cls, *rng.uniform(60, 100, 2), float(rng.uniform(10, 50)), float(rng.uniform(0, 6.3)), (255, 255, 255))
        canvas = np.zeros((160, 160, 3), np.uint8)
        draw_shape(canvas, s)
        ys, xs = np.nonzero(canvas[..., 0] > 127)  # pixels at least half covered
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        np.testing.assert_allclose(drawn, shape_box(s), atol=1.0)


def test_render_labels_come_from_the_shapes_drawn():
    size = 256
    for k in range(5):
        im, labels = render(np.random.default_rng(k), size)
        rng = np.random.default_rng(k)  # replay the same stream to recover the shapes
        shapes = random_shapes(rng, size, background(rng, size))
        assert im.shape == (size, size, 3) and im.dtype == np.uint8
        assert [s.cls for s in shapes] == labels[:, 0].astype(int).tolist()
        for s, lab in zip(shapes, labels):
            x1, y1, x2, y2 = shape_box(s) / size
            np.testing.assert_allclose(lab[1:], [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-9)
        top = shapes[-1]  # drawn last, never occluded: its centre pixel shows its colour (plus noise)
        assert np.abs(im[int(top.cy), int(top.cx)].astype(float) - top.color).max() < 60


def test_cli_flags_and_bad_input(tmp_path, capsys):
    opt = parse_opt(["--out", str(tmp_path / "s"), "--n-train", "2", "--n-val", "1", "--img", "64", "--seed", "1"])
    assert (opt.n_train, opt.n_val, opt.imgsz, opt.seed) == (2, 1, 64, 1)
    assert main(opt).is_file()
    assert "dataset yaml" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--n-train"):
        main(parse_opt(["--out", str(tmp_path / "bad"), "--n-train", "0"]))
