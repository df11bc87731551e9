"""The end-to-end unit a benchmark times: pre-process -> engine -> post-process, each stage clocked on its own."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from utils.engines.base import Engine
from utils.predict import Letterboxer, Predictor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_images(source: str | Path, limit: int = 64) -> list[np.ndarray]:
    """BGR images from a file or folder (sorted, at most `limit`): real pictures give real NMS workloads."""
    p = Path(source)
    files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not p.exists() or not files:
        raise FileNotFoundError(f"{source}: no images found (formats {', '.join(IMAGE_SUFFIXES)}); "
                                "pass --source path/to/images or use --random")
    images = []
    for f in files[:limit]:
        im = cv2.imread(str(f))
        if im is None:
            raise FileNotFoundError(f"{f}: cannot read this image; remove it from --source or use --random")
        images.append(im)
    return images


def random_images(n: int, imgsz: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """n uint8 noise images of the model size, fixed seed: reproducible input when no pictures are at hand."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (imgsz[0], imgsz[1], 3), dtype=np.uint8) for _ in range(n)]


def fill_batch(images: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Cycle the source images until the batch is full (batch 64 from two demo pictures)."""
    if not images:
        raise ValueError("no input images to benchmark with")
    return [images[i % len(images)] for i in range(batch_size)]


class Pipeline:
    """Letterbox to one fixed size (every engine sees the same tensor shape), run the engine, NMS and rescale."""

    def __init__(self, engine: Engine, imgsz: tuple[int, int], conf_thres: float = 0.25, iou_thres: float = 0.45,
                 max_det: int = 1000) -> None:
        self.engine = engine
        self.imgsz = tuple(engine.imgsz or imgsz)
        self.post = Predictor(engine, self.imgsz, conf_thres, iou_thres, max_det=max_det)
        self.letterboxer = Letterboxer()

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
        """BGR HWC -> NCHW RGB (float32 [0,1], or uint8 for a uint8-input graph); auto=False so batch 1 is not
        padded smaller than batch 64 is."""
        return self.letterboxer(images, self.imgsz, False, self.engine.stride, self.engine.input_dtype,
                                self.engine.input_layout)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The engine stage alone (the pipelined scenario runs it on its own thread)."""
        return self.engine(x)

    def postprocess(self, pred: np.ndarray, meta: list[tuple]) -> list[np.ndarray]:
        """NMS and rescale to each original image."""
        return self.post.postprocess(pred, meta)

    def __call__(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], tuple[float, float, float]]:
        """Detections per image and (pre, engine, post) milliseconds for this one batch."""
        t0 = time.perf_counter()
        x, meta = self.preprocess(images)
        t1 = time.perf_counter()
        pred = self.infer(x)
        t2 = time.perf_counter()
        dets = self.postprocess(pred, meta)
        t3 = time.perf_counter()
        return dets, ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
