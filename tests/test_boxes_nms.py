"""Box geometry and NMS: conversions round trip, letterbox undo, NMS equal to a brute-force greedy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import utils.nms as nms_mod
from utils.augmentations import letterbox
from utils.benchmark.pipeline import Pipeline, load_images
from utils.boxes import (box_iou, clip_boxes, scale_boxes, xywh2xyxy, xywhn2xyxy, xyxy2xywh, xyxy2xywhn)
from utils.engines import load_engine
from utils.nms import nms, non_max_suppression


# ---------------------------------------------------------------- reference NMS (plain Python, no vectorisation)
def _iou(a: list[float], b: list[float], eps: float = 1e-7) -> float:
    """Same formula and evaluation order as box_iou so float64 results agree bit for bit."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + eps)


def _candidates(rows: list[list[float]], conf_thres: float, classes, multi_label: bool) -> list[tuple]:
    """(box, conf, cls) pairs in row order then class order, the order a stable sort keeps for ties."""
    out = []
    for row in rows:
        if not row[4] > conf_thres:
            continue
        cx, cy, w, h = row[:4]
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        scores = [c * row[4] for c in row[5:]]
        if multi_label:
            pairs = [(s, j) for j, s in enumerate(scores) if s > conf_thres]
        else:
            j = max(range(len(scores)), key=lambda k: (scores[k], -k))  # first maximum
            pairs = [(scores[j], j)] if scores[j] > conf_thres else []
        out += [(box, s, j) for s, j in pairs if classes is None or j in classes]
    return out


def reference_nms(pred: torch.Tensor, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                  multi_label=False, max_det=300) -> list[list[tuple]]:
    """Textbook greedy NMS per image: best first, drop anything overlapping a kept box of the same class."""
    results = []
    for rows in pred.tolist():
        cands = _candidates(rows, conf_thres, classes, multi_label and len(rows[0]) > 6)
        cands = sorted(cands, key=lambda c: -c[1])[: nms_mod.MAX_NMS]
        kept = []
        for c in cands:
            if all(not ((agnostic or k[2] == c[2]) and _iou(k[0], c[0]) > iou_thres) for k in kept):
                kept.append(c)
        results.append(kept[:max_det])
    return results


def random_predictions(seed: int, n: int = 400, nc: int = 4, bs: int = 2) -> torch.Tensor:
    """Raw (B, N, 5 + nc) outputs clustered around a few objects, so suppression really happens."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(bs, 6, 2, generator=g) * 560 + 40
    pick = torch.randint(0, 6, (bs, n), generator=g)
    xy = torch.gather(centres, 1, pick[..., None].expand(-1, -1, 2)) + torch.randn(bs, n, 2, generator=g) * 12
    wh = torch.rand(bs, n, 2, generator=g) * 80 + 20
    scores = torch.rand(bs, n, 1 + nc, generator=g)
    return torch.cat((xy, wh, scores), 2).double()


def _as_rows(det: torch.Tensor) -> list[tuple]:
    return [(r[:4], r[4], int(r[5])) for r in det.tolist()]


CASES = [
    dict(),
    dict(conf_thres=0.1, iou_thres=0.3),
    dict(multi_label=True, conf_thres=0.2),
    dict(agnostic=True, iou_thres=0.5),
    dict(classes=[0, 2]),
    dict(max_det=7, conf_thres=0.05),
    dict(multi_label=True, agnostic=True, conf_thres=0.3, iou_thres=0.6, max_det=20),
]


@pytest.fixture(params=["pairs", "rounds"])
def suppression(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both exact NMS paths: settled on the same-group pair list (few pairs), or round by round (many)."""
    if request.param == "rounds":
        monkeypatch.setattr(nms_mod, "CLUSTER_PAIRS", -1)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kwargs", CASES)
def test_nms_matches_reference(seed: int, kwargs: dict, suppression: str) -> None:
    pred = random_predictions(seed)
    got = non_max_suppression(pred, **kwargs)
    want = reference_nms(pred, **kwargs)
    for det, ref in zip(got, want):
        assert det.shape[1] == 6
        assert _as_rows(det) == ref


@pytest.mark.parametrize("kwargs", [dict(conf_thres=0.05, iou_thres=0.3), dict(multi_label=True, conf_thres=0.1)])
def test_nms_max_nms_cap_is_exact(monkeypatch: pytest.MonkeyPatch, kwargs: dict, suppression: str) -> None:
    """A small MAX_NMS exercises the per-image candidate cap (best scores first, each image on its own)."""
    monkeypatch.setattr(nms_mod, "MAX_NMS", 250)
    pred = random_predictions(5, n=400, nc=3, bs=3)
    for det, ref in zip(non_max_suppression(pred, **kwargs), reference_nms(pred, **kwargs)):
        assert _as_rows(det) == ref


@pytest.mark.parametrize("kwargs", [dict(max_det=7, conf_thres=0.05), dict(multi_label=True, max_det=20, conf_thres=0.1),
                                    dict(agnostic=True, max_det=5, conf_thres=0.05)])
