"""Detection metrics with Ultralytics v7.0 semantics, so our mAP numbers compare one to one with upstream YOLOv5."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from utils.boxes import box_iou

Names = Mapping[int, str] | Sequence[str]


def fitness(x: np.ndarray) -> np.ndarray:
    """Single score per row of [P, R, mAP@0.5, mAP@0.5:0.95, ...] that picks best.pt (mAP@0.5:0.95 dominates)."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x)[:, :4] * w).sum(1)


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter over a fraction f of the curve so the max-F1 point is not picked on noise."""
    nf = round(len(y) * f * 2) // 2 + 1  # odd number of taps
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def _unique_matches(matches: np.ndarray, resort_labels: bool) -> np.ndarray:
    """One label per detection (highest IoU), then one detection per label, rows of (label, det, iou).

    Labels keep their lowest-index detection (the most confident after NMS) unless resort_labels, exactly as
    Ultralytics val.py (no re-sort) and ConfusionMatrix (re-sort by IoU) differ.
    """
    if len(matches) < 2:
        return matches
    matches = matches[np.argsort(-matches[:, 2], kind="stable")]
    matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
    if resort_labels:
        matches = matches[np.argsort(-matches[:, 2], kind="stable")]
    return matches[np.unique(matches[:, 0], return_index=True)[1]]


def _match_rows(iou: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(label, det, iou) rows for every pair allowed by mask, the input of _unique_matches."""
    li, di = torch.where(mask)
    return torch.stack((li.to(iou.dtype), di.to(iou.dtype), iou[li, di]), 1).cpu().numpy()


def box_match(
    detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, iouv: torch.Tensor | np.ndarray
) -> torch.Tensor | np.ndarray:
    """TP flags (n_det, len(iouv)) per IoU threshold: same class, IoU >= thr, one-to-one (Ultralytics process_batch).

    detections (n, 6) x1, y1, x2, y2, conf, cls sorted by conf; labels (m, 5) cls, x1, y1, x2, y2. Returns a
    torch bool tensor on iouv's device for torch detections, else a numpy bool array.
    """
    as_torch = isinstance(detections, torch.Tensor)
    det, lab, thr = torch.as_tensor(detections), torch.as_tensor(labels), torch.as_tensor(iouv)
    correct = np.zeros((len(det), len(thr)), dtype=bool)
    iou = box_iou(lab[:, 1:].to(det), det[:, :4])
    same_class = lab[:, 0:1].to(det) == det[:, 5]
    for i in range(len(thr)):
        matches = _unique_matches(_match_rows(iou, (iou >= thr[i]) & same_class), resort_labels=False)
        correct[matches[:, 1].astype(int), i] = True
    return torch.tensor(correct, dtype=torch.bool, device=thr.device) if as_torch else correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP as COCO does it: 101-point interpolation of the monotone precision envelope; returns ap, mpre, mrec."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # envelope: precision never rises with recall
    x = np.linspace(0, 1, 101)
    return float(np.trapz(np.interp(x, mrec, mpre), x)), mpre, mrec


def _class_curves(
    tp: np.ndarray, conf: np.ndarray, n_labels: int, px: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One class, predictions sorted by conf: AP per IoU column, P and R vs confidence, P vs recall (for plots)."""
    tpc = tp.cumsum(0)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / (n_labels + eps)
    precision = tpc / (tpc + fpc)
    r = np.interp(-px, -conf, recall[:, 0], left=0)  # negated because conf decreases
    p = np.interp(-px, -conf, precision[:, 0], left=1)
    ap = np.zeros(tp.shape[1])
    for j in range(tp.shape[1]):
        ap[j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
        if j == 0:
            pr_curve = np.interp(px, mrec, mpre)
    return ap, p, r, pr_curve


def _names_with_data(names: Names, unique_classes: np.ndarray) -> dict[int, str]:
    """Legend names re-indexed to the classes present in the labels, as the curve rows are."""
    named = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    return dict(enumerate(v for k, v in named.items() if k in unique_classes))


def ap_per_class(
    tp: np.ndarray,
    conf: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
    names: Names = (),
    eps: float = 1e-16,
    on_curves: Callable[..., None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class tp, fp, P, R, F1 (at the max mean-F1 confidence), AP (nc, n_iou) and classes, Ultralytics v7.0."""
    tp, conf, pred_cls = np.asarray(tp), np.asarray(conf), np.asarray(pred_cls)
    if tp.ndim == 1:
        tp = tp[:, None]
    i = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes, nt = np.unique(np.asarray(target_cls), return_counts=True)
    nc = len(unique_classes)
    px, py = np.linspace(0, 1, 1000), np.zeros((nc, 1000))  # py: precision vs recall, plots only
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        mask = pred_cls == c
        if mask.sum() == 0 or nt[ci] == 0:
            continue
        ap[ci], p[ci], r[ci], py[ci] = _class_curves(tp[mask], conf[mask], nt[ci], px, eps)
    f1 = 2 * p * r / (p + r + eps)
    if on_curves is not None:  # e.g. utils.plots_metrics.curve_plotter: PR/F1/P/R curves, drawn a layer above
        on_curves(px, py, ap, p, r, f1, _names_with_data(names, unique_classes))
    i = smooth(f1.mean(0), 0.1).argmax() if nc else 0
    p, r, f1 = p[:, i], r[:, i], f1[:, i]
    tp = (r * nt).round()
    fp = (tp / (p + eps) - tp).round()
    return tp, fp, p, r, f1, ap, unique_classes.astype(int)


class ConfusionMatrix:
    """(nc+1) x (nc+1) counts, rows predicted, columns true, last row/column background, for val's matrix plot."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) x1, y1, x2, y2, conf, cls; labels (m, 5) cls, x1, y1, x2, y2.

        detections=None (nothing predicted) takes labels as (m, 5) or a (m,) class vector: all missed.
        Unmatched confident detections always count as background FP (Ultralytics v7.0 skipped them when no
        detection in the image matched anything, under-counting FPs).
        """
        labels = torch.as_tensor(labels)
        if detections is None:
            gt = labels[:, 0] if labels.ndim == 2 else labels
            for gc in gt.int().tolist():
                self.matrix[self.nc, gc] += 1
            return
        detections = torch.as_tensor(detections)
        detections = detections[detections[:, 4] > self.conf]
        gt_classes, det_classes = labels[:, 0].int().tolist(), detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:].to(detections), detections[:, :4])
        m = _unique_matches(_match_rows(iou, iou > self.iou_thres), resort_labels=True).astype(int)
        label_to_det = dict(zip(m[:, 0].tolist(), m[:, 1].tolist()))
        for li, gc in enumerate(gt_classes):
            row = det_classes[label_to_det[li]] if li in label_to_det else self.nc
            self.matrix[row, gc] += 1
        matched = set(label_to_det.values())
        for di, dc in enumerate(det_classes):
            if di not in matched:
                self.matrix[dc, self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class TP and FP counts without the background class."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def print(self) -> None:
        """Dump the raw counts, one predicted class per line."""
        for row in self.matrix:
            print(" ".join(map(str, row)))
