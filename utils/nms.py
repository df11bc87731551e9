"""Detection post-processing: Ultralytics v7.0 non-max suppression without torchvision and without a time limit."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from utils.boxes import box_iou, xywh2xyxy

MAX_NMS = 30000  # boxes entering NMS per image, highest confidence first (Ultralytics max_nms)
BLOCK = 1024  # boxes resolved together per class; bounds memory at BLOCK x kept instead of N x N


def _check_thresholds(conf_thres: float, iou_thres: float) -> None:
    """Fail early with the fix, since a threshold outside [0, 1] silently keeps nothing or everything."""
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} is outside [0, 1]; pass e.g. --conf-thres 0.25")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} is outside [0, 1]; pass e.g. --iou-thres 0.45")


def _append_labels(x: torch.Tensor, lb: torch.Tensor, nc: int) -> torch.Tensor:
    """Add ground-truth rows (cls, cx, cy, w, h) as certain detections, for hybrid autolabelling (val --save-hybrid)."""
    v = torch.zeros((len(lb), nc + 5), dtype=x.dtype, device=x.device)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=x.device), lb[:, 0].long() + 5] = 1.0
    return torch.cat((x, v), 0)


def _score(x: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """Rows (x1, y1, x2, y2, conf, cls) with conf = obj * cls above threshold; every passing class if multi_label."""
    cls_conf = x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (cls_conf > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], cls_conf[i, j, None], j[:, None].to(x.dtype)), 1)
    conf, j = cls_conf.max(1, keepdim=True)
    return torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]


def _suppressed_by(kept: np.ndarray, boxes: np.ndarray, iou_thres: float) -> np.ndarray:
    """Which boxes overlap an already kept box (chunked so kept x block stays small)."""
    out = np.zeros(len(boxes), dtype=bool)
    for s in range(0, len(kept), 4 * BLOCK):
        out |= (box_iou(kept[s : s + 4 * BLOCK], boxes) > iou_thres).any(0)
    return out


def _greedy_block(boxes: np.ndarray, iou_thres: float) -> np.ndarray:
    """Exact greedy resolution inside one score-sorted block: a box survives unless a kept better box covers it."""
    over = np.triu(box_iou(boxes, boxes) > iou_thres, 1)
    removed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in range(len(removed)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return np.array(keep, dtype=np.int64)


def _split_by_group(groups: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(group, positions) pairs; positions stay ascending, i.e. best score first within each group."""
    by_group = np.argsort(groups, kind="stable")
    values, starts = np.unique(groups[by_group], return_index=True)
    return list(zip(values.tolist(), np.split(by_group, starts[1:])))


def _greedy(boxes: np.ndarray, groups: np.ndarray, iou_thres: float, max_keep: int | None) -> np.ndarray:
    """Greedy NMS over score-sorted boxes, block by block in score order, stopping once max_keep survive.

    Within a block each group is resolved only against its own kept boxes, so the cost is ~kept x block per
    class rather than across classes, and the early stop still sees the global score order.
    """
    kept: dict[int, np.ndarray] = {}
    keep, total = [], 0
    for start in range(0, len(boxes), BLOCK):
        b = boxes[start : start + BLOCK]
        for c, idx in _split_by_group(groups[start : start + BLOCK]):
            prior = kept.get(c, b[:0])
            alive = idx[~_suppressed_by(prior, b[idx], iou_thres)]  # skip the already dead
            local = alive[_greedy_block(b[alive], iou_thres)]
            kept[c] = np.concatenate((prior, b[local]))
            keep.append(local + start)
            total += len(local)
        if max_keep is not None and total >= max_keep:
            break
    keep_sorted = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)  # groups interleave in a block
    return keep_sorted[:max_keep]


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_thres: float,
    groups: torch.Tensor | None = None,
    max_keep: int | None = None,
) -> torch.Tensor:
    """Greedy NMS where boxes only suppress boxes of their own group; indices of kept boxes, best score first.

    Never builds an N x N IoU matrix (30000 candidates would need GBs). Runs in numpy: thousands of tiny ops
    are several times slower through torch's thread pool on a busy CPU. Ties in score keep input order
    (stable sort) so results are reproducible.
    """
    order = scores.argsort(descending=True, stable=True)
    np_boxes = boxes[order].detach().cpu().numpy()
    np_groups = np.zeros(len(order), np.int64) if groups is None else groups[order].long().cpu().numpy()
    keep = _greedy(np_boxes, np_groups, iou_thres, max_keep)
    return order[torch.from_numpy(keep).to(order.device)]


def non_max_suppression(
    prediction: torch.Tensor | Sequence[torch.Tensor],
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    labels: Sequence[torch.Tensor] = (),
    max_det: int = 300,
) -> list[torch.Tensor]:
    """Per image (n, 6) x1, y1, x2, y2, conf, cls from raw (B, N, 5 + nc) predictions, Ultralytics v7.0 selection.

    Unlike Ultralytics there is no time budget: slow hosts get the same detections as fast ones.
    """
    _check_thresholds(conf_thres, iou_thres)
    if isinstance(prediction, (list, tuple)):  # eval forward returns (pred, raw)
        prediction = prediction[0]
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1
    output = []
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]
        if labels and len(labels[xi]):
            x = _append_labels(x, labels[xi], nc)
        x = _score(x, conf_thres, multi_label) if len(x) else x.new_zeros((0, 6))
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, dtype=x.dtype, device=x.device)).any(1)]
        x = x[x[:, 4].argsort(descending=True, stable=True)[:MAX_NMS]]
        groups = None if agnostic else x[:, 5].long()
        output.append(x[nms(x[:, :4], x[:, 4], iou_thres, groups, max_det)])
    return output
