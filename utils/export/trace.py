"""Trace a prepared model to ONNX, write its metadata, and only then put the file in place (atomic)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from utils.atomic import atomic_path
from utils.compat import import_sparseml, onnx_export_kwargs
from utils.engines.base import as_hw
from utils.engines.metadata import onnx_metadata_props

from .prepare import INPUT_NAME, OUTPUT_NAME, FirstOutput, is_qat, reset_grids

DEFAULT_OPSET = 13


def export_onnx(model: nn.Module, file: str | Path, imgsz: int | tuple[int, int] = 640, batch_size: int = 1,
                dynamic: bool = False, opset: int = DEFAULT_OPSET, metadata: dict[str, Any] | None = None,
                simplify: bool = False) -> Path:
    """Trace with the legacy TorchScript exporter (dynamo needs onnxscript, which breaks our pins) and add metadata.

    The file appears at `file` only once it is complete with its metadata: a crash or full disk leaves the previous
    export (if any) untouched.
    """
    file = Path(file)
    with atomic_path(file, what="export") as tmp:
        _trace(model, tmp, imgsz, batch_size, dynamic, opset)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        if simplify:
            proto = simplify_onnx(proto)
        write_metadata(proto, metadata or {})
        onnx.save(proto, str(tmp))
    return file


def _trace(model: nn.Module, file: Path, imgsz: int | tuple[int, int], batch_size: int, dynamic: bool,
           opset: int) -> None:
    """Float models through torch.onnx; QAT models through SparseML's INT8 (ConvInteger) converter."""
    h, w = as_hw(imgsz)
    x = torch.zeros(batch_size, 3, h, w)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}}
    reset_grids(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent python ints are expected here
        if is_qat(model):
            export_qat_int8(model, file, x, axes if dynamic else None)
        else:
            torch.onnx.export(FirstOutput(model), x, str(file), opset_version=opset, do_constant_folding=True,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=axes if dynamic else None, dynamo=False)


def export_qat_int8(model: nn.Module, file: Path, x: torch.Tensor, dynamic_axes: dict | None) -> None:
    """QAT -> INT8 ONNX (ConvInteger), SparseML's converter: the form DeepSparse and ONNX Runtime both run as INT8."""
    import_sparseml()  # applies the torch 2.13 QConfig shim first
    from sparseml.pytorch.utils import ModuleExporter  # heavy optional dependency, after the shim above

    name = file.name if file.suffix == ".onnx" else file.name + ".onnx"  # SparseML appends .onnx to other names
    ModuleExporter(model, output_dir=str(file.parent)).export_onnx(
        x, name=name, convert_qat=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes=dynamic_axes, **onnx_export_kwargs(for_sparseml=True))
    if name != file.name:
        os.replace(file.parent / name, file)


def write_metadata(proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Replace the file's metadata_props with ours (Ultralytics-style keys: names, stride, imgsz, ...)."""
    del proto.metadata_props[:]
    for k, v in onnx_metadata_props(metadata).items():
        proto.metadata_props.add(key=k, value=v)


def simplify_onnx(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-simplifier when installed (optional: it does not install against our pins); else the graph unchanged."""
    try:
        import onnxsim  # optional package, absent from our pinned stack
    except ImportError:
        print("export: --simplify skipped, onnxsim is not installed (pip install onnxsim)")
        return proto
    simplified, ok = onnxsim.simplify(proto)
    return simplified if ok else proto
