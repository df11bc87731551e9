"""`--head raw`: cut Detect's decode out of an exported graph, so the engine stops at the three output convs.

The decode (sigmoid of every value, grid/anchor math, transpose, concat) runs on the host instead, for the few
cells that pass objectness (utils.raw_head). Works on every form we write (float, QDQ, ConvInteger): each level's
decode starts with Reshape -> Transpose(0, 1, 3, 4, 2), and the Reshape's input is that level's conv map.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from torch import nn

from utils.atomic import atomic_path
from utils.raw_head import RawHead

from .trace import write_metadata

HEADS = ("decoded", "raw")
UNKNOWN_4D = ["batch", "channels", "height", "width"]  # before shape inference fills in what is static
DECODE_PERM = [0, 1, 3, 4, 2]  # (bs, na, no, ny, nx) -> (bs, na, ny, nx, no): the first op of each level's decode


def model_head(model: nn.Module) -> RawHead:
    """The RawHead of a model's (last) Detect module."""
    detects = [m for m in model.modules() if type(m).__name__ == "Detect"]
    if not detects:
        raise ValueError("--head raw: the model has no Detect module")
    return RawHead.from_detect(detects[-1])


def decode_inputs(graph: onnx.GraphProto) -> list[str]:
    """Each level's conv map (the tensor its decode starts from), in level order."""
    producers = {o: n for n in graph.node for o in n.output}
    maps = []
    for n in graph.node:
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        src = producers.get(n.input[0]) if n.op_type == "Transpose" else None
        if perm == DECODE_PERM and src is not None and src.op_type == "Reshape":
            maps.append(src.input[0])
    return maps


def strip_decode(file: Path, head: RawHead) -> Path:
    """Rewrite an exported ONNX file in place (atomically) to end at Detect's conv maps, with the head's metadata."""
    proto = onnx.load(str(file))
    maps = decode_inputs(proto.graph)
    if len(maps) != len(head.strides):
        raise ValueError(f"{file}: found {len(maps)} Detect decode branches, expected {len(head.strides)}; "
                         f"export it with --head decoded")
    names = [f"output{i}" for i in range(len(maps))]
    taken = {o for n in proto.graph.node for o in n.output} & set(names)  # the decoded output is output0 itself
    _rename_outputs(proto.graph, {**{t: f"{t}_decoded" for t in taken}, **dict(zip(maps, names))})
    _keep_only(proto.graph, names)
    del proto.graph.output[:]  # the decoded output (its shape would contradict the maps')
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, UNKNOWN_4D)
                              for n in names)
    inferred = onnx.shape_inference.infer_shapes(proto)  # fills in the maps' (batch, na*no, ny, nx)
    del proto.graph.output[:]
    proto.graph.output.extend(inferred.graph.output)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["description"] = ("yolov5-sparse detector, raw head: outputs per level (batch, na*(5+nc), ny, nx) logits of "
                           "Detect's convs; decode with the anchors and strides below (utils/raw_head.py)")
    write_metadata(proto, {**meta, **head.metadata()})
    onnx.checker.check_model(proto)
    with atomic_path(file, what="export") as tmp:
        onnx.save(proto, str(tmp))
    return file


def _rename_outputs(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Give the conv maps stable output names (output0..) wherever they are produced or read."""
    for n in graph.node:
        for i, o in enumerate(n.output):
            n.output[i] = names.get(o, o)
        for i, x in enumerate(n.input):
            n.input[i] = names.get(x, x)


def _keep_only(graph: onnx.GraphProto, outputs: list[str]) -> None:
    """Drop every node and initializer the given outputs do not depend on (the decode, and anything after it)."""
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    needed, stack, keep = set(), list(outputs), set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        if t in producers:
            keep.add(producers[t])
            stack.extend(x for x in graph.node[producers[t]].input if x)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for i, n in enumerate(graph.node) if i in keep]
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [onnx.TensorProto.FromString(i.SerializeToString()) for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    vis = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(vis)
