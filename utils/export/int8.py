"""INT8 ONNX writers: QDQ (post-training, from the FP32 file; every engine) and SparseML's ConvInteger (QAT models,
and post-training for DeepSparse, which runs that form fastest).
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from torch import nn

from utils.assets import assets_dir
from utils.atomic import atomic_path
from utils.sparsity.calibration import calibration_files
from utils.sparsity.ptq import calibration_batches, quantize_ptq

from .metadata import export_metadata, model_sparsity
from .prepare import prepare_model
from .qat_qdq import export_qat_qdq
from .qdq import DEFAULT_LAYOUT, DEFAULT_METHOD, image_batches, quantize_onnx_file
from .qoperator import to_qoperator
from .sensitivity import most_sensitive
from .trace import export_onnx

# qdq: Q/DQ on every activation, ONNX Runtime's fastest; qdq-inputs: Q/DQ only on what the convs read, OpenVINO's
# fastest and most accurate (OpenCV DNN loads both, but runs them as float); qoperator: qdq rewritten as QLinearConv
# etc., what OpenCV runs as INT8 (ONNX Runtime too); convinteger: SparseML's form, DeepSparse's fastest
INT8_FORMATS = ("qdq", "qdq-inputs", "qoperator", "convinteger")
# QDQ format -> (utils.export.qdq layout, quantize Detect's output convs): with Q/DQ on inputs only, a head conv's
# output stays float, so its weights go INT8 too (OpenVINO yolov5s 640: 12% faster, coco128 mAP50-95 -0.003)
QDQ_FORMS = {"qdq": (DEFAULT_LAYOUT, False), "qdq-inputs": ("inputs", True), "qoperator": (DEFAULT_LAYOUT, False)}
FASTEST_FORMAT = {"deepsparse": "convinteger", "openvino": "qdq-inputs", "opencv": "qoperator"}


def int8_format_for(engine: str) -> str:
    """The INT8 form each engine runs fastest: DeepSparse compiles ConvInteger but none of a QDQ graph; OpenVINO
    fuses a float SiLU into its INT8 convs only when no Q/DQ sits between them (yolov5s 640: 1.22x); OpenCV builds
    INT8 layers from QOperator nodes only."""
    return FASTEST_FORMAT.get(engine, "qdq")


def calibration_images(data: dict | str, n: int, seed: int = 0) -> list[str]:
    """A fixed random sample of n train images (val when there is no train split): what --int8 calibrates on."""
    files = calibration_files(data)
    if not files:
        raise ValueError(f"{data}: no images found to calibrate --int8 on; point the yaml's train/val at images")
    return sorted(random.Random(seed).sample(files, min(n, len(files))))


def export_qdq(fp32_file: Path, out: Path, images: list[str], imgsz: int, batch_size: int = 1,
               method: str = DEFAULT_METHOD, calibration_file: Path | None = None, float_units: int = 0,
               fmt: str = "qdq") -> Path:
    """Post-training QDQ INT8 beside the FP32 file, calibrated on `images`; appears only when complete.

    A static batch > 1 needs `calibration_file` (the same model at batch 1): calibration then runs image by image.
    float_units: leave that many of the activations whose INT8 error reaches the detections most in float.
    fmt: where the Q/DQ pairs go (QDQ_FORMS); qoperator then rewrites them as QLinearConv etc. (OpenCV's INT8).
    """
    layout, quantize_head = QDQ_FORMS[fmt]
    if batch_size > 1 and calibration_file is None:
        raise ValueError("QDQ of a static batch > 1 file needs its batch-1 twin to calibrate on (calibration_file)")
    with atomic_path(out, what="INT8 export") as tmp:
        quantize_onnx_file(fp32_file, tmp, image_batches(images, imgsz, 1), method=method,
                           quantize_head=quantize_head, layout=layout, calibration_src=calibration_file,
                           choose_float=most_sensitive(float_units, layout, quantize_head) if float_units > 0 else None)
        if fmt == "qoperator":
            to_qoperator(tmp, tmp)
    return out


def export_convinteger(model: nn.Module, out: Path, imgsz: tuple[int, int], batch_size: int, meta: dict[str, Any],
                       images: Iterable[np.ndarray] | None = None) -> Path:
    """Post-training ConvInteger INT8 (SparseML observers calibrated on `images`), DeepSparse's fastest form."""
    q = quantize_ptq(model, calibration_batches(tuple(imgsz), images))
    return export_onnx(prepare_model(q), out, imgsz, batch_size, dynamic=False, metadata=meta)


def sample_int8_exporter(images: list[str] | None = None) -> Callable[..., Path]:
    """benchmark.py --quantize: INT8 twins calibrated on `images` (default: the shared sample pictures), in the form
    each engine runs best (QDQ from the FP32 file, its layout per engine; ConvInteger for DeepSparse)."""
    images = images or [str(p) for p in sorted((assets_dir() / "images").glob("*.jpg"))]

    def export(model: nn.Module, file: Path, imgsz: tuple[int, int], batch_size: int, fmt: str = "qdq") -> Path:
        meta = export_metadata(model, imgsz, batch_size, False, model_sparsity(model))
        if fmt == "convinteger":
            return export_convinteger(model, file, imgsz, batch_size, meta, [cv2.imread(f) for f in images])
        fp32 = export_onnx(prepare_model(model), file.with_name(file.stem + "_fp32.onnx"), imgsz, batch_size,
                           metadata=meta)
        one = export_onnx(prepare_model(model), file.with_name(file.stem + "_fp32_b1.onnx"), imgsz, 1) \
            if batch_size > 1 else None
        return export_qdq(fp32, file, images, imgsz[0], batch_size, calibration_file=one, fmt=fmt)

    return export


def qat_int8_exporter() -> Callable[..., Path]:
    """benchmark.py on a QAT checkpoint: its learned scales, as QDQ (ONNX Runtime, OpenVINO: both QDQ formats get
    the learned placement; OpenCV: that rewritten as QOperator) or SparseML's ConvInteger form (DeepSparse); nothing
    is re-calibrated."""
    def export(model: nn.Module, file: Path, imgsz: tuple[int, int], batch_size: int, fmt: str = "qdq") -> Path:
        meta = export_metadata(model, imgsz, batch_size, False, model_sparsity(model))
        if fmt == "convinteger":
            return export_onnx(prepare_model(model), file, imgsz, batch_size, dynamic=False, metadata=meta)
        out = export_qat_qdq(model, file, imgsz, batch_size, meta)
        return to_qoperator(out, out) if fmt == "qoperator" else out

    return export

