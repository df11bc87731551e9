"""QOperator INT8 (QLinearConv, QLinearAdd, QLinearSigmoid, ...): the form OpenCV DNN runs as INT8.

OpenCV (4.11) reads a QDQ file but keeps it as float fake-quant: Quantize/Dequantize layers around float convolutions,
slower than the FP32 file. Its INT8 layers (ConvolutionInt8, EltwiseInt8, SigmoidInt8, ...) are built from QOperator
nodes. ONNX Runtime's graph optimizer, at its extended level, rewrites our QDQ graph into exactly that form
(QLinearConv from the ONNX standard, QLinearSigmoid/Mul/Add/Concat from com.microsoft) without the machine-specific
layout changes of its highest level, so the file stays portable; the scales and zero points are the QDQ file's.
ONNX Runtime and OpenCV then run the same integer ops: on bus.jpg at 640 (official yolov5n) their detections are
identical. OpenVINO and DeepSparse do not read com.microsoft ops: give them the QDQ forms.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from utils.atomic import atomic_path
from utils.engines.onnxruntime_engine import import_onnxruntime, session_options

QOPERATOR_OPS = ("QLinearConv", "QLinearSigmoid", "QLinearMul", "QLinearAdd", "QLinearConcat")


def to_qoperator(qdq_file: str | Path, out: str | Path) -> Path:
    """Rewrite a QDQ file as QOperator nodes at `out` (may be the same path), metadata kept and the format stated."""
    ort = import_onnxruntime()
    opts = session_options(1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # QDQ fusions, no NCHWc layouts
    opts.optimized_model_filepath = str(Path(out).with_suffix(".qop.tmp"))
    opts.log_severity_level = 3
    ort.InferenceSession(str(qdq_file), sess_options=opts, providers=["CPUExecutionProvider"])
    tmp = Path(opts.optimized_model_filepath)
    try:
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    ops = Counter(n.op_type for n in proto.graph.node)
    if not ops["QLinearConv"]:
        raise ValueError(f"{qdq_file}: ONNX Runtime fused no conv into QLinearConv; the QOperator form needs the qdq "
                         "placement (every activation quantized)")
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["quantization_format"] = "qoperator (" + ", ".join(f"{k} {ops[k]}" for k in QOPERATOR_OPS if ops[k]) + ")"
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(out, what="QOperator export") as dst:
        onnx.save(proto, str(dst))
    return Path(out)
