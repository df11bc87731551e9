"""`--nhwc` / `--uint8-input`: the exported graph takes uint8 pixels: NHWC BGR frames as cv2.imread and video
capture give them, or NCHW RGB planes.

The host then only resizes into the letterbox canvas: the layout change (HWC -> CHW), the channel order and the
/255 scaling happen inside the engine, which does them in its first layer's pass over the input instead of three
extra passes in numpy. Works on every form we write (float, QDQ, ConvInteger; decoded or raw head) by rewriting the
file's input: uint8 (B, H, W, 3) -> Transpose -> Cast, with the 1/255 folded into the first conv's weights (or a
Mul(float32(1/255)) giving the very floats the host computed, when something else reads the pixels). INT8 files
quantize the input with scale 1/255 and zero point 0, which gives back the pixels themselves:
there the pixels feed the first quantized conv directly (bit-identical, no float pass at all). BGR -> RGB costs
nothing: the first conv's weights swap their input channels (exact: a permutation). NCHW RGB input skips the
Transpose and the swap; the host then still reorders the bytes into planes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.atomic import atomic_path
from utils.engines.base import LAYOUT_KEY, NCHW_RGB, NHWC_BGR

from .qdq import _consumers, _producers
from .trace import write_metadata

PASS_THROUGH = ("QuantizeLinear", "DequantizeLinear", "Cast", "Mul")  # ops between the input and the first conv
WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}


def pixel_layout(uint8_input: bool, nhwc: bool) -> str | None:
    """The input layout the two export flags ask for (None: float NCHW RGB, as traced)."""
    if nhwc and uint8_input:
        raise ValueError("--nhwc already makes the graph take uint8 pixels (NHWC BGR): drop --uint8-input")
    return NHWC_BGR if nhwc else NCHW_RGB if uint8_input else None


def pixel_input(file: Path, layout: str = NCHW_RGB) -> Path:
    """Rewrite an exported ONNX file in place (atomically) to take uint8 pixels: NHWC BGR frames (--nhwc) or the
    NCHW RGB planes of the float input (--uint8-input)."""
    proto = onnx.load(str(file))
    graph = proto.graph
    inp = graph.input[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT or len(inp.type.tensor_type.shape.dim) != 4:
        raise ValueError(f"{file}: uint8 pixel input needs a float NCHW image input; this file's input is not")
    name, dims = inp.name, [_dim(d) for d in inp.type.tensor_type.shape.dim]
    floats = f"{name}_rgb_float"
    _rename_input(graph, name, floats)
    nhwc = layout == NHWC_BGR
    swapped = nhwc and _swap_first_conv_channels(graph, floats)
    quantizer = _pixel_quantizer(graph, floats)
    nodes, src = [], name
    if nhwc and not swapped:  # no conv to absorb the channel order: reverse the channels in the graph (one pass)
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), f"{name}_bgr"))
        nodes.append(helper.make_node("Gather", [name, f"{name}_bgr"], [f"{name}_rgb"], axis=3))
        src = f"{name}_rgb"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [src], [f"{name}_nchw"], perm=[0, 3, 1, 2]))
        src = f"{name}_nchw"
    if quantizer is not None:  # INT8: the pixels are the quantized input already, bit for bit
        _rename_input(graph, quantizer.output[0], src)
        graph.node.remove(quantizer)
    elif _scale_first_conv(graph, floats, np.float32(1 / 255.0)):  # the conv's weights take the /255: no Mul pass
        nodes.append(helper.make_node("Cast", [src], [floats], to=TensorProto.FLOAT))
    else:
        graph.initializer.append(numpy_helper.from_array(np.array(1 / 255.0, np.float32), f"{name}_inv255"))
        nodes += [helper.make_node("Cast", [src], [f"{name}_float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{name}_float", f"{name}_inv255"], [floats])]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    del graph.input[0]
    shape = [dims[0], dims[2], dims[3], 3] if nhwc else dims
    graph.input.insert(0, helper.make_tensor_value_info(name, TensorProto.UINT8, shape))
    meta = {p.key: p.value for p in proto.metadata_props}
    write_metadata(proto, {**meta, LAYOUT_KEY: layout})
    onnx.checker.check_model(proto)
    with atomic_path(file, what="export") as tmp:
        onnx.save(proto, str(tmp))
    return file


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node reading `old` reads `new` instead."""
    for n in graph.node:
        n.input[:] = [new if x == old else x for x in n.input]


