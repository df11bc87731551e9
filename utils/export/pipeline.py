"""export.py's job: checkpoint -> ONNX (+ OpenVINO) with metadata, sparsity check, numeric check, sizes."""
from __future__ import annotations

from dataclasses import dataclass, field
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

from .head import HEADS, model_head, strip_decode
from .int8 import INT8_FORMATS, QDQ_FORMS, calibration_images, export_convinteger, export_qdq
from .metadata import checkpoint_recipe, export_metadata, model_sparsity
from .openvino import export_openvino
from .pixels import LAYOUT_KEY, NHWC_BGR, pixel_input, pixel_layout
from .prepare import is_qat, prepare_model
from .qat_qdq import export_qat_qdq
from .qoperator import to_qoperator
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


@dataclass
class Export:
    """One export.py job: the loaded model, where its files go, and what has been written so far."""

    model: nn.Module
    weights: Path
    hw: tuple[int, int]
    batch_size: int
    meta: dict[str, Any]
    tag: str
    images: list[str]
    log: Callable[[str], None]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return self.result["files"]

    def onnx_files(self) -> list[Path]:
        return [f for f in self.files if f.suffix == ".onnx"]

    def finish(self) -> dict[str, Any]:
        """Size table of the checkpoint and every file written, logged and returned with the result."""
        self.result["sizes"] = size_table([self.weights, *self.files])
        self.log(format_sizes(self.result["sizes"]))
        return self.result


def export_weights(weights: str | Path, include: tuple[str, ...] = ("onnx",), imgsz: int | tuple[int, int] = 640,
                   batch_size: int = 1, dynamic: bool = False, opset: int = DEFAULT_OPSET, simplify: bool = False,
                   device: str = "cpu", verify: bool = True, log=print, verify_strict: bool = False,
                   prune: Callable[[nn.Module], str] | None = None, int8: bool = False, data: str | dict | None = None,
                   calib_images: int = 128, int8_format: str = "qdq", calib_method: str = DEFAULT_METHOD,
                   verify_images: int = 8, uint8_input: bool = False, head: str = "decoded",
                   nhwc: bool = False, int8_float: int = 0) -> dict[str, Any]:
    """Checkpoint -> ONNX (+ INT8, + OpenVINO) next to it, with metadata, a sparsity check, a numeric check, sizes.

    prune: optional one-shot step on the loaded model (export.py's old --sparsity); it returns a tag for the file name
    (yolov5n_obc50.onnx) so a pruned export never overwrites the dense one.
    int8: also write <stem>_int8.onnx, post-training from `calib_images` images of `data` (QDQ by default; a QAT
    checkpoint is INT8 already: its file is the INT8 one). With `data`, verification uses the dataset's images.
    int8_float: QDQ only: that many activation units (a SiLU, an Add, a Concat) whose INT8 error reaches the
    detections most, measured on the first calibration images, stay float (mixed precision).
    "ultralytics" in include: also write <stem>_ultralytics.pt in Ultralytics YOLOv5's own (pickled) layout; alone,
    with no --int8, it is the only file written.
    uint8_input: the graph takes uint8 NCHW RGB pixels and divides by 255 itself (no float conversion in the caller).
    nhwc: ... uint8 NHWC BGR frames instead (utils.export.pixels; INT8 files: the pixels are their quantized input).
    head: "raw" ends every ONNX file at Detect's convs; our engines decode only the cells that pass objectness.
    """
    if head not in HEADS:
        raise ValueError(f"--head {head!r}: choose one of {', '.join(HEADS)}")
    pixels = pixel_layout(uint8_input, nhwc)
    check_int8_options(int8, data, int8_format, dynamic, int8_float, include)  # before anything is loaded or written
    job = _load(weights, imgsz, batch_size, dynamic, device, prune, data, calib_images, verify_images, log)
    if "ultralytics" in include:
        check_ultralytics(job.model)  # refuse (QAT, foreign layers) before anything is written
        if not int8 and not {"onnx", "openvino"} & set(include):
            job.result["files"] = [ultralytics_file(job.model, job.weights, job.tag, log)]
            return job.finish()
    _write_onnx(job, int8_format, dynamic, opset, simplify)
    if int8 and not is_qat(job.model):
        _write_int8(job, int8_format, calib_images, calib_method, data, int8_float)
    if head == "raw":
        _strip_decode(job)
    if pixels:
        _pixel_input(job, pixels)
    if verify:
        _verify(job, verify_images, verify_strict)
    if "openvino" in include:
        _write_openvino(job)
    if "ultralytics" in include:
        job.files.append(ultralytics_file(job.model, job.weights, job.tag, log))
    return job.finish()


