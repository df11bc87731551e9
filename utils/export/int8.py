"""INT8 ONNX writers: SparseML's ConvInteger conversion of QAT models."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from utils.compat import import_sparseml, onnx_export_kwargs

from .prepare import INPUT_NAME, OUTPUT_NAME


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
