"""Export package: prepare -> trace (ONNX, atomic) -> INT8 -> OpenVINO -> verify -> size report; pipeline runs them.

Modules: prepare (eval copy, BN folded), metadata (what the file says about itself), trace (torch -> ONNX, QAT
models through SparseML's ConvInteger converter), qdq (calibrated QDQ INT8 from an FP32 file), int8 (the INT8 files
export.py writes, per format), openvino (IR folder), verify (ONNX vs PyTorch, with a verdict), report (sparsity,
precision, sizes), pipeline (export.py's job).
"""
from __future__ import annotations

from .metadata import export_metadata, model_sparsity, recipe_summary
from .openvino import export_openvino
from .pipeline import export_weights, output_path
from .prepare import INPUT_NAME, OUTPUT_NAME, prepare_model
from .report import onnx_conv_sparsity, onnx_precision
from .trace import DEFAULT_OPSET, export_onnx
from .verify import load_image_batch, match_detections, verify_onnx

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "export_metadata", "export_onnx", "export_openvino",
           "export_weights", "load_image_batch", "match_detections", "model_sparsity", "onnx_conv_sparsity",
           "onnx_precision", "output_path", "prepare_model", "recipe_summary", "verify_onnx"]
