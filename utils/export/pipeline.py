"""export.py's job: checkpoint -> ONNX (+ OpenVINO) with metadata, sparsity check, numeric check, sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import cv2
import onnx
from torch import nn

from utils.augmentations import check_img_size
from utils.checkpoint import load_model
from utils.engines.base import as_hw
from utils.engines.metadata import read_onnx_metadata
from utils.files import increment_path
from utils.labels import is_writable_dir

from .int8 import INT8_FORMATS, calibration_images, export_convinteger, export_qdq
from .metadata import checkpoint_recipe, export_metadata, model_sparsity
from .openvino import export_openvino
from .prepare import is_qat, prepare_model
from .qat_qdq import export_qat_qdq
from .qdq import DEFAULT_METHOD
from .report import format_sizes, onnx_conv_sparsity, onnx_precision, size_table
from .trace import DEFAULT_OPSET, export_onnx
from .ultralytics import check_ultralytics, export_ultralytics
from .verify import verification_batches, verify_line, verify_many


def output_path(weights: Path, suffix: str = ".onnx", log=print) -> Path:
    """Next to the weights (Ultralytics convention), unless that folder is read-only: then runs/export/exp*/."""
    if is_writable_dir(weights.parent):
        return weights.with_suffix(suffix)
    out = increment_path(Path("runs/export/exp"), mkdir=True) / weights.with_suffix(suffix).name
    log(f"export: {weights.parent} is read-only, writing to {out.parent} instead")
    return out


def export_weights(weights: str | Path, include: tuple[str, ...] = ("onnx",), imgsz: int | tuple[int, int] = 640,
                   batch_size: int = 1, dynamic: bool = False, opset: int = DEFAULT_OPSET, simplify: bool = False,
                   device: str = "cpu", verify: bool = True, log=print, verify_strict: bool = False,
                   prune: Callable[[nn.Module], str] | None = None, int8: bool = False, data: str | dict | None = None,
                   calib_images: int = 128, int8_format: str = "qdq", calib_method: str = DEFAULT_METHOD,
                   verify_images: int = 8, uint8_input: bool = False) -> dict[str, Any]:
    """Checkpoint -> ONNX (+ INT8, + OpenVINO) next to it, with metadata, a sparsity check, a numeric check, sizes.

    prune: optional one-shot step on the loaded model (export.py's old --sparsity); it returns a tag for the file name
    (yolov5n_obc50.onnx) so a pruned export never overwrites the dense one.
    int8: also write <stem>_int8.onnx, post-training from `calib_images` images of `data` (QDQ by default; a QAT
    checkpoint is INT8 already: its file is the INT8 one). With `data`, verification uses the dataset's images.
    "ultralytics" in include: also write <stem>_ultralytics.pt in Ultralytics YOLOv5's own (pickled) layout; alone,
    with no --int8, it is the only file written.
    uint8_input: the graph takes uint8 NCHW RGB pixels and divides by 255 itself (no float conversion in the caller).
    """
    check_int8_options(int8, data, int8_format, dynamic, uint8_input)
    images = calibration_images(data, max(calib_images, verify_images)) if data else []  # before writing anything
    weights = Path(weights)
    model = load_model(str(weights), device=device, fuse=False)
    if uint8_input and is_qat(model):
        raise ValueError("--uint8-input applies to float exports only; this checkpoint is QAT (INT8)")
    hw = tuple(check_img_size(list(as_hw(imgsz)), s=int(model.stride.max())))  # round up and warn
    tag = prune(model) if prune is not None else ""
    sparsity = model_sparsity(model)
    meta = export_metadata(model, hw, batch_size, dynamic, sparsity, checkpoint_recipe(model))
    if "ultralytics" in include:
        check_ultralytics(model)  # refuse (QAT, foreign layers) before anything is written
        if not int8 and not {"onnx", "openvino"} & set(include):
            result = {"files": [ultralytics_file(model, weights, tag, log)], "sparsity": sparsity, "metadata": meta}
            result["sizes"] = size_table([weights, *result["files"]])
            log(format_sizes(result["sizes"]))
            return result
    target = output_path(weights.with_name(f"{weights.stem}{tag}{weights.suffix}"), log=log)
    if is_qat(model) and int8_format == "qdq":  # learned scales, written in the form every engine runs as INT8
        onnx_file = export_qat_qdq(model, target, hw, batch_size, meta)
    else:  # float, or a QAT model in SparseML's ConvInteger form (--int8-format convinteger, for DeepSparse)
        onnx_file = export_onnx(prepare_model(model, uint8_input=uint8_input), target, hw, batch_size, dynamic, opset,
                                meta, simplify)
    result: dict[str, Any] = {"files": [onnx_file], "sparsity": sparsity, "metadata": meta}
    log(f"export: wrote {onnx_file} ({describe(onnx_file)})")
    result["onnx_sparsity"] = onnx_conv_sparsity(onnx_file)["sparsity"]
    log(f"export: conv weight sparsity {sparsity:.4f} in PyTorch (global, prunable weights), "
        f"{result['onnx_sparsity']:.4f} measured in the ONNX initializers")
    if int8 and not is_qat(model):
        int8_file = onnx_file.with_name(f"{onnx_file.stem}_int8.onnx")
        if int8_format == "qdq":
            one = export_onnx(prepare_model(model), int8_file.with_name(f".{int8_file.stem}_b1.onnx"), hw, 1) \
                if batch_size > 1 else None  # calibrate image by image on the batch-1 twin
            export_qdq(onnx_file, int8_file, images[:calib_images], hw[0], batch_size, calib_method, one)
            if one is not None:
                one.unlink()
        else:
            export_convinteger(model, int8_file, hw, batch_size, meta, [cv2.imread(f) for f in images[:calib_images]])
        result["files"].append(int8_file)
        how = f"{int8_format}, {calib_method if int8_format == 'qdq' else 'SparseML observers'}"
        log(f"export: wrote {int8_file} ({describe(int8_file)}; {how}, calibrated on "
            f"{min(calib_images, len(images))} images of {dataset_name(data)})")
    if verify:
        stacked, source = verification_batches(hw, images[-verify_images:] if images else None, batch_size)
        for f in [f for f in result["files"] if f.suffix == ".onnx"]:  # against the unfused model: BN folding too
            v = result.setdefault("verify_all", {})[f.name] = verify_many(model, f, stacked, batch_size)
            log(verify_line(v, source, f.name))
            if verify_strict and not v["agrees"]:
                raise ValueError(f"export: --verify-strict: {f} disagrees with PyTorch on {source} (written, "
                                 f"but do not deploy it); see the line above")
        result["verify"] = result["verify_all"][onnx_file.name]
    if "openvino" in include:
        for f in [f for f in result["files"] if f.suffix == ".onnx"]:
            extra = {k: v for k, v in read_onnx_metadata(f).items() if k not in meta}  # e.g. the INT8 scheme
            ov_dir = export_openvino(f, {**meta, **extra})
            result["files"].append(ov_dir)
            log(f"export: wrote {ov_dir}/ (OpenVINO IR, {'INT8 (QDQ)' if '_int8' in f.stem else 'f32'} weights)")
    if "ultralytics" in include:
        result["files"].append(ultralytics_file(model, weights, tag, log))
    result["sizes"] = size_table([weights, *result["files"]])
    log(format_sizes(result["sizes"]))
    return result


def ultralytics_file(model: nn.Module, weights: Path, tag: str, log=print) -> Path:
    """<stem><tag>_ultralytics.pt next to the weights (or runs/export/exp*/), in Ultralytics YOLOv5's layout."""
    target = output_path(weights.with_name(f"{weights.stem}{tag}_ultralytics.pt"), ".pt", log=log)
    file = export_ultralytics(model, target, model.names, opt={"weights": weights.name})
    log(f"export: wrote {file} (Ultralytics YOLOv5 checkpoint: a pickle, fp16; load it with Ultralytics' "
        f"attempt_load/detect.py/val.py; it runs code when loaded, so share it only with people who trust you)")
    if (getattr(model, "yaml", None) or {}).get("channel_widths"):
        log("export: channel-pruned: Ultralytics' detect.py/val.py/attempt_load run it as pruned (the pickle keeps the "
            "layer shapes), but its train.py --weights rebuilds the full-width model from the yaml and keeps only the "
            "tensors that still fit; fine-tune it with this repo's train.py")
    return file


def dataset_name(data: str | dict | None) -> str:
    """The yaml a dataset dict came from (check_dataset records it), for log lines."""
    return str(data.get("yaml_file", "the dataset")) if isinstance(data, dict) else str(data)


def check_int8_options(int8: bool, data: str | dict | None, int8_format: str, dynamic: bool,
                       uint8_input: bool = False) -> None:
    """One line for an --int8 request that cannot work, before anything is loaded or written."""
    if int8 and uint8_input:
        raise ValueError("--uint8-input applies to float exports only: drop --int8 (INT8 files keep a float input)")
    if int8_format not in INT8_FORMATS:
        raise ValueError(f"--int8-format {int8_format!r}: choose one of {', '.join(INT8_FORMATS)}")
    if int8 and not data:
        raise ValueError("--int8 calibrates on your images: pass --data your_dataset.yaml (its train images are used)")
    if int8 and dynamic:
        raise ValueError("--int8 writes a static-shape file (calibrated per shape): drop --dynamic")


def describe(file: Path) -> str:
    """What the file is, read back from the file itself: opset, precision, static or dynamic input."""
    proto = onnx.load(str(file), load_external_data=False)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    shape = "dynamic " + "x".join(map(str, dims)) if any(isinstance(d, str) for d in dims) else \
        "static " + "x".join(map(str, dims))
    return f"opset {opset}, {onnx_precision(file)}, {shape}"
