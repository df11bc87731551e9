"""End to end on a tiny synthetic dataset: dataloader -> predictions -> NMS -> matching -> mAP, checked against an
AP computed by hand with the 101-point COCO interpolation that utils/metrics.compute_ap uses."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.dataloaders import create_dataloader
from utils.evaluate import evaluate

SIZE = 64  # images are SIZE x SIZE and validated at SIZE: the letterbox is the identity, boxes stay in pixels
# ground truth, pixels xyxy, class 0
GT = {"a": [(8, 8, 24, 24), (36, 36, 60, 56)], "b": [(10, 30, 40, 50)]}
# (image, xyxy, confidence): GT a#0 exactly (TP), a box on empty background (FP), GT b#0 exactly (TP); a#1 missed
PRED = [("a", (8, 8, 24, 24), 0.9), ("a", (44, 2, 54, 12), 0.8), ("b", (10, 30, 40, 50), 0.7)]


def hand_ap() -> float:
    """Ranked TP, FP, TP over 3 ground truths: recall 1/3, 1/3, 2/3 and precision 1, 1/2, 2/3.
    The envelope (precision never rises with recall) is 1 up to recall 1/3, then 2/3 up to recall 2/3, then falls
    linearly to 0 at recall 1 (the appended end point). Sampled at r = k/100, k = 0..100:
      k = 0..33   -> 1           (34 samples)
      k = 34..66  -> 2/3         (33 samples)
      k = 67..100 -> 2 * (1 - r) (34 samples, summing to 2 * (0 + 1 + ... + 33) / 100 = 11.22)
    Trapezoid rule with step 1/100: (sum of samples - (first + last) / 2) / 100."""
    samples = 34 * 1 + 33 * (2 / 3) + 2 * (33 * 34 / 2) / 100
    return (samples - (1 + 0) / 2) / 100  # = 0.6672 (the continuous area would be 0.6667)


class FixedPredictions:
    """An engine (numpy in, decoded (B, N, 5 + nc) out) that returns PRED for whichever images it is given."""

    def __init__(self, pred: list = PRED) -> None:
        self.pred, self.calls = pred, []

    def __call__(self, imgs: np.ndarray) -> np.ndarray:
        out = np.zeros((len(imgs), 4, 6), np.float32)  # unused rows: confidence 0, dropped by NMS
        for i, img in enumerate(imgs):
            stem = "a" if img.mean() < 0.5 else "b"  # image a is dark, image b bright: the engine sees which
            self.calls.append(stem)
            rows = [(xyxy, c) for s, xyxy, c in self.pred if s == stem]
            for j, ((x1, y1, x2, y2), conf) in enumerate(rows):
                out[i, j] = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, conf, 1.0)  # xywh, obj, cls
        return out


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for stem, boxes in GT.items():
        im = np.full((SIZE, SIZE, 3), 40 if stem == "a" else 200, np.uint8)
        for x1, y1, x2, y2 in boxes:
            cv2.rectangle(im, (x1, y1), (x2, y2), (0, 255, 0), 1)
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.jpg"), im)
        (tmp_path / "labels" / f"{stem}.txt").write_text("".join(
            f"0 {(x1 + x2) / 2 / SIZE} {(y1 + y2) / 2 / SIZE} {(x2 - x1) / SIZE} {(y2 - y1) / SIZE}\n"
            for x1, y1, x2, y2 in boxes))
    return tmp_path / "images"


def test_hand_computed_map_end_to_end(dataset: Path) -> None:
    assert hand_ap() == pytest.approx(0.6672, abs=1e-12)
    loader, _ = create_dataloader(str(dataset), SIZE, 2, 32, rect=False, pad=0.0, workers=0)
    engine = FixedPredictions()
    res = evaluate(engine, loader, ["thing"], conf_thres=0.001, iou_thres=0.6)
    assert sorted(engine.calls) == ["a", "b"]
    assert (res["images"], res["instances"]) == (2, 3)
    # every match is at IoU 1.0, so the AP is the same at all ten IoU thresholds 0.5..0.95
    assert res["map50"] == pytest.approx(hand_ap(), abs=1e-9)
    assert res["map"] == pytest.approx(hand_ap(), abs=1e-9)
    assert res["per_class"][0][:2] == ("thing", 3)


def hand_ap_tp_fp_fp() -> float:
    """Ranked TP, FP, FP over 3 ground truths: recall 1/3, 1/3, 1/3, precision 1, 1/2, 1/3. Envelope 1 up to recall
    1/3, then linear from 1/3 (at recall 1/3) to 0 (at recall 1): (1 - r) / 2. Samples k = 0..33 -> 1 (34 of them),
    k = 34..100 -> (1 - k/100) / 2, summing to (0 + 1 + ... + 66) / 200 = 11.055."""
    return (34 + (66 * 67 / 2) / 200 - (1 + 0) / 2) / 100  # = 0.44555


def test_hand_computed_map50_95_with_a_loose_match(dataset: Path) -> None:
    """Image b's box now overlaps its ground truth at IoU 14.4/20 = 0.72: a TP at thresholds 0.50..0.70 (5 of 10),
    an FP at 0.75..0.95. mAP50-95 = (5 * 0.6672 + 5 * 0.44555) / 10."""
    pred = [PRED[0], PRED[1], ("b", (10, 30, 40, 44.4), 0.7)]
    loader, _ = create_dataloader(str(dataset), SIZE, 2, 32, rect=False, pad=0.0, workers=0)
    res = evaluate(FixedPredictions(pred), loader, ["thing"], conf_thres=0.001, iou_thres=0.6)
    assert res["map50"] == pytest.approx(hand_ap(), abs=1e-9)
    assert res["map"] == pytest.approx((5 * hand_ap() + 5 * hand_ap_tp_fp_fp()) / 10, abs=1e-6)
