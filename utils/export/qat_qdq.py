"""QAT INT8 ONNX -> QDQ ONNX: the same learned numbers in the form every runtime reads.

SparseML's converter writes QAT models as ConvInteger (our `export_qat_int8`) or QLinearConv (older SparseML, e.g.
third-party files). Only DeepSparse runs those fast: ONNX Runtime and OpenVINO run ConvInteger slower than FP32 and
OpenCV DNN cannot load it. The portable form is QDQ: DequantizeLinear -> float Conv -> QuantizeLinear, which ONNX
Runtime fuses back into QLinearConv (x86: uint8 activations, int8 weights), OpenVINO runs as INT8 and OpenCV reads
(as float fake-quant).

`qdq_from_quantized` is a local rewrite of each quantized conv; it keeps the scales and zero points learned in
training (no calibration) and every other node as exported (SiLU, Detect decode). What the converters write:

* ConvInteger (SparseML 1.x `convert_qat=True`, what `utils/export/int8.py` writes, opset 14)::

      QuantizeLinear(x, x_s, x_zp:uint8) -> ConvInteger(x_q, w_q:uint8, x_zp, w_zp=128)
        -> Add(int32 bias, shape (1,C,1,1)) -> Cast(to=float) -> Mul(combined scale x_s*w_s, scalar)
        -> QuantizeLinear(y_s, y_zp) -> DequantizeLinear   (the Detect head convs end in Reshape: no output Q)

  becomes ``DequantizeLinear(x_q, x_s, x_zp) -> Conv(x, DQ(w_q - 128: int8, combined/x_s, 0), DQ(b, combined, 0))``
  with the Mul's output name. The variant without the integer bias (``Cast -> Mul -> Add(float bias)``) is also
  accepted; its float bias is rounded to int32 in units of the combined scale (off by at most half a step).
* QLinearConv(x_q, x_s, x_zp, w_q, w_s, w_zp, y_s, y_zp[, b]) becomes
  ``DQ(x_q) -> Conv(x, DQ(w), DQ(b, x_s*w_s)) -> QuantizeLinear(y_s, y_zp)``, the Q keeping QLinearConv's output name.

SparseML's default QuantizationModifier scheme (what our recipes and PTQ produce): activations quint8, asymmetric,
per tensor (0..255, zero point learned, so uint8 zero points in the file); weights qint8 symmetric per tensor
(zero point 0), which the converter stores as uint8 with zero point 128. We store weights as int8 (value - 128, zero
point 0: exact) because ONNX Runtime's x86 fusion wants int8 weights. Schemes with int8 activations (int8 zero
points on activation Q/DQ) are moved to uint8 (zero point + 128: the dequantized values are identical), since
ONNX Runtime's x86 QDQ fusion needs uint8 activations.

What runtimes make of it (yolov5n): ONNX Runtime fuses the 57 requantized convs into QLinearConv; the 3 Detect head
convs write float in the QAT export (no output Q), so they stay DQ -> float Conv. SiLU stays float between the learned
Q/DQ pairs as SparseML exported it (`quantize_silu=False`). Measured at 640 px, batch 1, one thread, interleaved: QDQ
1.2x FP32 time, ConvInteger 2.0x (QDQ = 0.6x ConvInteger); the int8 convs themselves take ~0.6x the FP32 conv time,
the rest goes to the Q/DQ around each float SiLU (ORT does not fuse Sigmoid*Mul there). Numbers: vs the ConvInteger
file max |diff| ~3e-7 of the largest output; a QLinearConv file converts bit-exactly. export_qat_qdq therefore also
quantizes each Sigmoid output (fixed range: scale 1/255, zero point 0) where the SiLU feeds only QuantizeLinear (27 of
yolov5n's 57), so ONNX Runtime fuses QLinearSigmoid and QLinearMul there as in the post-training files: the pistols
QAT yolov5n at 320 went from 11.1 to 8.9 ms (FP32 7.9, post-training INT8 7.4). It also moves the Q after each
Concat onto the Concat's inputs (exact, same scale): 13 QLinearConcat and 16 more quantized SiLUs (43 of 57; the 14
left feed a residual Add, whose inputs have no learned range); engine 9.3 -> 8.7 ms interleaved on a loaded machine,
pistols valid mAP50 0.785 -> 0.781, mAP50-95 0.452 -> 0.454.
"""
from __future__ import annotations

