"""Training-time augmentations (Ultralytics v7.0 behaviour): mosaic, random perspective, mixup, HSV, flips.

All randomness comes from `random` and `np.random`, so seeding both (and the DataLoader workers) makes a run
reproducible. Labels inside this module are pixel [cls, x1, y1, x2, y2] unless a name says normalized.
"""
from __future__ import annotations

import math
import random

import cv2
import numpy as np

from utils.boxes import xywhn2xyxy

# hyp.scratch-low.yaml values: used for any augmentation key the caller's hyp does not set
DEFAULT_HYP = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0,
    "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0,
}
PAD_VALUE = 114  # grey used for letterbox/mosaic fill everywhere, so padding looks the same in train and val


def with_defaults(hyp: dict | None) -> dict:
    """Augmentation hyperparameters with missing keys filled from hyp.scratch-low."""
    return {**DEFAULT_HYP, **(hyp or {})}


def mosaic_placement(i: int, xc: int, yc: int, w: int, h: int, s: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where tile i (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) lands on the 2s canvas, and its crop."""
    if i == 0:
        dst = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        src = (w - (dst[2] - dst[0]), h - (dst[3] - dst[1]), w, h)
    elif i == 1:
        dst = (xc, max(yc - h, 0), min(xc + w, 2 * s), yc)
        src = (0, h - (dst[3] - dst[1]), min(w, dst[2] - dst[0]), h)
    elif i == 2:
        dst = (max(xc - w, 0), yc, xc, min(2 * s, yc + h))
        src = (w - (dst[2] - dst[0]), 0, w, min(dst[3] - dst[1], h))
    else:
        dst = (xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h))
        src = (0, 0, min(w, dst[2] - dst[0]), min(dst[3] - dst[1], h))
    return dst, src


def build_mosaic(images: list[np.ndarray], labels: list[np.ndarray], s: int, xc: int, yc: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Tile 4 resized images around (xc, yc) on a 2s x 2s canvas; labels in (n,5) normalized -> pixel xyxy."""
    canvas = np.full((2 * s, 2 * s, images[0].shape[2]), PAD_VALUE, dtype=np.uint8)
    out = []
    for i, (im, lb) in enumerate(zip(images, labels)):
        h, w = im.shape[:2]
        (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_placement(i, xc, yc, w, h, s)
        canvas[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
        lb = lb.copy()
        if lb.size:
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, x1a - x1b, y1a - y1b)
        out.append(lb)
    boxes = np.concatenate(out, 0)
    np.clip(boxes[:, 1:], 0, 2 * s, out=boxes[:, 1:])
    return canvas, boxes


def random_perspective(im: np.ndarray, targets: np.ndarray, degrees: float = 10, translate: float = 0.1,
                       scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random affine/perspective warp; a negative border crops (mosaic 2s -> s); boxes follow and are filtered."""
    height, width = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    M, s = _random_warp_matrix(im.shape[:2], (height, width), degrees, translate, scale, shear, perspective)
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
    if len(targets):
        new = warp_boxes(targets[:, 1:5], M, width, height, perspective=bool(perspective))
        keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def _random_warp_matrix(shape: tuple[int, int], out_hw: tuple[int, int], degrees: float, translate: float,
                        scale: float, shear: float, perspective: float) -> tuple[np.ndarray, float]:
    """Compose centre -> perspective -> rotate/scale -> shear -> translate; draw order is part of reproducibility."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -shape[1] / 2, -shape[0] / 2  # move image centre to origin
    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, s


def warp_boxes(boxes: np.ndarray, M: np.ndarray, width: int, height: int, perspective: bool = False) -> np.ndarray:
    """Warp the 4 corners of each xyxy box and take their enclosing box, clipped to the output image."""
    n = len(boxes)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    return new


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep warped boxes (4,n) that stay > wh_thr px, keep > area_thr of their area and aspect < ar_thr."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio and keep both label sets (Zhang et al. 2017)."""
    r = np.random.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Random hue/saturation/value gains applied in place through lookup tables (fast on uint8 BGR)."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(im.dtype)  # OpenCV hue range is 0..179
    lut_sat = np.clip(x * r[1], 0, 255).astype(im.dtype)
    lut_val = np.clip(x * r[2], 0, 255).astype(im.dtype)
    merged = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(merged, cv2.COLOR_HSV2BGR, dst=im)


def random_flips(im: np.ndarray, labels: np.ndarray, flipud: float, fliplr: float) -> tuple[np.ndarray, np.ndarray]:
    """Up-down then left-right flips with the given probabilities; labels are normalized [cls, cx, cy, w, h]."""
    if random.random() < flipud:
        im = np.flipud(im)
        if len(labels):
            labels[:, 2] = 1 - labels[:, 2]
    if random.random() < fliplr:
        im = np.fliplr(im)
        if len(labels):
            labels[:, 1] = 1 - labels[:, 1]
    return im, labels
