"""Detection post-processing: Ultralytics v7.0 non-max suppression without torchvision and without a time limit."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from utils.boxes import xywh2xyxy
from utils.raw_head import RawPrediction

MAX_NMS = 30000  # boxes entering NMS per image, highest confidence first (Ultralytics max_nms)
PRUNE_EVERY = 8  # NMS rounds between max_det cut-offs (each costs a pass over the kept boxes)
CLUSTER_PAIRS = 65536  # same-group box pairs up to which NMS settles on the pair list (_cluster), not in rounds


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


def _score(x: torch.Tensor, conf_thres: float, multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (x1, y1, x2, y2, conf, cls) with conf = obj * cls above threshold (every passing class if multi_label),
    and the input row each came from."""
    cls_conf = x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (cls_conf > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], cls_conf[i, j, None], j[:, None].to(x.dtype)), 1), i
    conf, j = cls_conf.max(1, keepdim=True)
    keep = (conf.view(-1) > conf_thres).nonzero(as_tuple=False).view(-1)
    return torch.cat((box, conf, j.to(x.dtype)), 1)[keep], keep


def _score_numpy(x: np.ndarray, conf_thres: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """_score in numpy, value for value (same float ops, same row and class order, first maximum on ties).

    numpy runs these small ops on the calling thread; torch splits tensors over ~32k elements (a few hundred
    candidate rows x 80 classes) across its intra-op threads, and on a busy machine each such op waits for a
    core: 1 ms of NMS became 20-60 ms at times under foreign load, and it competes with the engine's threads.
    """
    cls_conf = x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (cls_conf > conf_thres).nonzero()
        return np.concatenate((box[i], cls_conf[i, j, None], j[:, None].astype(x.dtype)), 1), i
    j = cls_conf.argmax(1)[:, None]
    conf = np.take_along_axis(cls_conf, j, 1)
    keep = np.flatnonzero(conf[:, 0] > conf_thres)
    return np.concatenate((box, conf, j.astype(x.dtype)), 1)[keep], keep


def _candidates(prediction: torch.Tensor | RawPrediction, conf_thres: float, multi_label: bool,
                labels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scored rows of the whole batch and their image index, image by image in prediction row order.

    One pass over the batch instead of one per image: per-image tensor calls cost more than the work at
    conf_thres 0.001. A raw-head prediction decodes only the cells that pass objectness.
    """
    if isinstance(prediction, RawPrediction):
        if not (labels and any(len(lb) for lb in labels)):
            rows, img = prediction.candidates(conf_thres)
            x, src = _score_numpy(rows, conf_thres, multi_label)
            return torch.from_numpy(x), torch.from_numpy(img[src])
        prediction = torch.from_numpy(prediction.dense())
    nc = prediction.shape[2] - 5
    if labels and any(len(lb) for lb in labels):  # rare (val --save-hybrid): label rows go after each image's rows
        rows, images = [], []
        for xi, x in enumerate(prediction):
            x = x[x[:, 4] > conf_thres]
            x = _append_labels(x, labels[xi], nc) if len(labels[xi]) else x
            r = _score(x, conf_thres, multi_label)[0] if len(x) else x.new_zeros((0, 6))
            rows.append(r)
            images.append(torch.full((len(r),), xi, dtype=torch.long, device=x.device))
        return torch.cat(rows, 0), torch.cat(images, 0)
    if prediction.device.type == "cpu" and not prediction.requires_grad:  # numpy: one thread, no waits (_score_numpy)
        p = prediction.numpy()
        img, row = (p[..., 4] > conf_thres).nonzero()  # objectness first: decode and score only these rows
        x, src = _score_numpy(p[img, row], conf_thres, multi_label)
        return torch.from_numpy(x), torch.from_numpy(img[src])
    img, row = (prediction[..., 4] > conf_thres).nonzero(as_tuple=True)
    if not len(img):
        return prediction.new_zeros((0, 6)), img
    x, src = _score(prediction[img, row], conf_thres, multi_label)
    return x, img[src]


def _starts(groups: np.ndarray) -> np.ndarray:
    """Positions where a new value begins in a grouped (sorted) array."""
    if not len(groups):
        return np.zeros(0, np.int64)
    change = np.empty(len(groups), dtype=bool)
    change[0] = True
    np.not_equal(groups[1:], groups[:-1], out=change[1:])
    return np.flatnonzero(change)


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... restarting at every new value of a grouped (sorted) array."""
    starts = _starts(groups)
    return np.arange(len(groups)) - np.repeat(starts, np.diff(starts, append=len(groups)))


def _corners_and_area(xyxy: np.ndarray) -> np.ndarray:
    """(5, n): x1, y1, x2, y2 and area as contiguous rows, so each NMS round is a few flat ufunc passes."""
    c = np.empty((5, len(xyxy)), dtype=xyxy.dtype)
    c[:4] = xyxy.T
    np.multiply(c[2] - c[0], c[3] - c[1], out=c[4])  # width * height, as box_iou computes areas
    return c


def _iou_rows(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """IoU of column i of a with column i of b (both from _corners_and_area).

    Follows utils.boxes.box_iou operation for operation (inter / (area_a + area_b - inter + eps)), so every
    NMS decision is bit-identical to one taken from a full IoU matrix.
    """
    w = np.minimum(a[2], b[2])
    w -= np.maximum(a[0], b[0])
    np.maximum(w, 0, out=w)
    h = np.minimum(a[3], b[3])
    h -= np.maximum(a[1], b[1])
    np.maximum(h, 0, out=h)
    w *= h  # intersection
    union = a[4] + b[4]
    union -= w
    union += eps
    return np.divide(w, union, out=w)


def _greedy(boxes: np.ndarray, groups: np.ndarray, iou_thres: float, images: np.ndarray,
            max_keep: int | None) -> np.ndarray:
    """Exact greedy NMS of boxes sorted by image then score, every group at once: kept mask.

    Each round the best remaining box of every group is kept (nothing better is left to suppress it) and
    removes the boxes of its group it overlaps. Rounds = the most boxes any group keeps, and each round
    costs one vectorised pass over the survivors, so no N x N matrix and no Python loop per box. Boxes
    ranked past an image's max_keep-th kept box are dropped on the way: they can never be output, and
    they could only have suppressed boxes ranked even lower.
    """
    keep = np.zeros(len(boxes), dtype=bool)
    idx = np.argsort(groups, kind="stable")  # group by group, score order inside each
    c, g = _corners_and_area(boxes[idx]), groups[idx]
    rounds = 0
    while len(idx):
        starts = _starts(g)
        keep[idx[starts]] = True
        heads = np.repeat(c[:, starts], np.diff(starts, append=len(g)), axis=1)  # each box's group head
        alive = ~(_iou_rows(heads, c) > iou_thres)  # not "<=": a NaN IoU suppresses nothing, as before
        alive[starts] = False
        rounds += 1
        if max_keep is not None and rounds % PRUNE_EVERY == 0:
            alive &= idx <= _cutoffs(keep, images, max_keep)[images[idx]]
        idx, c, g = idx[alive], c[:, alive], g[alive]
    return keep


def _suppress(boxes: np.ndarray, groups: np.ndarray, iou_thres: float, images: np.ndarray,
              max_keep: int | None) -> np.ndarray:
    """Kept mask of exact greedy NMS (boxes sorted by image then score): from the list of overlapping same-group
    pairs when there are few (yolov5s on bus.jpg, 183 candidates: post 0.85 -> 0.57 ms), else round by round.
    max_keep only lets the round-by-round path drop boxes early; callers cut the kept boxes to it either way."""
    pairs = _group_pairs(groups)
    if pairs is None:
        return _greedy(boxes, groups, iou_thres, images, max_keep)
    return _cluster(boxes, *pairs, iou_thres)


def _group_pairs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Every (better, worse) index pair of boxes sharing a group, or None past CLUSTER_PAIRS."""
    order = np.argsort(groups, kind="stable")  # group by group; inside a group, input (score) order
    starts = _starts(groups[order])
    sizes = np.diff(starts, append=len(groups))
    if int((sizes * (sizes - 1) // 2).sum()) > CLUSTER_PAIRS:
        return None
    ends = np.repeat(starts + sizes, sizes)  # each sorted position's group end
    later = ends - np.arange(len(groups)) - 1  # boxes after it in its group
    first = np.repeat(np.arange(len(groups)), later)
    offset = np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    return order[first], order[first + 1 + offset]


def _cluster(boxes: np.ndarray, better: np.ndarray, worse: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS settled on a pair list (Cluster-NMS): a box is kept when no kept better box of its group overlaps
    it. Iterating that rule from 'all kept' fixes boxes in score order and ends on greedy's exact answer, usually in
    a few passes; IoUs come from _iou_rows, so every decision is the one _greedy takes."""
    c = _corners_and_area(boxes)
    hit = _iou_rows(c[:, better], c[:, worse]) > iou_thres
    better, worse = better[hit], worse[hit]
    keep = np.ones(len(boxes), dtype=bool)
    while True:
        new = np.ones(len(boxes), dtype=bool)
        new[worse[keep[better]]] = False
        if np.array_equal(new, keep):
            return keep
        keep = new


def _cutoffs(keep: np.ndarray, images: np.ndarray, max_keep: int) -> np.ndarray:
    """Per image, the position of its max_keep-th kept box so far (len(keep) while it has fewer)."""
    kept = np.flatnonzero(keep)
    nth = kept[_rank_in_group(images[kept]) == max_keep - 1]
    cut = np.full(int(images.max()) + 1, len(keep))
    cut[images[nth]] = nth
    return cut


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_thres: float,
    groups: torch.Tensor | None = None,
    max_keep: int | None = None,
) -> torch.Tensor:
    """Greedy NMS where boxes only suppress boxes of their own group; indices of kept boxes, best score first.

    Never builds an N x N IoU matrix (30000 candidates would need GBs). Ties in score keep input order
    (stable sort) so results are reproducible.
    """
    order = scores.argsort(descending=True, stable=True)
    one_image = np.zeros(len(order), np.int64)
    np_groups = one_image if groups is None else groups[order].long().cpu().numpy()
    keep = _suppress(boxes[order].detach().cpu().numpy(), np_groups, iou_thres, one_image, max_keep)
    return order[torch.from_numpy(np.flatnonzero(keep)[:max_keep]).to(order.device)]


def non_max_suppression(
    prediction: torch.Tensor | Sequence[torch.Tensor] | RawPrediction,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    labels: Sequence[torch.Tensor] = (),
    max_det: int = 300,
) -> list[torch.Tensor]:
    """Per image (n, 6) x1, y1, x2, y2, conf, cls from (B, N, 5 + nc) predictions (or a raw-head engine's maps),
    Ultralytics v7.0 selection.

    Unlike Ultralytics there is no time budget: slow hosts get the same detections as fast ones. The whole
    batch is suppressed in one greedy pass with groups (image, class), or (image) when agnostic.
    """
    _check_thresholds(conf_thres, iou_thres)
    if isinstance(prediction, (list, tuple)):  # eval forward returns (pred, raw)
        prediction = prediction[0]
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    x, img = _candidates(prediction, conf_thres, multi_label and nc > 1, labels)
    dets = _select(x.detach().cpu().numpy(), img.cpu().numpy(), bs, nc, iou_thres, classes, agnostic, max_det)
    return [torch.from_numpy(d).to(x.device) for d in dets]


def _select(x: np.ndarray, img: np.ndarray, bs: int, nc: int, iou_thres: float, classes: Sequence[int] | None,
            agnostic: bool, max_det: int) -> list[np.ndarray]:
    """Scored rows -> per-image detections, in numpy on the calling thread (see _score_numpy: torch's intra-op
    threads made the ~20k rows of a batch of 64 wait for cores the engine holds)."""
    if classes is not None:
        sel = np.isin(x[:, 5], np.asarray(classes, dtype=x.dtype))
        x, img = x[sel], img[sel]
    order = np.lexsort((-x[:, 4], img))  # by image, best score first inside each; ties keep row order
    x, img = x[order], img[order]
    capped = _rank_in_group(img) < MAX_NMS
    if not capped.all():
        x, img = x[capped], img[capped]
    groups = img if agnostic else img * (nc + 1) + x[:, 5].astype(np.int64)
    keep = _suppress(x[:, :4], groups, iou_thres, img, max_det)
    counts = np.bincount(img[keep], minlength=bs)
    return [d[:max_det] for d in np.split(x[keep], np.cumsum(counts)[:-1])]
