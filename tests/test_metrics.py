"""Detection metrics: hand-computed AP, Ultralytics matching rules, the 0.995 ceiling, confusion matrix, plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from utils.metrics import ConfusionMatrix, ap_per_class, box_match, compute_ap, fitness, smooth
from utils.plots_metrics import curve_plotter, plot_confusion

IOUV = torch.linspace(0.5, 0.95, 10)


def test_compute_ap_hand_computed() -> None:
    """One class, 2 labels, predictions by conf: TP, FP, TP.

    recall = [.5, .5, 1], precision = [1, .5, 2/3]. With sentinels mrec = [0, .5, .5, 1, 1] and the envelope
    mpre = [1, 1, 2/3, 2/3, 0]. Sampled at x = k/100 with np.interp: 1 for k < 50, 2/3 for 50 <= k < 100 and
    0 at k = 100 (np.interp takes the last duplicate, the 0 sentinel). Trapezoids of width 0.01:
    49 * 0.01 * 1 + 0.01 * (1 + 2/3) / 2 + 49 * 0.01 * 2/3 + 0.01 * (2/3 + 0) / 2 = 248.5 / 300 = 497 / 600.
    """
    ap, mpre, mrec = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(497 / 600, abs=1e-12)
    np.testing.assert_allclose(mpre, [1, 1, 2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(mrec, [0, 0.5, 0.5, 1, 1])


def test_ap_per_class_hand_computed() -> None:
    """Same case through ap_per_class, with predictions given out of order (it must sort by conf)."""
    tp = np.array([[1], [1], [0]], dtype=float)
    conf = np.array([0.9, 0.7, 0.8])
    tp_out, fp_out, p, r, f1, ap, classes = ap_per_class(tp, conf, np.zeros(3), np.zeros(2))
    assert ap.shape == (1, 1) and ap[0, 0] == pytest.approx(497 / 600, abs=1e-12)
    assert classes.tolist() == [0]
    assert p[0] == pytest.approx(2 / 3, abs=1e-6) and r[0] == pytest.approx(1.0, abs=1e-6)  # best F1 at conf <= .7
    assert tp_out.tolist() == [2.0] and fp_out.tolist() == [1.0]


def test_perfect_predictions_hit_the_ultralytics_ceiling() -> None:
    """Perfect detections give AP 0.995, not 1.0: the recall=1 sentinel (precision 0) is sampled at x = 1.

    Only the last of 100 trapezoids loses half its area: 1 - 0.01 / 2 = 0.995. Upstream YOLOv5 reports the same.
    """
    n = 6
    tp = np.ones((n, 10), dtype=bool)
    conf = np.linspace(0.95, 0.5, n)
    pred_cls = np.array([0, 1, 2, 0, 1, 2])
    tp_out, fp_out, p, r, f1, ap, classes = ap_per_class(tp, conf, pred_cls, pred_cls.copy())
    np.testing.assert_allclose(ap, 0.995, atol=1e-12)
    np.testing.assert_allclose(p, 1.0, atol=1e-9)
    np.testing.assert_allclose(r, 1.0, atol=1e-9)
    assert tp_out.tolist() == [2, 2, 2] and fp_out.tolist() == [0, 0, 0]


def test_ap_per_class_missing_predictions_and_extra_classes() -> None:
    """A labelled class never predicted scores 0; a predicted class with no labels is ignored."""
    tp = np.array([[1], [0]], dtype=float)
    conf = np.array([0.9, 0.8])
    _, _, p, r, _, ap, classes = ap_per_class(tp, conf, np.array([0, 5]), np.array([0, 1]))
    assert classes.tolist() == [0, 1]
    assert ap[0, 0] == pytest.approx(0.995) and ap[1, 0] == 0 and r[1] == 0


def test_ap_per_class_no_labels() -> None:
    out = ap_per_class(np.zeros((3, 10), bool), np.array([0.5, 0.4, 0.3]), np.zeros(3), np.zeros(0))
    assert all(len(x) == 0 for x in out)


def _det(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_box_match_exact_and_wrong_class() -> None:
    labels = _det([0, 10, 10, 50, 50])
    assert box_match(_det([10, 10, 50, 50, 0.9, 0]), labels, IOUV).all()
    assert not box_match(_det([10, 10, 50, 50, 0.9, 1]), labels, IOUV).any()


def test_box_match_thresholds_inclusive_of_lower_levels() -> None:
    """IoU 0.62 passes 0.50, 0.55, 0.60 and fails from 0.65 up."""
    out = box_match(_det([0, 0, 10, 6.2, 0.9, 0]), _det([0, 0, 0, 10, 10]), IOUV)
    assert out.dtype == torch.bool and out.shape == (1, 10)
    assert out[0].tolist() == [True] * 3 + [False] * 7


def test_box_match_one_label_goes_to_the_most_confident_detection() -> None:
    """Ultralytics keeps the lowest-index (most confident) detection per label, even if a later one fits better.

    det0 IoU 0.72 conf 0.9, det1 IoU 0.92 conf 0.8, one label: at 0.5..0.7 det0 wins; above, only det1 qualifies.
    """
    labels = _det([0, 0, 0, 10, 10])
    dets = _det([0, 0, 10, 7.2, 0.9, 0], [0, 0, 10, 9.2, 0.8, 0])
    out = box_match(dets, labels, IOUV).numpy()
    assert out[0].tolist() == [True] * 5 + [False] * 5  # 0.5, 0.55, 0.6, 0.65, 0.7
    assert out[1].tolist() == [False] * 5 + [True] * 4 + [False]  # 0.75 .. 0.9, not 0.95


def test_box_match_detection_takes_its_best_label() -> None:
    """A detection between two labels takes the higher-IoU one, leaving the other for the next detection."""
    labels = _det([0, 0, 0, 10, 10], [0, 4, 0, 14, 10])
    dets = _det([3, 0, 13, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0])  # det0: IoU .54 / .82 ; det1: IoU 1 / .43
    out = box_match(dets, labels, IOUV)
    assert out[:, 0].tolist() == [True, True]


def test_box_match_empty_and_numpy() -> None:
    assert box_match(torch.zeros(0, 6), _det([0, 0, 0, 1, 1]), IOUV).shape == (0, 10)
    assert not box_match(_det([0, 0, 1, 1, 0.5, 0]), torch.zeros(0, 5), IOUV).any()
    out = box_match(np.array([[0, 0, 10, 10, 0.9, 2.0]]), np.array([[2, 0, 0, 10, 10.0]]), IOUV.numpy())
    assert isinstance(out, np.ndarray) and out.all()


def test_fitness_weights_map() -> None:
    x = np.array([[1.0, 1.0, 0.5, 0.3], [0, 0, 1, 0]])
    np.testing.assert_allclose(fitness(x), [0.05 + 0.27, 0.1])


def test_smooth_keeps_constants_and_length() -> None:
    y = np.full(1000, 0.4)
    out = smooth(y, 0.1)
    assert out.shape == y.shape and np.allclose(out, 0.4)


def test_confusion_matrix_counts() -> None:
    """Rows predicted, columns true, index nc = background."""
    cm = ConfusionMatrix(nc=3, conf=0.25, iou_thres=0.45)
    labels = _det([0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [2, 50, 50, 60, 60])
    dets = _det(
        [0, 0, 10, 10, 0.9, 0],  # correct class 0
        [20, 20, 30, 30, 0.8, 2],  # label 1 predicted as 2
        [80, 80, 90, 90, 0.7, 1],  # background predicted as 1
        [50, 50, 60, 60, 0.1, 2],  # below conf: ignored, so label 2 is missed
    )
    cm.process_batch(dets, labels)
    cm.process_batch(None, torch.tensor([1.0]))  # image with no detections
    m = cm.matrix
    assert m[0, 0] == 1 and m[2, 1] == 1 and m[1, 3] == 1 and m[3, 2] == 1 and m[3, 1] == 1
    assert m.sum() == 5
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 1, 1]


def test_confusion_matrix_counts_background_fp_without_any_match() -> None:
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(_det([100, 100, 120, 120, 0.9, 1]), _det([0, 0, 0, 10, 10]))
    assert cm.matrix[1, 2] == 1 and cm.matrix[2, 0] == 1


def test_plots_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.plots_metrics

    monkeypatch.setattr(utils.plots_metrics, "DPI", 60)  # same drawing, a fraction of the rendering time
    rng = np.random.default_rng(0)
    tp = rng.random((40, 10)) > 0.4
    conf = rng.random(40)
    pred_cls = rng.integers(0, 3, 40)
    ap_per_class(tp, conf, pred_cls, rng.integers(0, 3, 30), names=["a", "b", "c"], on_curves=curve_plotter(tmp_path))
    cm = ConfusionMatrix(nc=3)
    cm.process_batch(_det([0, 0, 10, 10, 0.9, 0]), _det([0, 0, 0, 10, 10]))
    plot_confusion(cm, save_dir=tmp_path, names={0: "a", 1: "b", 2: "c"})
    for name in ("PR_curve", "F1_curve", "P_curve", "R_curve", "confusion_matrix"):
        f = tmp_path / f"{name}.png"
        assert f.is_file() and f.stat().st_size > 2_000, name
