"""export.py's job: checkpoint -> ONNX (+ OpenVINO) with metadata, sparsity check, numeric check, sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from utils.augmentations import check_img_size
from utils.checkpoint import load_model
from utils.engines.base import as_hw
from utils.files import increment_path
from utils.labels import is_writable_dir

from .metadata import checkpoint_recipe, export_metadata, model_sparsity
from .openvino import export_openvino
from .prepare import prepare_model
from .report import format_sizes, onnx_conv_sparsity, size_table
from .trace import DEFAULT_OPSET, export_onnx
from .verify import verification_image, verify_line, verify_onnx


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
                   prune: Callable[[nn.Module], str] | None = None) -> dict[str, Any]:
    """Checkpoint -> ONNX (+ OpenVINO) next to it, with metadata, a sparsity check, a numeric check and sizes.

    prune: optional one-shot step on the loaded model (export.py --sparsity); it returns a tag for the file name
    (yolov5n_obc50.onnx) so a pruned export never overwrites the dense one.
    """
    weights = Path(weights)
    model = load_model(str(weights), device=device, fuse=False)
    hw = tuple(check_img_size(list(as_hw(imgsz)), s=int(model.stride.max())))  # round up and warn
    tag = prune(model) if prune is not None else ""
    sparsity = model_sparsity(model)
    meta = export_metadata(model, hw, batch_size, dynamic, sparsity, checkpoint_recipe(model))
    prepared = prepare_model(model)
    target = weights.with_name(f"{weights.stem}{tag}{weights.suffix}")
    onnx_file = export_onnx(prepared, output_path(target, log=log), hw, batch_size, dynamic, opset, meta, simplify)
    result: dict[str, Any] = {"files": [onnx_file], "sparsity": sparsity, "metadata": meta}
    shape = "dynamic" if dynamic else f"static {batch_size}x3x{hw[0]}x{hw[1]}"
    log(f"export: wrote {onnx_file} (opset {opset}, {shape})")
    result["onnx_sparsity"] = onnx_conv_sparsity(onnx_file)["sparsity"]
    log(f"export: conv weight sparsity {sparsity:.4f} in PyTorch (global, prunable weights), "
        f"{result['onnx_sparsity']:.4f} measured in the ONNX initializers")
    if verify:
        batch, source = verification_image(hw)
        # against the unfused model, so BN folding is checked too
        result["verify"] = verify_onnx(model, onnx_file, np.repeat(batch, batch_size, 0))
        log(verify_line(result["verify"], source))
        if verify_strict and not result["verify"]["agrees"]:
            raise ValueError(f"export: --verify-strict: {onnx_file} disagrees with PyTorch on {source} (written, "
                             f"but do not deploy it); see the line above")
    if "openvino" in include:
        ov_dir = export_openvino(onnx_file, meta)
        result["files"].append(ov_dir)
        log(f"export: wrote {ov_dir}/ (OpenVINO IR, f32 weights)")
    result["sizes"] = size_table([weights, *result["files"]])
    log(format_sizes(result["sizes"]))
    return result