def test_nms_max_det_pruning_is_exact(monkeypatch: pytest.MonkeyPatch, kwargs: dict, suppression: str) -> None:
    """Boxes past an image's max_det-th kept box are dropped every round here: output must not change."""
    monkeypatch.setattr(nms_mod, "PRUNE_EVERY", 1)
    pred = random_predictions(6, n=400, nc=3, bs=3)
    for det, ref in zip(non_max_suppression(pred, **kwargs), reference_nms(pred, **kwargs)):
        assert _as_rows(det) == ref
    boxes, scores = xywh2xyxy(pred[0, :, :4]), pred[0, :, 4]
    full = nms(boxes, scores, 0.45)
    assert nms(boxes, scores, 0.45, max_keep=9).tolist() == full[:9].tolist()


def test_nms_score_ties_keep_row_order() -> None:
    """Equal scores: the earlier prediction row wins, so results never depend on sort internals."""
    box = [100.0, 100.0, 40.0, 40.0, 0.9, 1.0]
    pred = torch.tensor([[box, [101.0, 100.0, 40.0, 40.0, 0.9, 1.0], [300.0, 300, 20, 20, 0.9, 1.0]]])
    (det,) = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5)
    assert det[:, 0].tolist() == [80.0, 290.0]


@pytest.fixture(scope="module")
def yolov5n_predictions(yolov5n_pt, coco128_dir) -> torch.Tensor:
    """Raw yolov5n outputs on two real coco128 images (the val use case: thousands of overlapping boxes)."""
    import cv2
    from utils.checkpoint import load_model
    images = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:2]
    batch = [letterbox(cv2.imread(str(p)), 256, auto=False)[0][:, :, ::-1].transpose(2, 0, 1) for p in images]
    x = torch.from_numpy(np.ascontiguousarray(np.stack(batch))).float() / 255
    with torch.no_grad():
        return load_model(yolov5n_pt)(x)[0]


@pytest.mark.parametrize("kwargs", [dict(conf_thres=0.01, iou_thres=0.6, multi_label=True),
                                    dict(conf_thres=0.01, iou_thres=0.45, agnostic=True, max_det=50),
                                    dict(conf_thres=0.01, iou_thres=0.6, multi_label=True, max_det=30)])
def test_nms_on_real_predictions_matches_reference(yolov5n_predictions: torch.Tensor, kwargs: dict) -> None:
    """Same detections as the textbook greedy loop on real model output (crowded, many classes); float64 so
    the reference's Python arithmetic is bit-identical."""
    pred = yolov5n_predictions.double()
    got, want = non_max_suppression(pred, **kwargs), reference_nms(pred, **kwargs)
    assert sum(len(d) for d in got) > 20
    for det, ref in zip(got, want):
        assert _as_rows(det) == ref


def test_nms_single_class_ignores_multi_label() -> None:
    pred = random_predictions(3, nc=1)
    for det, ref in zip(non_max_suppression(pred, multi_label=True), reference_nms(pred, multi_label=False)):
        assert _as_rows(det) == ref


def test_nms_float32_tuple_input_and_empty() -> None:
    pred = random_predictions(4).float()
    out = non_max_suppression((pred, [torch.zeros(1)]))
    assert len(out) == 2 and all(o.dtype == torch.float32 and o.shape[1] == 6 for o in out)
    assert all((o[1:, 4] <= o[:-1, 4]).all() for o in out)  # best first
    empty = non_max_suppression(pred, conf_thres=1.0)
    assert [tuple(o.shape) for o in empty] == [(0, 6), (0, 6)]


def test_nms_apriori_labels_are_kept_with_conf_one() -> None:
    pred = torch.zeros(1, 3, 7)  # nothing above threshold
    lb = torch.tensor([[1.0, 100, 100, 40, 20]])  # cls, cx, cy, w, h
    (det,) = non_max_suppression(pred, labels=[lb])
    assert det.tolist() == [[80.0, 90.0, 120.0, 110.0, 1.0, 1.0]]


def test_nms_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 2, 7), conf_thres=25)


def test_nms_groups_do_not_suppress_each_other() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.5, groups=torch.tensor([0, 1, 0])).tolist() == [0, 1]


# ---------------------------------------------------------------- boxes
@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_conversions_round_trip(lib: str) -> None:
    rng = np.random.default_rng(0)
    xywh = np.concatenate((rng.uniform(50, 590, (20, 2)), rng.uniform(1, 100, (20, 2))), 1)
    x = torch.from_numpy(xywh) if lib == "torch" else xywh
    xyxy = xywh2xyxy(x)
    assert type(xyxy) is type(x)
    np.testing.assert_allclose(np.asarray(xyxy2xywh(xyxy)), xywh, atol=1e-9)
    norm = xyxy2xywhn(xywhn2xyxy(x / 640, 640, 640), 640, 640)
    np.testing.assert_allclose(np.asarray(norm) * 640, xywh, atol=1e-9)
    np.testing.assert_allclose(np.asarray(xyxy)[:, 2:] - np.asarray(xyxy)[:, :2], xywh[:, 2:], atol=1e-9)


