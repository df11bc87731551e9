"""AutoAnchor: BPR arithmetic on hand cases, k-means output shape/order, and anchors left alone when they fit."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from utils.autoanchor import anchor_metrics, check_anchor_order, check_anchors, kmean_anchors

COCO_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = [8.0, 16.0, 32.0]


def fake_model(anchors_px=COCO_ANCHORS) -> SimpleNamespace:
    """Object with the Detect attributes autoanchor uses: anchors buffer in grid units, stride tensor."""
    stride = torch.tensor(STRIDES)
    anchors = torch.tensor(anchors_px, dtype=torch.float32).view(3, 3, 2) / stride.view(-1, 1, 1)
    detect = SimpleNamespace(anchors=anchors, stride=stride, na=3, nl=3)
    return SimpleNamespace(model=[torch.nn.Identity(), detect])


def fake_dataset(wh_px: np.ndarray, img: int = 640) -> SimpleNamespace:
    """One square image per box so normalised w,h * img_size gives back wh_px exactly."""
    labels = [np.array([[0, 0.5, 0.5, w / img, h / img]]) for w, h in wh_px]
    return SimpleNamespace(shapes=np.full((len(labels), 2), img), labels=labels)


def test_anchor_metrics_hand_case():
    anchors = np.array([[10.0, 10.0], [100.0, 100.0]])
    wh = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 10.0], [1000.0, 1000.0]])
    # ratios vs anchors: 1/1, 1/3 and 3.3 (both pass thr=4); 50x10 vs 10x10 -> 0.2 fails, vs 100 -> 0.1 fails; 1000 -> 0.1 fails
    bpr, aat = anchor_metrics(wh, anchors, thr=4.0)
    assert bpr == pytest.approx(2 / 4)
    assert aat == pytest.approx((1 + 2 + 0 + 0) / 4)
    assert anchor_metrics(wh, anchors, thr=20.0)[0] == 1.0


def test_kmean_anchors_returns_sorted_fitting_anchors():
    rng = np.random.default_rng(1)
    clusters = np.array([[12, 16], [40, 30], [25, 60], [90, 70], [60, 140], [150, 110], [200, 260], [400, 300], [300, 500]])
    wh = np.concatenate([c * rng.uniform(0.85, 1.15, (40, 2)) for c in clusters])
    k = kmean_anchors(fake_dataset(wh), n=9, img_size=640, thr=4.0, gen=200, verbose=False)
    assert k.shape == (9, 2)
    area = k.prod(1)
    assert (np.diff(area) >= 0).all()
    assert anchor_metrics(wh, k)[0] == 1.0
    again = kmean_anchors(fake_dataset(wh), n=9, img_size=640, thr=4.0, gen=200, verbose=False)
    np.testing.assert_array_equal(k, again)  # seeded: reproducible


def test_kmean_anchors_falls_back_when_too_few_boxes(capsys):
    wh = np.array([[20.0, 20.0], [40.0, 40.0]])
    k = kmean_anchors(fake_dataset(wh), n=9, gen=50, verbose=False)
    assert "switching strategies from kmeans to random init" in capsys.readouterr().out  # 2 boxes < 9 clusters
    assert k.shape == (9, 2) and (k >= 2.0).all()
    assert (np.diff(k.prod(1)) >= 0).all()  # sorted by area
    bpr, _ = anchor_metrics(wh, k, 4.0)
    assert bpr == 1.0  # after evolution both boxes have an anchor within the 4x ratio the loss accepts
    assert np.array_equal(k, kmean_anchors(fake_dataset(wh), n=9, gen=50, verbose=False))  # seeded


def test_check_anchors_leaves_good_anchors_alone(capsys):
    rng = np.random.default_rng(0)
    wh = np.array(COCO_ANCHORS, dtype=float).reshape(-1, 2).repeat(20, 0) * rng.uniform(0.8, 1.25, (180, 2))
    model = fake_model()
    before = model.model[-1].anchors.clone()
    bpr = check_anchors(fake_dataset(wh), model, thr=4.0, imgsz=640)
    assert bpr > 0.98
    assert torch.equal(model.model[-1].anchors, before)
    out = capsys.readouterr().out
    assert "anchors/target" in out and "Best Possible Recall" in out and "good fit" in out


def test_check_anchors_replaces_poor_anchors():
    rng = np.random.default_rng(0)
    thin = np.array([[300.0, 20.0], [20.0, 300.0], [280.0, 30.0], [25.0, 310.0]])  # far from the COCO shapes
    wh = thin.repeat(30, 0) * rng.uniform(0.8, 1.25, (120, 2))
    model = fake_model()
    bpr = check_anchors(fake_dataset(wh), model, thr=4.0, imgsz=640)
    detect = model.model[-1]
    new_px = (detect.anchors * detect.stride.view(-1, 1, 1)).view(-1, 2).numpy()
    assert bpr > 0.98 and anchor_metrics(wh, new_px)[0] == pytest.approx(bpr)
    area = (detect.anchors * detect.stride.view(-1, 1, 1)).prod(-1).mean(-1)
    assert area[0] <= area[-1]  # small anchors stay on P3


def test_check_anchor_order_flips_reversed_levels():
    model = fake_model(COCO_ANCHORS[::-1])
    detect = model.model[-1]
    assert check_anchor_order(detect)
    expected = fake_model().model[-1].anchors
    torch.testing.assert_close(detect.anchors, expected)
    assert not check_anchor_order(detect)


def test_check_anchors_on_real_detect_head():
    yolo = pytest.importorskip("models.yolo")
    model = yolo.DetectionModel("yolov5n.yaml", nc=4)
    rng = np.random.default_rng(0)
    wh = np.array(COCO_ANCHORS, dtype=float).reshape(-1, 2).repeat(5, 0) * rng.uniform(0.9, 1.1, (45, 2))
    before = model.model[-1].anchors.clone()
    assert check_anchors(fake_dataset(wh), model, imgsz=640) > 0.98
    assert torch.equal(model.model[-1].anchors, before)


def test_label_wh_uses_hw_shape_order() -> None:
    """Datasets store (h, w); a landscape image's long side is its width (regression: it was read transposed)."""
    from utils.autoanchor import _label_wh

    ds = SimpleNamespace(shapes=np.array([[200, 400]]), labels=[np.array([[0, 0.5, 0.5, 0.5, 0.5]])])
    assert np.allclose(_label_wh(ds, 640), [[320.0, 160.0]])