import copy
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from utils.atomic import atomic_path

from .prepare import is_qat, prepare_model
from .trace import export_onnx, write_metadata

MIN_OPSET = 13  # per-axis DequantizeLinear (per-channel weights and biases)
SCHEME = "qdq from QAT (learned scales)"
# ops that only move or select values: an int8 tensor through them stays the same quantized tensor
_PASSTHROUGH = {"MaxPool", "Reshape", "Transpose", "Concat", "Slice", "Split", "Squeeze", "Unsqueeze", "Flatten",
                "Identity", "Resize", "Gather", "Pad", "DepthToSpace", "SpaceToDepth"}


def _consumers(nodes) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes reading it."""
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            out[i].append(n)
    return out


class _Graph:
    """Constants, producers and consumers of a graph, plus fresh names for what the rewrite adds."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = _consumers(graph.node)
        self.outputs = {o.name for o in graph.output}
        self.new_inits: list[onnx.TensorProto] = []
        self.names = set(self.inits) | set(self.producer) | {i.name for i in graph.input}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant node output; None for computed tensors."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def add_init(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        t = numpy_helper.from_array(np.asarray(value), name)
        self.new_inits.append(t)
        self.inits[name] = t
        return name

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        cs = self.consumers.get(name, [])
        return cs[0] if len(cs) == 1 and name not in self.outputs else None


def _per_channel(*arrays: np.ndarray) -> bool:
    return any(np.asarray(a).size > 1 for a in arrays)


def _channels(a: np.ndarray, n: int) -> np.ndarray:
    """Scalar or (C,)/(1,C,1,1)-shaped parameter as a (C,) vector."""
    a = np.asarray(a).reshape(-1)
    return np.broadcast_to(a, (n,)).copy() if a.size == 1 else a


def _scalar_or_vector(a: np.ndarray, per_channel: bool, n: int) -> np.ndarray:
    return _channels(a, n) if per_channel else np.asarray(a).reshape(())