def _pixel_quantizer(graph: onnx.GraphProto, src: str) -> onnx.NodeProto | None:
    """The QuantizeLinear that alone reads the float pixels with scale float32(1/255) and uint8 zero point 0, if any:
    it maps p / 255 back to p exactly, so uint8 pixels can take its place (no Cast, Mul or quantize pass)."""
    users = [n for n in graph.node if src in n.input]
    if len(users) != 1 or users[0].op_type != "QuantizeLinear" or len(users[0].input) < 3:
        return None
    q = users[0]
    if any(n.op_type == "QLinearConv" for n in _consumers(graph).get(q.output[0], [])):
        return None  # QOperator: OpenCV's INT8 convs read only the int8 its own Quantize layer makes
    inits = {t.name: t for t in graph.initializer}
    if q.input[1] not in inits or q.input[2] not in inits:
        return None
    scale, zero = numpy_helper.to_array(inits[q.input[1]]), numpy_helper.to_array(inits[q.input[2]])
    ok = scale.size == 1 and scale.item() == np.float32(1 / 255.0) and zero.dtype == np.uint8 and zero.item() == 0
    return q if ok else None


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str:
    return d.dim_param if d.dim_param else d.dim_value


def _swap_first_conv_channels(graph: onnx.GraphProto, src: str) -> bool:
    """Reverse the input channels of the one conv `src` reaches (through Q/DQ/Cast/Mul only); False if none does."""
    consumers = _consumers(graph)
    tensor = src
    while len(consumers.get(tensor, [])) == 1:
        node = consumers[tensor][0]
        if node.op_type in WEIGHT_INPUT and node.input[0] == tensor:
            return _swap_weight(graph, node.input[WEIGHT_INPUT[node.op_type]])
        if node.op_type not in PASS_THROUGH or node.input[0] != tensor:
            return False
        tensor = node.output[0]
    return False


def _scale_first_conv(graph: onnx.GraphProto, src: str, scale: np.float32) -> bool:
    """Multiply the float weights of the one Conv that alone reads `src` by `scale`, so the pixels need no scaling
    pass (yolov5s 640 on ONNX Runtime: 0.8 ms less per image; the conv's sums round differently, ~1e-6 relative);
    False (nothing changed) when anything else reads `src` or the weights are shared or quantized."""
    users = [n for n in graph.node if src in n.input]
    inits = {t.name: t for t in graph.initializer}
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != src:
        return False
    weight = users[0].input[1]
    if weight not in inits or sum(weight in n.input for n in graph.node) != 1:
        return False
    w = numpy_helper.to_array(inits[weight])
    if w.dtype != np.float32:
        return False
    inits[weight].CopyFrom(numpy_helper.from_array(w * scale, weight))
    return True


def _swap_weight(graph: onnx.GraphProto, weight: str) -> bool:
    """Flip axis 1 of the (O, 3, kh, kw) initializer behind `weight`, through a DequantizeLinear if there is one."""
    node = _producers(graph).get(weight)
    if node is not None and node.op_type == "DequantizeLinear":
        weight = node.input[0]
    inits = {t.name: t for t in graph.initializer}
    if weight not in inits or sum(weight in n.input for n in graph.node) != 1:
        return False
    w = numpy_helper.to_array(inits[weight])
    if w.ndim != 4 or w.shape[1] != 3:
        return False
    inits[weight].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, ::-1]), weight))
    return True
