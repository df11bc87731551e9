"""The one inference path: letterbox -> engine -> NMS -> boxes in original pixels. detect, val and benchmark share it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.augmentations import letterbox, to_blob
from utils.boxes import scale_boxes
from utils.engines.base import Engine
from utils.nms import non_max_suppression


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

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
        """BGR HWC images -> float32 NCHW RGB in [0,1]; minimal padding when the engine takes any size."""
        shape = self.engine.imgsz or self.imgsz
        auto = self.engine.dynamic and len(images) == 1  # one image: pad only to the stride (Ultralytics rect)
        boxes_meta, batch = [], []
        for im0 in images:
            im, ratio, pad = letterbox(im0, shape, auto=auto, stride=self.engine.stride)
            batch.append(im)
            boxes_meta.append((im.shape[:2], im0.shape[:2], (ratio, pad)))
        return to_blob(batch), boxes_meta

    def postprocess(self, pred: np.ndarray, meta: list[tuple]) -> list[np.ndarray]:
        """NMS, then undo the letterbox: (n, 6) x1 y1 x2 y2 conf cls in original pixels per image."""
        dets = non_max_suppression(torch.from_numpy(pred), self.conf_thres, self.iou_thres, self.classes,
                                   self.agnostic, max_det=self.max_det)
        out = []
        for d, (shape1, shape0, ratio_pad) in zip(dets, meta):
            d[:, :4] = scale_boxes(shape1, d[:, :4], shape0, ratio_pad)
            out.append(d.numpy())
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