def test_xywhn_padding_and_clip() -> None:
    lab = np.array([[0.5, 0.5, 0.2, 0.4]])
    np.testing.assert_allclose(xywhn2xyxy(lab, w=100, h=50, padw=3, padh=7), [[43, 22, 63, 42]])
    out = xyxy2xywhn(np.array([[-10.0, -10, 50, 50]]), w=100, h=100, clip=True)
    np.testing.assert_allclose(out, [[0.25, 0.25, 0.5, 0.5]])


def test_box_iou_known_values_torch_and_numpy() -> None:
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3.0]])  # same, half, apart, empty
    np.testing.assert_allclose(box_iou(a, b)[0], [1, 1 / 3, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), box_iou(a, b))


@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_clip_boxes_in_place(lib: str) -> None:
    b = np.array([[-5.0, 2, 700, 500]])
    b = torch.from_numpy(b) if lib == "torch" else b
    clip_boxes(b, (480, 640))
    assert np.asarray(b).tolist() == [[0, 2, 640, 480]]


@pytest.mark.parametrize("shape", [(480, 640), (640, 427), (300, 300)])
def test_scale_boxes_undoes_letterbox(shape: tuple[int, int]) -> None:
    """Boxes mapped into a real letterboxed image come back to the original pixels, with or without ratio_pad."""
    im0 = np.zeros((*shape, 3), np.uint8)
    im, ratio, (dw, dh) = letterbox(im0, 320, auto=False)
    orig = torch.tensor([[10.0, 20, 200, 250], [0, 0, shape[1], shape[0]]])
    boxed = orig.clone()
    boxed[:, [0, 2]] = orig[:, [0, 2]] * ratio[0] + dw
    boxed[:, [1, 3]] = orig[:, [1, 3]] * ratio[1] + dh
    back = scale_boxes(im.shape[:2], boxed.clone(), shape, ratio_pad=(ratio, (dw, dh)))
    torch.testing.assert_close(back, orig, atol=1e-3, rtol=0)
    # Without ratio_pad the pad is re-derived without letterbox's integer rounding: off by <= 0.25 letterbox px.
    derived = scale_boxes(im.shape[:2], boxed.clone(), shape)
    torch.testing.assert_close(derived, orig, atol=0.25 / ratio[0] + 1e-3, rtol=0)


def test_scale_boxes_in_place_on_view_and_clips() -> None:
    """val.py relies on scale_boxes editing predn[:, :4] in place without using the return value."""
    predn = torch.tensor([[0.0, 80, 640, 560, 0.9, 3]])  # letterboxed 640x640 of a 480x640 image
    scale_boxes((640, 640), predn[:, :4], (480, 640))
    assert predn[:, :4].tolist() == [[0, 0, 640, 480]] and predn[0, 5] == 3
    far = np.array([[-50.0, -50, 900, 900]])
    scale_boxes((640, 640), far, (480, 640))
    assert far.tolist() == [[0, 0, 640, 480]]



@pytest.mark.parametrize("conf,multi_label,classes", [(0.25, False, None), (0.001, True, None), (0.001, False, [0, 5]),
                                                      (0.5, True, None)])
def test_numpy_candidates_equal_the_torch_path_on_real_outputs(yolov5n_pt, assets, conf, multi_label, classes):
    """Issue 21: candidate scoring in numpy (CPU) gives exactly the torch path's detections (the torch path still
    serves tensors that need grad or live on a GPU) on yolov5n's real outputs for bus.jpg and zidane.jpg."""
    pipe = Pipeline(load_engine(yolov5n_pt, "torch", imgsz=(640, 640)), (640, 640))
    pred = torch.from_numpy(pipe.infer(pipe.preprocess(load_images(assets / "images"))[0]))
    assert pred.shape[0] == 2
    fast = non_max_suppression(pred, conf, 0.45, classes, multi_label=multi_label, max_det=300)
    slow = non_max_suppression(pred.clone().requires_grad_(True), conf, 0.45, classes, multi_label=multi_label,
                                   max_det=300)
    assert sum(len(d) for d in fast) > 0
    for a, b in zip(fast, slow):
        assert torch.equal(a, b.detach())


def test_nms_pair_path_is_the_one_taken_for_few_candidates_and_agrees_with_rounds() -> None:
    """A few hundred clustered candidates go through the pair list; its kept mask is the round-by-round one."""
    pred = random_predictions(3, n=300, nc=2, bs=1)[0]
    boxes = xywh2xyxy(pred[:, :4]).numpy()
    order = np.argsort(-pred[:, 4].numpy(), kind="stable")
    boxes, groups = boxes[order], (pred[order, 5] > 0.5).long().numpy()
    images = np.zeros(len(boxes), np.int64)
    pairs = nms_mod._group_pairs(groups)
    assert pairs is not None and len(pairs[0]) == sum(k * (k - 1) // 2 for k in np.bincount(groups))
    assert np.all(groups[pairs[0]] == groups[pairs[1]]) and np.all(pairs[0] < pairs[1])
    rounds = nms_mod._greedy(boxes, groups, 0.45, images, None)
    assert 0 < rounds.sum() < len(boxes) // 2  # clustered: suppression happens
    assert np.array_equal(nms_mod._suppress(boxes, groups, 0.45, images, None), rounds)
