"""Box geometry shared by datasets, loss, NMS, val and detect: format conversions, IoU, clipping, letterbox undo."""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np
import torch

Boxes = TypeVar("Boxes", torch.Tensor, np.ndarray)


def _empty_like(x: Boxes) -> Boxes:
    """Fresh output of the same kind, dtype and device, so conversions never alias their input."""
    return torch.empty_like(x) if isinstance(x, torch.Tensor) else np.empty_like(x)


def xywh2xyxy(x: Boxes) -> Boxes:
    """Centre/size boxes (model and label format) to corner boxes (IoU, NMS and drawing format)."""
    y = _empty_like(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xyxy2xywh(x: Boxes) -> Boxes:
    """Corner boxes back to centre/size, the format YOLO labels and the loss use."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: Boxes, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Boxes:
    """Normalised label boxes to pixel corners inside a padded (letterboxed or mosaic) canvas."""
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Boxes, w: float = 640, h: float = 640, clip: bool = False, eps: float = 0.0) -> Boxes:
    """Pixel corners to normalised centre/size labels; clip (in place, as Ultralytics) keeps them inside (0, 1)."""
    if clip:
        clip_boxes(x, (h - eps, w - eps))
    y = _empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def box_iou(box1: Boxes, box2: Boxes, eps: float = 1e-7) -> Boxes:
    """Pairwise IoU (N, M) of corner boxes; eps keeps degenerate (zero-area) pairs at 0 instead of NaN."""
    lib = torch if isinstance(box1, torch.Tensor) else np
    a1, a2 = box1[:, None, :2], box1[:, None, 2:4]
    b1, b2 = box2[None, :, :2], box2[None, :, 2:4]
    inter = (lib.minimum(a2, b2) - lib.maximum(a1, b1)).clip(0).prod(2)
    return inter / ((a2 - a1).prod(2) + (b2 - b1).prod(2) - inter + eps)


def clip_boxes(boxes: Boxes, shape: Sequence[float]) -> Boxes:
    """Clamp corner boxes in place to an image of shape (h, w) so nothing points outside the picture."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def letterbox_params(img1_shape: Sequence[int], img0_shape: Sequence[int]) -> tuple[float, tuple[float, float]]:
    """Gain and per-side (padw, padh) that letterbox used to fit img0_shape (h, w) into img1_shape (h, w)."""
    gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
    pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    return gain, pad


def scale_boxes(
    img1_shape: Sequence[int],
    boxes: Boxes,
    img0_shape: Sequence[int],
    ratio_pad: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Boxes:
    """Map corner boxes from the letterboxed input (h, w) back to the original image, in place (val relies on it).

    ratio_pad=((gain, gain), (padw, padh)) uses the exact letterbox values instead of re-deriving them.
    """
    if ratio_pad is None:
        gain, pad = letterbox_params(img1_shape, img0_shape)
    else:
        gain, pad = ratio_pad[0][0], ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)
