"""Does the exported file agree with PyTorch? Raw outputs and detections after NMS, on a real image."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from utils.assets import asset
from utils.augmentations import letterbox, to_blob
from utils.boxes import box_iou
from utils.engines import load_engine
from utils.nms import non_max_suppression
from utils.raw_head import as_dense

from .report import onnx_precision

FLOAT_REL_TOL = 1e-3  # BN folding and float re-association stay below 1e-4 of the largest output here
INT8_MATCH = 0.8  # share of PyTorch's detections an INT8 file must reproduce (same class, IoU >= 0.5)


def verify_onnx(model: nn.Module, onnx_file: Path, batch: np.ndarray) -> dict[str, float]:
    """Run the torch model and the ONNX file (ONNX Runtime) on the same batch and compare predictions."""
    a = load_engine(model, engine="torch")(batch)
    b = as_dense(load_engine(onnx_file, engine="onnxruntime")(batch))  # a raw-head file decoded on the host
    diff = np.abs(a - b)
    max_pred = float(np.abs(a).max())
    v = {"max_abs": float(diff.max()), "max_abs_xywh": float(diff[..., :4].max()),
         "max_abs_scores": float(diff[..., 4:].max()), "max_pred": max_pred,
         "max_rel": float(diff.max()) / max(max_pred, 1e-9), "precision": onnx_precision(onnx_file),
         **match_detections(a, b)}
    v["agrees"] = agrees(v)
    return v


def agrees(v: dict) -> bool:
    """The verdict: a float file must match PyTorch to float rounding (any real bug moves outputs by far more);
    an INT8 file must keep the detections (rounding moves raw outputs by a few %, NMS hides most of it)."""
    if v["precision"] != "INT8":
        return v["max_rel"] < FLOAT_REL_TOL and v["dets_matched"] == v["dets_torch"]
    return v["dets_matched"] >= INT8_MATCH * v["dets_torch"]


def match_detections(a: np.ndarray, b: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> dict[str, float]:
    """INT8 outputs differ numerically; what must agree is the detections after NMS (same class, IoU >= 0.5)."""
    da, db = (non_max_suppression(torch.from_numpy(np.ascontiguousarray(p)).float(), conf, iou) for p in (a, b))
    n_a = sum(len(d) for d in da)
    n_b = sum(len(d) for d in db)
    matched, px = 0, 0.0
    for x, y in zip(da, db):
        if not len(x) or not len(y):
            continue
        ious = box_iou(x[:, :4], y[:, :4]) * (x[:, 5:6] == y[:, 5].unsqueeze(0))
        best, j = ious.max(1)
        ok = best >= 0.5
        matched += int(ok.sum())
        if ok.any():
            px = max(px, float((x[ok, :4] - y[j[ok], :4]).abs().max()))
    return {"dets_torch": n_a, "dets_onnx": n_b, "dets_matched": matched, "max_box_px": px}


def verify_line(v: dict[str, float], source: str, name: str = "ONNX") -> str:
    """One line a user can judge: relative error for float files, matching detections for every file."""
    verdict = "" if v.get("agrees", True) else (
        "WARNING ⚠️ the exported file DISAGREES with PyTorch (see the numbers); do not deploy it. ")
    return verdict + (f"export: {name} in ONNX Runtime vs PyTorch on {source}: max abs diff {v['max_abs']:.3g} "
            f"({v['max_rel']:.2e} relative; boxes {v['max_abs_xywh']:.3g} px, scores {v['max_abs_scores']:.3g}); "
            f"detections at conf 0.25: {v['dets_matched']}/{v['dets_torch']} matched by ONNX "
            f"({v['dets_onnx']} found; same class, IoU >= 0.5, max box diff {v['max_box_px']:.2g} px)")


def load_image_batch(path: Path, imgsz: tuple[int, int]) -> np.ndarray:
    """BGR file -> letterboxed (no auto padding) float32 NCHW RGB batch of one, the way detect feeds engines."""
    im = cv2.imread(str(path))
    if im is None:
        raise FileNotFoundError(f"{path}: cannot read image")
    return to_blob([letterbox(im, imgsz, auto=False)[0]])


def verification_image(imgsz: tuple[int, int]) -> tuple[np.ndarray, str]:
    """bus.jpg from the shared assets when present, else a fixed random image (still a numeric check)."""
    try:
        path = asset("images/bus.jpg")
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        return rng.random((1, 3, *imgsz), dtype=np.float32), "random image (bus.jpg asset not found)"
    return load_image_batch(path, imgsz), str(path)


def verification_batches(imgsz: tuple[int, int], images: list[str] | None = None,
                         batch_size: int = 1) -> tuple[np.ndarray, str]:
    """The dataset's own images when given (bus.jpg says nothing about a custom model), else bus.jpg; one batch per
    image, stacked, so verify_onnx compares every detection on every picture."""
    if not images:
        batch, source = verification_image(imgsz)
        return np.repeat(batch, batch_size, 0), source
    batches = [np.repeat(load_image_batch(Path(f), imgsz), batch_size, 0) for f in images]
    return np.concatenate(batches), f"{len(images)} dataset images ({Path(images[0]).parent})"


def verify_many(model: nn.Module, onnx_file: Path, stacked: np.ndarray, batch_size: int) -> dict:
    """verify_onnx over a stack of batches (a static file takes one batch at a time); counts add up, maxima max."""
    parts = [verify_onnx(model, onnx_file, stacked[i:i + batch_size]) for i in range(0, len(stacked), batch_size)]
    out = {k: max(p[k] for p in parts) for k in ("max_abs", "max_abs_xywh", "max_abs_scores", "max_pred", "max_rel",
                                                 "max_box_px")}
    out.update({k: sum(p[k] for p in parts) for k in ("dets_torch", "dets_onnx", "dets_matched")})
    out["precision"] = parts[0]["precision"]
    out["agrees"] = agrees(out)
    return out