def _load(weights: str | Path, imgsz: int | tuple[int, int], batch_size: int, dynamic: bool, device: str,
          prune: Callable[[nn.Module], str] | None, data: str | dict | None, calib_images: int,
          verify_images: int, log: Callable[[str], None]) -> Export:
    """Read the calibration images and the checkpoint, prune if asked: nothing written yet."""
    images = calibration_images(data, max(calib_images, verify_images)) if data else []
    weights = Path(weights)
    model = load_model(str(weights), device=device, fuse=False)
    hw = tuple(check_img_size(list(as_hw(imgsz)), s=int(model.stride.max())))  # round up and warn
    tag = prune(model) if prune is not None else ""
    sparsity = model_sparsity(model)
    meta = export_metadata(model, hw, batch_size, dynamic, sparsity, checkpoint_recipe(model))
    return Export(model, weights, hw, batch_size, meta, tag, images, log, {"sparsity": sparsity, "metadata": meta})


def _write_onnx(job: Export, int8_format: str, dynamic: bool, opset: int, simplify: bool) -> None:
    """The main file: float, or a QAT model's own INT8 (QDQ, or SparseML's ConvInteger form for DeepSparse)."""
    target = output_path(job.weights.with_name(f"{job.weights.stem}{job.tag}{job.weights.suffix}"), log=job.log)
    if is_qat(job.model) and int8_format in QDQ_FORMS:  # learned scales and placement, as every engine runs INT8
        onnx_file = export_qat_qdq(job.model, target, job.hw, job.batch_size, job.meta)
        if int8_format == "qoperator":
            to_qoperator(onnx_file, onnx_file)
    else:
        onnx_file = export_onnx(prepare_model(job.model), target, job.hw, job.batch_size, dynamic, opset, job.meta,
                                simplify)
    job.result["files"] = [onnx_file]
    job.log(f"export: wrote {onnx_file} ({describe(onnx_file)})")
    job.result["onnx_sparsity"] = onnx_conv_sparsity(onnx_file)["sparsity"]
    job.log(f"export: conv weight sparsity {job.result['sparsity']:.4f} in PyTorch (global, prunable weights), "
            f"{job.result['onnx_sparsity']:.4f} measured in the ONNX initializers")


def _write_int8(job: Export, int8_format: str, calib_images: int, calib_method: str, data: str | dict | None,
               float_units: int = 0) -> None:
    """<stem>_int8.onnx, post-training: QDQ from the FP32 file, or SparseML's ConvInteger from the model."""
    onnx_file = job.files[0]
    int8_file = onnx_file.with_name(f"{onnx_file.stem}_int8.onnx")
    calib = job.images[:calib_images]
    if int8_format in QDQ_FORMS:
        one = export_onnx(prepare_model(job.model), int8_file.with_name(f".{int8_file.stem}_b1.onnx"), job.hw, 1) \
            if job.batch_size > 1 else None  # calibrate image by image on the batch-1 twin
        export_qdq(onnx_file, int8_file, calib, job.hw[0], job.batch_size, calib_method, one, float_units,
                   int8_format)
        if one is not None:
            one.unlink()
    else:
        export_convinteger(job.model, int8_file, job.hw, job.batch_size, job.meta, [cv2.imread(f) for f in calib])
    job.files.append(int8_file)
    how = f"{int8_format}, {calib_method if int8_format in QDQ_FORMS else 'SparseML observers'}"
    if float_units and int8_format in QDQ_FORMS:
        how += f", {float_units} most sensitive activation units float"
    job.log(f"export: wrote {int8_file} ({describe(int8_file)}; {how}, calibrated on {len(calib)} images of "
            f"{dataset_name(data)})")


