"""What an export weighs and how sparse its stored weights are (raw, gzip, zeros per conv)."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# weight input index per conv op type; quantized ops also name the weight zero point so "zero" means == zero point
QUANT_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear"}
CONV_WEIGHT_INPUTS = {"Conv": (1, None), "ConvInteger": (1, 3), "QLinearConv": (3, 5)}


def _initializers(proto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _weight_source(name: str, producers: dict, inits: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Weight array and its zero point, looking through a DequantizeLinear (QDQ graphs) when there is one."""
    if name in inits:
        return inits[name], None
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        return inits[node.input[0]], zp
    return None, None


def _count_zeros(w: np.ndarray, zp: np.ndarray | None) -> int:
    """Weights equal to their zero point (0 for float; per-tensor or per-output-channel for INT8)."""
    if zp is None:
        return int((w == 0).sum())
    zp = np.asarray(zp)
    if zp.ndim == 1 and zp.size == w.shape[0]:
        zp = zp.reshape(-1, *([1] * (w.ndim - 1)))
    return int((w == zp).sum())


def onnx_conv_sparsity(file: str | Path) -> dict[str, Any]:
    """Zeros in the conv weights stored in an ONNX file: proves pruning survived BN folding and export."""
    proto = onnx.load(str(file))
    inits = _initializers(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    zeros = total = 0
    layers = []
    for node in proto.graph.node:
        if node.op_type not in CONV_WEIGHT_INPUTS:
            continue
        wi, zi = CONV_WEIGHT_INPUTS[node.op_type]
        w, zp = _weight_source(node.input[wi], producers, inits)
        if w is None:
            continue
        if zi is not None and len(node.input) > zi and node.input[zi] in inits:
            zp = inits[node.input[zi]]
        z = _count_zeros(w, zp)
        zeros, total = zeros + z, total + w.size
        layers.append((node.name, z / w.size))
    return {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0, "layers": layers}


def file_size(path: Path, compress: bool = True) -> tuple[int, int | None]:
    """Raw and gzip -9 bytes; sparse weights compress, which is how sparsity shows up in download size."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), compresslevel=9)) for p in files) if compress else None
    return raw, gz


def size_table(paths: list[Path]) -> dict[str, tuple[int, int | None]]:
    """Raw and gzip -9 bytes per path (folders raw only: gzip -9 of sparse weights costs seconds per file)."""
    return {p.name + ("/" if p.is_dir() else ""): file_size(p, compress=not p.is_dir()) for p in paths}


def format_sizes(sizes: dict[str, tuple[int, int | None]]) -> str:
    """Plain-text table in MB with the gzip ratio, which is where unstructured sparsity pays off in downloads."""
    rows = [f"{'file':<40} {'raw MB':>9} {'gzip -9 MB':>11} {'ratio':>6}"]
    for name, (raw, gz) in sizes.items():
        packed = f"{gz / 1e6:>11.2f} {gz / max(raw, 1):>6.2f}" if gz is not None else f"{'-':>11} {'-':>6}"
        rows.append(f"{name:<40} {raw / 1e6:>9.2f} {packed}")
    return "\n".join(rows)


def onnx_precision(file: str | Path) -> str:
    """'INT8' when the graph holds quantized ops, else 'FP16'/'FP32' from the float initializers."""
    proto = onnx.load(str(file), load_external_data=False)
    if any(n.op_type in QUANT_OPS for n in proto.graph.node):
        return "INT8"
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    return "FP16" if fp16 else "FP32"