def _int8_weights(w: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 weights with zero point z -> int8 weights with zero point z - 128 (the same dequantized values)."""
    if w.dtype == np.int8:
        return w, np.asarray(zp).astype(np.int8)
    if w.dtype != np.uint8:
        raise ValueError(f"quantized conv weights of dtype {w.dtype}: expected int8 or uint8")
    return ((w.astype(np.int16) - 128).astype(np.int8),
            (np.asarray(zp).astype(np.int16) - 128).astype(np.int8))


def _conv_attrs(node: onnx.NodeProto) -> list[onnx.AttributeProto]:
    return [copy.deepcopy(a) for a in node.attribute]


def _qdq_conv(g: _Graph, base: str, x_q: str, x_s: np.ndarray, x_zp: np.ndarray, w_q: np.ndarray,
              w_s: np.ndarray, w_zp: np.ndarray, bias: np.ndarray | None, attrs, out: str,
              b_s: np.ndarray | None = None) -> list[onnx.NodeProto]:
    """DQ(x) and DQ(w) [and DQ(int32 bias, b_s = x_s*w_s)] feeding a float Conv that writes `out`."""
    n_out = w_q.shape[0]
    per_ch = _per_channel(w_s, w_zp)
    w_q, w_zp = _int8_weights(w_q, w_zp)
    w_s = _scalar_or_vector(w_s.astype(np.float32), per_ch, n_out)
    w_zp = _scalar_or_vector(w_zp, per_ch, n_out)
    axis = [helper.make_attribute("axis", 0)] if per_ch else []
    x_s = np.asarray(x_s, np.float32).reshape(())
    x_zp = np.asarray(x_zp).reshape(())

    x = g.fresh(f"{base}_x")
    w = g.fresh(f"{base}_w")
    nodes = [helper.make_node("DequantizeLinear", [x_q, g.add_init(f"{base}_x_scale", x_s),
                                                   g.add_init(f"{base}_x_zero_point", x_zp)], [x],
                              name=g.fresh(f"{base}_x_DequantizeLinear"))]
    dq_w = helper.make_node("DequantizeLinear", [g.add_init(f"{base}_w_quantized", w_q),
                                                 g.add_init(f"{base}_w_scale", w_s),
                                                 g.add_init(f"{base}_w_zero_point", w_zp)], [w],
                            name=g.fresh(f"{base}_w_DequantizeLinear"))
    dq_w.attribute.extend(axis)
    nodes.append(dq_w)
    conv_in = [x, w]
    if bias is not None:
        b = g.fresh(f"{base}_b")
        b_s = (x_s * w_s).astype(np.float32) if b_s is None else np.asarray(b_s, np.float32).reshape(w_s.shape)
        dq_b = helper.make_node("DequantizeLinear", [
            g.add_init(f"{base}_b_quantized", np.asarray(bias, np.int32).reshape(-1)),
            g.add_init(f"{base}_b_scale", b_s),
            g.add_init(f"{base}_b_zero_point", np.zeros(b_s.shape, np.int32))], [b],
            name=g.fresh(f"{base}_b_DequantizeLinear"))
        dq_b.attribute.extend(axis)
        nodes.append(dq_b)
        conv_in.append(b)
    conv = helper.make_node("Conv", conv_in, [out], name=g.fresh(f"{base}_Conv"))
    conv.attribute.extend(attrs)
    nodes.append(conv)
    return nodes


def _rewrite_qlinearconv(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x_q, x_s, x_zp, w_q, w_s, w_zp, y_s, y_zp = node.input[:8]
    vals = {k: g.const(k) for k in (x_s, x_zp, w_q, w_s, w_zp)}
    if any(v is None for v in vals.values()):
        raise ValueError(f"QLinearConv {node.name}: scales, zero points and weights must be constants")
    bias = g.const(node.input[8]) if len(node.input) > 8 and node.input[8] else None
    if len(node.input) > 8 and node.input[8] and bias is None:
        raise ValueError(f"QLinearConv {node.name}: bias must be a constant")
    base = node.name or node.output[0]
    y = g.fresh(f"{base}_float")
    nodes = _qdq_conv(g, base, x_q, vals[x_s], vals[x_zp], vals[w_q], vals[w_s], vals[w_zp], bias,
                      _conv_attrs(node), y)
    nodes.append(helper.make_node("QuantizeLinear", [y, y_s, y_zp], [node.output[0]],
                                  name=g.fresh(f"{base}_y_QuantizeLinear")))
    return nodes


def _const_operand(g: _Graph, node: onnx.NodeProto, data: str) -> np.ndarray | None:
    """The constant operand of a binary Add/Mul whose other operand is `data`."""
    other = [i for i in node.input if i != data]
    return g.const(other[0]) if len(other) == 1 else None


def _convinteger_chain(g: _Graph, node: onnx.NodeProto):
    """ConvInteger's rescale chain: ([Add int32 bias] -> Cast float -> Mul scale) or (Cast -> Mul -> [Add float bias]).

    Returns (chain nodes, int32 bias or None, float bias or None, combined scale, output name)."""
    chain, cur = [], node.output[0]
    int_bias = float_bias = None
    nxt = g.only_consumer(cur)
    if nxt is not None and nxt.op_type == "Add":
        int_bias = _const_operand(g, nxt, cur)
        if int_bias is None or int_bias.dtype != np.int32:
            raise ValueError(f"ConvInteger {node.name}: Add after it is not a constant int32 bias")
        chain.append(nxt)
        cur = nxt.output[0]
        nxt = g.only_consumer(cur)
    if nxt is None or nxt.op_type != "Cast" or helper.get_attribute_value(nxt.attribute[0]) != TensorProto.FLOAT:
        raise ValueError(f"ConvInteger {node.name}: expected Cast(to=float) in its rescale chain")
    chain.append(nxt)
    cur = nxt.output[0]
    nxt = g.only_consumer(cur)
    scale = _const_operand(g, nxt, cur) if nxt is not None and nxt.op_type == "Mul" else None
    if scale is None:
        raise ValueError(f"ConvInteger {node.name}: expected Mul by a constant scale after the Cast")
    chain.append(nxt)
    cur = nxt.output[0]
    if int_bias is None:
        nxt = g.only_consumer(cur)
        if nxt is not None and nxt.op_type == "Add":
            float_bias = _const_operand(g, nxt, cur)
            if float_bias is not None:
                chain.append(nxt)
                cur = nxt.output[0]
    return chain, int_bias, float_bias, scale, cur


def _rewrite_convinteger(g: _Graph, node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    x_q, w_name = node.input[0], node.input[1]
    w_q = g.const(w_name)
    if w_q is None:
        raise ValueError(f"ConvInteger {node.name}: weights must be a constant")
    x_zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), w_q.dtype)
    w_zp = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros((), w_q.dtype)
    chain, int_bias, float_bias, combined, out = _convinteger_chain(g, node)
    n_out = w_q.shape[0]
    combined = np.asarray(combined, np.float32)
    # the activation scale is the one learned for x: the QuantizeLinear that wrote x_q
    q = g.producer.get(x_q)
    if q is not None and q.op_type == "QuantizeLinear" and g.const(q.input[1]) is not None:
        x_s = g.const(q.input[1])
        q_zp = g.const(q.input[2]) if len(q.input) > 2 else np.zeros((), np.uint8)
        if q_zp is None or not np.array_equal(np.asarray(q_zp).reshape(-1), np.asarray(x_zp).reshape(-1)):
            raise ValueError(f"ConvInteger {node.name}: its input zero point differs from the QuantizeLinear's")
    else:  # no producing Q (a raw integer input): any split of the combined scale gives the same numbers
        x_s = np.ones((), np.float32)
    x_s = np.asarray(x_s, np.float32).reshape(())
    per_ch = combined.size > 1 or np.asarray(w_zp).size > 1
    comb = _scalar_or_vector(combined, per_ch, n_out)
    w_s = (comb / x_s).astype(np.float32)
    if int_bias is not None:
        bias = np.asarray(int_bias).reshape(-1)
    elif float_bias is not None:  # float bias in units of the combined scale (the accumulator's units)
        bias = np.round(_channels(float_bias, n_out) / _channels(comb, n_out)).astype(np.int32)
    else:
        bias = None
    if bias is not None and bias.size == 1 and n_out > 1:
        bias = np.broadcast_to(bias, (n_out,)).copy()
    base = node.name or node.output[0]
    # the bias scale is the learned combined scale itself (bit-equal), not x_s * (combined / x_s) re-rounded
    nodes = _qdq_conv(g, base, x_q, x_s, x_zp, w_q, w_s, w_zp, bias, _conv_attrs(node), out, b_s=comb)
    return nodes, chain


def _activation_int8_to_uint8(g: _Graph, nodes: list[onnx.NodeProto]) -> int:
    """Move int8 activations (Q/DQ with int8 zero points on computed tensors) to uint8: zero point + 128."""
    consumers = _consumers(nodes)

    def int8_zp(n: onnx.NodeProto) -> bool:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            return False
        if g.const(n.input[0]) is not None:  # weights, not activations
            return False
        zp = g.const(n.input[2])
        return zp is not None and zp.dtype == np.int8

    seeds = [n for n in nodes if n.op_type == "QuantizeLinear" and int8_zp(n)]
    dq = [n for n in nodes if n.op_type == "DequantizeLinear" and int8_zp(n)]
    if not seeds and not dq:
        return 0
    tensors, todo = set(), [n.output[0] for n in seeds]
    while todo:  # every tensor holding int8 activation codes, followed through data-movement ops
        t = todo.pop()
        if t in tensors:
            continue
        tensors.add(t)
        if t in g.outputs:
            raise NotImplementedError(f"int8 activation {t} is a graph output: cannot move it to uint8")
        for c in consumers.get(t, []):
            if c.op_type == "DequantizeLinear" and c.input[0] == t:
                continue
            if c.op_type in _PASSTHROUGH and c.input[0] == t:
                todo.extend(o for o in c.output if o)
                continue
            raise NotImplementedError(f"int8 activation {t} feeds {c.op_type} {c.name}: cannot move it to uint8")
    for n in dq:
        if n.input[0] not in tensors:
            raise NotImplementedError(f"DequantizeLinear {n.name} reads int8 {n.input[0]} not written by a "
                                      "QuantizeLinear (a graph input?): cannot move it to uint8")
    for n in seeds + dq:
        zp = g.const(n.input[2])
        n.input[2] = g.add_init(f"{n.input[2]}_uint8", (zp.astype(np.int16) + 128).astype(np.uint8))
    return len(seeds) + len(dq)


SIGMOID_SCALE = np.float32(1 / 255)  # uint8 codes 0..255 span sigmoid's (0, 1) with zero point 0: no calibration


def _quantize_silu(g: _Graph, nodes: list[onnx.NodeProto]) -> int:
    """Q/DQ on each SiLU's Sigmoid output (fixed range, uint8), so ONNX Runtime runs DQ -> Sigmoid -> Q and
    DQ, DQ -> Mul -> Q as QLinearSigmoid and QLinearMul instead of dequantizing, SiLU in float and requantizing
    every activation (what made QAT files slower than FP32). Only SiLUs between a learned DQ input and Q outputs."""
    producer = {o: n for n in nodes for o in n.output}
    consumers = _consumers(nodes)
    added = 0
    for sig in [n for n in nodes if n.op_type == "Sigmoid"]:
        x, y = sig.input[0], sig.output[0]
        muls = consumers.get(y, [])
        if (producer.get(x) is None or producer[x].op_type != "DequantizeLinear" or len(muls) != 1
                or muls[0].op_type != "Mul" or x not in muls[0].input or y in g.outputs
                or not all(c.op_type == "QuantizeLinear" for c in consumers.get(muls[0].output[0], []))):
            continue
        s, zp = g.add_init(f"{y}_scale", SIGMOID_SCALE), g.add_init(f"{y}_zero_point", np.uint8(0))
        q, dq = g.fresh(f"{y}_quantized"), g.fresh(f"{y}_dequantized")
        nodes += [helper.make_node("QuantizeLinear", [y, s, zp], [q], name=g.fresh(f"{sig.name}_q")),
                  helper.make_node("DequantizeLinear", [q, s, zp], [dq], name=g.fresh(f"{sig.name}_dq"))]
        muls[0].input[list(muls[0].input).index(y)] = dq
        added += 1
    return added


def _quantize_concat_inputs(g: _Graph, nodes: list[onnx.NodeProto]) -> int:
    """Move the QuantizeLinear after a Concat onto each of its inputs (same scale and zero point), so ONNX Runtime
    runs QLinearConcat and the SiLUs feeding it become quantizable (_quantize_silu). Exact: quantizing a concatenation
    per element with one scale is the concatenation of the quantized parts. Only Concats whose one reader is that Q."""
    producer = {o: n for n in nodes for o in n.output}
    consumers = _consumers(nodes)
    added = 0
    for cat in [n for n in nodes if n.op_type == "Concat"]:
        readers = consumers.get(cat.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or cat.output[0] in g.outputs:
            continue
        q = readers[0]
        for i, t in enumerate(cat.input):
            src = producer.get(t)
            if g.const(t) is not None or (src is not None and src.op_type == "DequantizeLinear"):
                continue
            qt, dq = g.fresh(f"{t}_cat_quantized"), g.fresh(f"{t}_cat_dequantized")
            nodes += [helper.make_node("QuantizeLinear", [t, *q.input[1:]], [qt], name=g.fresh(f"{cat.name}_q{i}")),
                      helper.make_node("DequantizeLinear", [qt, *q.input[1:]], [dq], name=g.fresh(f"{cat.name}_dq{i}"))]
            cat.input[i] = dq
            added += 1
    return added


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    done, out, pending = set(available), [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(not i or i in done for i in n.input):
                out.append(n)
                done.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].op_type} {rest[0].name}")
        pending = rest
    return out


def _prune(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    """Keep only nodes and initializers the outputs need."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    del graph.initializer[:]
    graph.initializer.extend(t for t in inits if t.name in needed)
    graph_inputs = [i for i in graph.input if i.name in needed or i.name not in {t.name for t in inits}]
    del graph.input[:]
    graph.input.extend(graph_inputs)
    del graph.value_info[:]  # types of rewritten tensors changed (int32 accumulators are gone): let tools re-infer


def qdq_from_quantized(model: onnx.ModelProto, quantize_silu: bool = False) -> onnx.ModelProto:
    """Rewrite every ConvInteger (+ rescale chain) and QLinearConv into DQ -> Conv [-> Q], same learned numbers.

    Opset is raised to 13 when lower (per-axis DequantizeLinear). Everything else is kept as exported; dead nodes
    and initializers are removed; the result passes onnx.checker. See the module docstring for the patterns.
    quantize_silu: also Q/DQ each SiLU's Sigmoid output (_quantize_silu): faster on ONNX Runtime, no longer
    the exact QAT numbers (one more uint8 rounding per SiLU).
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        from onnx import version_converter  # only for opset < 13 files (third-party exports)

        model = version_converter.convert_version(model, MIN_OPSET)
    else:
        model = copy.deepcopy(model)
    model.ir_version = max(model.ir_version, 7)
    graph = model.graph
    g = _Graph(graph)
    removed: set[int] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "QLinearConv":
            replaced[id(node)] = _rewrite_qlinearconv(g, node)
        elif node.op_type == "ConvInteger":
            new, chain = _rewrite_convinteger(g, node)
            replaced[id(node)] = new
            removed.update(id(n) for n in chain)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in removed:
            continue
        nodes.extend(replaced.get(id(node), [node]))
    _activation_int8_to_uint8(g, nodes)
    if quantize_silu:
        _quantize_concat_inputs(g, nodes)
        _quantize_silu(g, nodes)
    inits = list(graph.initializer) + g.new_inits
    available = {i.name for i in graph.input} | {t.name for t in inits}
    nodes = _toposort(nodes, available)
    _prune(graph, nodes, inits)
    onnx.checker.check_model(model)
    return model


def quantized_conv_count(model: onnx.ModelProto) -> dict[str, int]:
    """Convs reading a DequantizeLinear activation and DequantizeLinear weights; `requantized`: followed by a Q
    (those are the ones ONNX Runtime fuses into QLinearConv; the Detect head convs write float)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n.op_type)
    quant = requant = 0
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        src = [producer.get(i) for i in n.input[:2]]
        if all(s is not None and s.op_type == "DequantizeLinear" for s in src):
            quant += 1
            requant += consumers[n.output[0]] == ["QuantizeLinear"]
    return {"quantized": quant, "requantized": requant}