def _strip_decode(job: Export) -> None:
    """--head raw: every ONNX file ends at Detect's conv maps (checked against PyTorch's decode by _verify)."""
    raw = model_head(job.model)
    for f in job.onnx_files():
        strip_decode(f, raw)
        job.log(f"export: {f.name} ends at Detect's convs (--head raw): the decode runs on the host, for the cells "
                f"that pass objectness")
    job.meta.update(raw.metadata())


def _pixel_input(job: Export, layout: str) -> None:
    """--nhwc / --uint8-input: every ONNX file takes uint8 pixels (checked against PyTorch by _verify)."""
    for f in job.onnx_files():
        pixel_input(f, layout)
        job.log(f"export: {f.name} takes uint8 {layout} pixels (--{'nhwc' if layout == NHWC_BGR else 'uint8-input'}):"
                f" the engine does the rest (INT8 files: the pixels are their quantized input)")
    job.meta[LAYOUT_KEY] = layout


def _verify(job: Export, verify_images: int, strict: bool) -> None:
    """Every ONNX file against the unfused PyTorch model (BN folding too), on the dataset's images when given."""
    stacked, source = verification_batches(job.hw, job.images[-verify_images:] if job.images else None,
                                           job.batch_size)
    for f in job.onnx_files():
        v = job.result.setdefault("verify_all", {})[f.name] = verify_many(job.model, f, stacked, job.batch_size)
        job.log(verify_line(v, source, f.name))
        if strict and not v["agrees"]:
            raise ValueError(f"export: --verify-strict: {f} disagrees with PyTorch on {source} (written, "
                             f"but do not deploy it); see the line above")
    job.result["verify"] = job.result["verify_all"][job.files[0].name]


def _write_openvino(job: Export) -> None:
    """An OpenVINO IR folder beside each ONNX file (INT8 files keep their QDQ scheme in the metadata)."""
    for f in job.onnx_files():
        extra = {k: v for k, v in read_onnx_metadata(f).items() if k not in job.meta}  # e.g. the INT8 scheme
        ov_dir = export_openvino(f, {**job.meta, **extra})
        job.files.append(ov_dir)
        job.log(f"export: wrote {ov_dir}/ (OpenVINO IR, {'INT8 (QDQ)' if '_int8' in f.stem else 'f32'} weights)")
        if extra.get("quantization_layout") == QDQ_FORMS["qdq"][0]:
            job.log("export: OpenVINO runs INT8 faster and more accurately from --int8-format qdq-inputs (yolov5s 640: "
                    "1.4x; Q/DQ only where convs read, so it fuses SiLU into its INT8 convs)")


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
                       int8_float: int = 0, include: tuple[str, ...] = ()) -> None:
    """One line for an --int8 request that cannot work, before anything is loaded or written."""
    if int8_format not in INT8_FORMATS:
        raise ValueError(f"--int8-format {int8_format!r}: choose one of {', '.join(INT8_FORMATS)}")
    if int8_format == "qoperator" and "openvino" in include:
        raise ValueError("--int8-format qoperator is for OpenCV DNN and ONNX Runtime; OpenVINO does not read its "
                         "com.microsoft ops: drop --include openvino or use --int8-format qdq-inputs")
    if int8_float < 0 or (int8_float and (not int8 or int8_format not in QDQ_FORMS)):
        raise ValueError(f"--int8-float {int8_float}: a count >= 0 of activation units left float, for --int8 with "
                         f"--int8-format {' or '.join(QDQ_FORMS)}")
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
