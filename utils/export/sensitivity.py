"""Which activations post-training INT8 hurts most, so the few that cost accuracy can stay float (mixed precision).

Why: per-tensor uint8 ranges suit most of YOLOv5's activations, but a handful (wide-range Concat and residual Add
outputs, the stem) carry most of the error that reaches the detections. Each unit (a SiLU's Conv/Sigmoid/Mul
outputs together, or any other quantized tensor) is quantized alone on a few calibration images, and its error is
measured where the detections are made: the sigmoid of Detect's output convs, against the FP32 graph.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx

from utils.engines.onnxruntime_engine import import_onnxruntime, session_options

from .qdq import DEFAULT_LAYOUT, _chosen_tensors, _producers, _with_outputs, head_convs, quantize_qdq


def silu_units(model: onnx.ModelProto, tensors: Sequence[str]) -> list[list[str]]:
    """`tensors` grouped so a SiLU (x, Sigmoid(x), x * Sigmoid(x)) is one unit: ORT fuses it only whole."""
    prod = _producers(model.graph)
    group: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        for x, s in (n.input, n.input[::-1]):
            sig = prod.get(s)
            if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == x:
                group.update({x: n.output[0], s: n.output[0], n.output[0]: n.output[0]})
    units: dict[str, list[str]] = {}
    for t in tensors:
        units.setdefault(group.get(t, t), []).append(t)
    return list(units.values())


def _head_probs(model: onnx.ModelProto, batches: Sequence[np.ndarray], threads: int | None) -> list[np.ndarray]:
    """Sigmoid of every head conv output for every batch: the space Detect decodes boxes and scores from."""
    heads = [n.output[0] for n in head_convs(model)]
    ort = import_onnxruntime()
    sess = ort.InferenceSession(_with_outputs(model, heads).SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = []
    for b in batches:
        for v in sess.run(heads, {name: b}):
            out.append(1.0 / (1.0 + np.exp(-v.astype(np.float64))))
    return out


def rank_units(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], batches: Iterable[np.ndarray],
               layout: str, quantize_head: bool = False, threads: int | None = None) -> list[tuple[list[str], float]]:
    """Every quantizable unit with the mean squared head error it adds when quantized alone; worst first."""
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
    ref = _head_probs(model, batches, threads)
    chosen = _chosen_tensors(model, layout, quantize_head)
    scored = []
    for unit in silu_units(model, chosen):
        others = set(chosen) - set(unit)
        q = quantize_qdq(model, ranges, quantize_head=quantize_head, layout=layout, keep_float=others)
        got = _head_probs(q, batches, threads)
        err = float(np.mean([np.mean((a - r) ** 2) for a, r in zip(got, ref)]))
        scored.append((unit, err))
    return sorted(scored, key=lambda s: -s[1])


def most_sensitive(units: int, layout: str = DEFAULT_LAYOUT, quantize_head: bool = False):
    """A quantize_onnx_file chooser: the tensors of the `units` units that add the most head error stay float."""
    def choose(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], batches: list[np.ndarray]) -> list[str]:
        ranked = rank_units(model, ranges, batches, layout, quantize_head)
        return [t for unit, _ in ranked[:units] for t in unit]

    return choose