def export_qat_qdq(model: nn.Module, file: str | Path, imgsz: int | tuple[int, int] = 640, batch_size: int = 1,
                   metadata: dict[str, Any] | None = None, quantize_silu: bool = True) -> Path:
    """QAT model -> SparseML INT8 ONNX (the existing path) -> QDQ ONNX at `file`, written atomically.

    quantize_silu (default): SiLU runs in uint8 on ONNX Runtime (pistols yolov5n QAT at 320: engine 11.1 -> 8.9 ms,
    mAP50 0.783 -> 0.785); False keeps the learned numbers exactly (float SiLU between the learned Q/DQ pairs).
    """
    if not is_qat(model):
        raise ValueError("export_qat_qdq needs a QAT model (FakeQuantize modules); "
                         "export float models with export_onnx")
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{file.name}.", dir=file.parent) as d:
        src = export_onnx(prepare_model(model), Path(d) / "int8.onnx", imgsz, batch_size, metadata=metadata)
        proto = qdq_from_quantized(onnx.load(str(src)), quantize_silu)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    scheme = SCHEME + (", SiLU uint8 (sigmoid scale 1/255)" if quantize_silu else "")
    write_metadata(proto, {**(metadata or {}), "precision": "int8", "scheme": scheme, "opset": opset})
    with atomic_path(file, what="export") as tmp:  # temp file beside `file`, then os.replace
        onnx.save(proto, str(tmp))
    return file
