"""The one inference path: letterbox -> engine -> NMS -> boxes in original pixels. detect, val and benchmark share it."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.augmentations import letterbox_chw, letterbox_hwc, letterbox_shape
from utils.boxes import scale_boxes
from utils.engines.base import NCHW_RGB, NHWC_BGR, Engine
from utils.nms import non_max_suppression
from utils.raw_head import RawPrediction


@dataclass
class Timings:
    """Milliseconds spent per stage; summed over calls so scripts can report per-image averages."""

    pre: float = 0.0
    infer: float = 0.0
    nms: float = 0.0
    images: int = 0

    def per_image(self) -> tuple[float, float, float]:
        n = max(self.images, 1)
        return self.pre / n, self.infer / n, self.nms / n


class Letterboxer:
    """BGR HWC images -> the engine's NCHW RGB input, each image resized once and written straight into the batch.

    float32 [0, 1] (identical to letterbox + to_blob), or uint8 for an engine whose graph takes uint8 (export
    --uint8-input), which skips the float conversion. The small resize buffer is reused per (thread, shape); the
    batch itself is a fresh array each call, so callers may keep it and threads never share one (a reused 4.9 MB
    blob was measured slower: the engine evicts it from cache between calls, fresh memory comes back warm).
    """

    def __init__(self) -> None:
        self._resized: dict[tuple, np.ndarray] = {}

    def __call__(self, images: list[np.ndarray], shape: tuple[int, int], auto: bool, stride: int,
                 dtype: np.dtype = np.float32, layout: str = NCHW_RGB) -> tuple[np.ndarray, list[tuple]]:
        """(batch, meta) where meta per image is (letterboxed (h, w), original (h, w), (ratio, pad)); layout
        'NHWC BGR' (a graph exported with --nhwc) gets the letterboxed frames themselves, uint8."""
        if not images:
            raise ValueError("no images to pre-process")
        h, w = letterbox_shape(images[0].shape[:2], shape, auto, stride=stride) if auto else tuple(shape)
        if layout == NHWC_BGR:
            return self._frames(images, shape, auto, stride, (h, w))
        out = np.empty((len(images), 3, h, w), np.uint8 if np.dtype(dtype) == np.uint8 else np.float32)
        meta = []
        for im0, chw in zip(images, out):
            if im0.ndim != 3 or im0.shape[2] != 3:
                raise ValueError(f"expected BGR images (H, W, 3); got shape {im0.shape}")
            key = (threading.get_ident(), im0.shape, h, w)
            ratio, pad = letterbox_chw(im0, chw, shape, auto=auto, stride=stride, resized=self._resized.get(key))
            if key not in self._resized and len(self._resized) < 64:  # keep the resize buffer for this shape
                r = ratio[0]
                self._resized[key] = np.empty((int(round(im0.shape[0] * r)), int(round(im0.shape[1] * r)), 3),
                                              np.uint8)
            meta.append(((h, w), im0.shape[:2], (ratio, pad)))
        return out, meta

    @staticmethod
    def _frames(images: list[np.ndarray], shape: tuple[int, int], auto: bool, stride: int,
                hw: tuple[int, int]) -> tuple[np.ndarray, list[tuple]]:
        """NHWC BGR uint8 batch: one resize per image straight into its canvas, nothing else on the host."""
        out, meta = np.empty((len(images), *hw, 3), np.uint8), []
        for im0, frame in zip(images, out):
            if im0.ndim != 3 or im0.shape[2] != 3:
                raise ValueError(f"expected BGR images (H, W, 3); got shape {im0.shape}")
            ratio, pad = letterbox_hwc(im0, frame, shape, auto=auto, stride=stride)
            meta.append((hw, im0.shape[:2], (ratio, pad)))
        return out, meta


@dataclass
class Predictor:
    """Wraps an Engine with the pre/post-processing every YOLOv5 entry point needs."""

    engine: Engine
    imgsz: tuple[int, int] = (640, 640)
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    classes: list[int] | None = None
    agnostic: bool = False
    max_det: int = 1000
    timings: Timings = field(default_factory=Timings)
    letterboxer: Letterboxer = field(default_factory=Letterboxer, repr=False)

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
        """BGR HWC images -> NCHW RGB, float32 in [0,1] (uint8 for uint8-input graphs); minimal padding when the
        engine takes any size."""
        shape = self.engine.imgsz or self.imgsz
        auto = self.engine.dynamic and len(images) == 1  # one image: pad only to the stride (Ultralytics rect)
        return self.letterboxer(images, shape, auto, self.engine.stride, self.engine.input_dtype,
                                self.engine.input_layout)

    def postprocess(self, pred: np.ndarray | RawPrediction, meta: list[tuple]) -> list[np.ndarray]:
        """NMS, then undo the letterbox: (n, 6) x1 y1 x2 y2 conf cls in original pixels per image."""
        pred = pred if isinstance(pred, RawPrediction) else torch.from_numpy(pred)
        dets = non_max_suppression(pred, self.conf_thres, self.iou_thres, self.classes,
                                   self.agnostic, max_det=self.max_det)
        out = []
        for d, (shape1, shape0, ratio_pad) in zip(dets, meta):
            d = d.numpy()  # numpy's small ops beat torch's per-call overhead on a few boxes
            scale_boxes(shape1, d[:, :4], shape0, ratio_pad)
            out.append(d)
        return out

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Detections for a list of BGR images, timing each stage."""
        t0 = time.perf_counter()
        x, meta = self.preprocess(images)
        t1 = time.perf_counter()
        pred = self.engine(x)
        t2 = time.perf_counter()
        dets = self.postprocess(pred, meta)
        t3 = time.perf_counter()
        t = self.timings
        t.pre, t.infer, t.nms = t.pre + (t1 - t0) * 1e3, t.infer + (t2 - t1) * 1e3, t.nms + (t3 - t2) * 1e3
        t.images += len(images)
        return dets
