"""QDQ INT8 for our exported ONNX: calibrated QuantizeLinear/DequantizeLinear pairs that every runtime can read.

Why: SparseML's ConvInteger files only run fast on DeepSparse (ONNX Runtime and OpenVINO run them slower than FP32,
OpenCV DNN cannot load them). QDQ is the portable form: ONNX Runtime fuses DQ->Conv->Q into QLinearConv (uint8
activations on x86), OpenVINO turns it into INT8 kernels, OpenCV DNN reads it (and runs it as float fake-quant).

Scheme: activations uint8 asymmetric per tensor, Conv weights int8 symmetric per output channel (axis 0), Conv bias
int32 with scale input_scale * weight_scale and zero point 0, opset 13. Detect's decode (everything after its output
convs) stays float. Layouts (which activation tensors get a Q/DQ pair):
  conv: inputs and outputs of Convs (QLinearConv, SiLU and the rest in float);
  silu: also Conv, Sigmoid and Mul outputs, so ONNX Runtime runs SiLU as QLinearSigmoid + QLinearMul;
  all:  every activation before the decode (Add, Concat, MaxPool and Resize outputs too).

Defaults, measured (yolov5s 640 b1, 2 threads, engine only, interleaved, ratio to FP32 on the same runtime;
accuracy: yolov5n coco128 640 mAP50-95):
  layout "all": ORT 1.62x on an idle machine (1.73x with spinning threads; 2.0x while the shared machine was busy);
    "silu" 1.47x, "conv" 0.92-0.95x
    (ORT then runs float SiLU between Q/DQ pairs). ORT fuses 57 of 60 Convs into QLinearConv (60 with the head),
    SiLU becomes QLinearSigmoid + QLinearMul, which still cost ~25% of INT8 time (float QuickGelu: ~11% of FP32).
    OpenVINO runs every layout ~2.1x.
  quantize_head False: quantizing Detect's three output convs gained ORT ~5% but cost ~0.006 mAP50-95.
  method "percentile" (99.99): 0.332-0.341 over three calibration sets vs FP32 0.349 (mse about the same,
    minmax 0.333, entropy 0.330, 99.9/99.95 clip too much: 0.312/0.323); the default file (64 images) with Concat
    inputs sharing the Concat's params: ORT 0.342, OpenVINO 0.340.
DeepSparse 1.8 loads these files and agrees with ORT exactly, but compiles 0% of the graph (its log: "kernel is not
constant", also with float weights + QuantizeLinear or per-tensor weights) and runs them on its bundled ONNX Runtime;
for DeepSparse keep the ConvInteger export.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.augmentations import letterbox, to_blob

OPSET = 13
# where Q/DQ pairs go: "all" (every activation: ONNX Runtime fuses QLinearConv, QLinearSigmoid, QLinearMul),
# "inputs" (only what the convs read, as NNCF places FakeQuantize: OpenVINO fuses the float SiLU into its INT8 convs),
# "conv" and "silu" (in between, kept for measurements)
LAYOUTS = ("conv", "silu", "all", "inputs")
DEFAULT_LAYOUT = "all"
DEFAULT_METHOD = "percentile"
METHODS = ("minmax", "percentile", "entropy", "mse")
SCHEME = "qdq uint8 act / int8 per-channel weights"
SILU_OPS = {"Conv", "Sigmoid", "Mul"}
SAME_RANGE_OPS = {"MaxPool", "Resize"}  # output values are input values: share the input's params (ORT drops Q/DQ)
HIST_BINS = 2048
SENSITIVITY_BATCHES = 16  # calibration batches kept for choose_float (mixed precision)
FloatChooser = Callable[[onnx.ModelProto, dict[str, tuple[float, float]], list[np.ndarray]], list[str]]


# ---------------------------------------------------------------- graph analysis

def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _reaching(graph: onnx.GraphProto, targets: set[str]) -> set[str]:
    """Tensors from which some tensor in `targets` can be computed (targets included)."""
    prod, seen, stack = _producers(graph), set(targets), list(targets)
    while stack:
        node = prod.get(stack.pop())
        for i in node.input if node is not None else ():
            if i and i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def head_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Detect's output convs: Convs whose output reaches no other Conv (only the float decode follows them)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    feeds_conv = _reaching(model.graph, {n.input[0] for n in convs})
    return [n for n in convs if n.output[0] not in feeds_conv]


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float activations that may be quantized: graph input plus every data tensor up to the head convs' outputs."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    heads = head_convs(model)
    region = _reaching(graph, {n.output[0] for n in heads})
    data = set(inputs)  # tensors computed from the image, not shape/constant bookkeeping
    names = list(inputs)
    for n in graph.node:
        if n.op_type in ("Constant", "Shape") or not any(i in data for i in n.input):
            continue
        for o in n.output:
            data.add(o)
            if o in region:
                names.append(o)
    return names


# ---------------------------------------------------------------- calibration

def image_batches(files: Iterable[str | Path], imgsz: int = 640, batch_size: int = 1,
                  stride: int = 32) -> Iterable[np.ndarray]:
    """Letterboxed float NCHW RGB [0, 1] batches read lazily, so calibrating on many images holds few in memory."""
    group: list[np.ndarray] = []
    for f in files:
        im = cv2.imread(str(f))
        if im is None:
            raise ValueError(f"calibration image {f} could not be read")
        group.append(letterbox(im, (imgsz, imgsz), auto=False, stride=stride)[0])
        if len(group) == batch_size:
            yield to_blob(group)
            group = []
    if group:
        yield to_blob(group)


class _Histogram:
    """Fixed-bin histogram over [-r, r] whose range doubles (merging bin pairs) when a value falls outside."""

    def __init__(self, bins: int = HIST_BINS) -> None:
        self.bins, self.r, self.counts = bins, 0.0, np.zeros(bins, np.int64)
        self.lo, self.hi = np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        x = x.ravel()
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        need = max(abs(lo), abs(hi), 1e-8)
        if self.r == 0:
            self.r = 2.0 ** np.ceil(np.log2(need))
        while need > self.r:  # old bins land in the middle half, two by two
            half, merged = self.bins // 2, self.counts.reshape(-1, 2).sum(1)
            self.counts = np.zeros(self.bins, np.int64)
            self.counts[half // 2: half // 2 + half] = merged
            self.r *= 2
        idx = ((x + self.r) * (self.bins / (2 * self.r))).astype(np.int64)
        self.counts += np.bincount(np.clip(idx, 0, self.bins - 1), minlength=self.bins)

    def edges(self) -> np.ndarray:
        return np.linspace(-self.r, self.r, self.bins + 1)

    def percentile(self, pct: float) -> tuple[float, float]:
        """Values below/above which (100 - pct)% of the samples lie, within the seen min/max."""
        cdf = np.cumsum(self.counts) / max(self.counts.sum(), 1)
        tail, e = (100.0 - pct) / 100.0, self.edges()
        lo = e[int(np.searchsorted(cdf, tail, side="right"))]
        hi = e[int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1]
        return max(float(lo), self.lo), min(float(hi), self.hi)

    def entropy(self, levels: int = 256) -> tuple[float, float]:
        """Clip range minimising KL(P || Q) between the clipped histogram and its 256-level quantization."""
        nz = np.nonzero(self.counts)[0]
        first, last = int(nz[0]), int(nz[-1]) + 1
        best, best_kl = (first, last), np.inf
        width = last - first
        for frac in np.linspace(0.3, 1.0, 36):  # window grows around the populated bins, anchored at zero's side
            w = max(int(round(width * frac)), levels)
            for a, b in ((first, min(first + w, last)), (max(last - w, first), last), self._centered(first, last, w)):
                kl = _kl(self.counts, a, b, levels)
                if kl < best_kl:
                    best, best_kl = (a, b), kl
        e = self.edges()
        return max(float(e[best[0]]), self.lo), min(float(e[best[1]]), self.hi)

    def mse(self, steps: int = 40) -> tuple[float, float]:
        """Clip range with the least expected squared uint8 rounding + clipping error over the histogram."""
        e = self.edges()
        centers, w = (e[:-1] + e[1:]) / 2, self.counts.astype(np.float64)
        frac = np.linspace(1.0 / steps, 1.0, steps)
        lo = np.minimum(self.lo, 0.0) * frac[:, None, None]  # (lo steps, hi steps, bins) grids
        hi = np.maximum(self.hi, 0.0) * frac[None, :, None]
        scale = np.maximum(hi - lo, 1e-12) / 255.0
        zp = np.clip(np.round(-lo / scale), 0, 255)
        deq = (np.clip(np.round(centers / scale) + zp, 0, 255) - zp) * scale
        err = ((deq - centers) ** 2 * w).sum(-1)
        i, j = np.unravel_index(int(np.argmin(err)), err.shape)
        return max(float(lo[i, 0, 0]), self.lo), min(float(hi[0, j, 0]), self.hi)

    def _centered(self, first: int, last: int, w: int) -> tuple[int, int]:
        zero = self.bins // 2
        lo_share = (zero - first) / max(last - first, 1)
        a = max(first, zero - int(round(w * lo_share)))
        return a, min(last, a + w)


def _kl(counts: np.ndarray, a: int, b: int, levels: int) -> float:
    """KL(P || Q), TensorRT style: P is the histogram clipped to bins [a, b) with the outliers folded into its edge
    bins, Q the clipped bins (outliers dropped) quantized to `levels` levels, so clipping costs the outlier mass."""
    inside = counts[a:b].astype(np.float64)
    p = inside.copy()
    p[0] += counts[:a].sum()
    p[-1] += counts[b:].sum()
    levels = min(levels, len(p))
    starts = np.linspace(0, len(p), levels + 1).astype(np.int64)[:-1]  # each level's first bin
    level = np.repeat(np.arange(levels), np.diff(np.append(starts, len(p))))
    used = inside > 0
    mass, n_used = np.add.reduceat(inside, starts), np.add.reduceat(used.astype(np.float64), starts)
    q = np.where(used, mass[level] / np.maximum(n_used[level], 1), 0.0)  # level mass spread over populated bins
    mask = p > 0
    ps, qs = p[mask] / p.sum(), q[mask] / max(q.sum(), 1e-12)
    return float(np.sum(ps * np.log(ps / np.maximum(qs, 1e-12))))


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose graph also returns `names` (float tensors) so one run sees every activation."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return m


def calibrate_ranges(model: onnx.ModelProto, batches: Iterable[np.ndarray], method: str = DEFAULT_METHOD,
                     percentile: float = 99.99, num_threads: int | None = None) -> dict[str, tuple[float, float]]:
    """Per-tensor (min, max) of every quantizable activation on real images; histograms keep memory bounded.

    minmax: seen range; percentile: both tails clipped at `percentile`; entropy: TensorRT-style KL clip;
    mse: least expected squared error of the uint8 grid. The graph input always keeps its seen range.
    """
    import onnxruntime as ort

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    names = activation_tensors(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor stays observable
    if num_threads:
        opts.intra_op_num_threads = num_threads
    sess = ort.InferenceSession(_with_outputs(model, names).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    step = inp.shape[0] if isinstance(inp.shape[0], int) else None  # static batch: feed slices of that size
    hists = {n: _Histogram() for n in names}
    count = 0
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float32)
        for k in range(0, len(batch), step or len(batch)):
            outs = sess.run(names, {inp.name: np.ascontiguousarray(batch[k: k + (step or len(batch))])})
            for n, v in zip(names, outs):
                hists[n].add(v)
        count += 1
    if not count:
        raise ValueError("calibrate_ranges needs at least one batch of images")
    graph_inputs = {i.name for i in model.graph.input}
    ranges = {}
    for n, h in hists.items():
        if method == "minmax" or n in graph_inputs:  # the image range is exact, never clip it
            ranges[n] = (h.lo, h.hi)
        elif method == "percentile":
            ranges[n] = h.percentile(percentile)
        elif method == "entropy":
            ranges[n] = h.entropy()
        else:
            ranges[n] = h.mse()
    return ranges


# ---------------------------------------------------------------- quantization

def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 scale/zero point whose grid holds 0 exactly."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def int8_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: (quantized weights, scales)."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(1).astype(np.float64)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class _Builder:
    """Collects the initializers and Q/DQ nodes that quantize_qdq adds."""

    def __init__(self) -> None:
        self.inits: list[onnx.TensorProto] = []
        self.params: dict[str, tuple[str, str]] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def act_params(self, tensor: str, scale: float, zp: int) -> tuple[str, str]:
        s = self.const(f"{tensor}_scale", np.array(scale, np.float32))
        z = self.const(f"{tensor}_zero_point", np.array(zp, np.uint8))
        self.params[tensor] = (s, z)
        return s, z

    def qdq(self, tensor: str) -> list[onnx.NodeProto]:
        s, z = self.params[tensor]
        return [helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tensor}_quantized"], f"{tensor}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{tensor}_quantized", s, z], [f"{tensor}_dequantized"],
                                 f"{tensor}_DequantizeLinear")]


def _chosen_tensors(model: onnx.ModelProto, layout: str, quantize_head: bool) -> list[str]:
    """Activation tensors that get a Q/DQ pair in this layout (order: graph order)."""
    graph, prod = model.graph, _producers(model.graph)
    heads = {n.output[0] for n in head_convs(model)}
    conv_inputs = {n.input[0] for n in graph.node if n.op_type == "Conv"}
    out = []
    for t in activation_tensors(model):
        node = prod.get(t)
        op = node.op_type if node is not None else "input"
        if layout == "inputs":  # a head conv's output never: quantize_head only quantizes its weights
            take = t in conv_inputs
        elif t in heads:
            take = quantize_head  # a fused head QLinearConv needs its output quantized
        elif layout == "conv":
            take = t in conv_inputs or op == "Conv"
        elif layout == "silu":
            take = t in conv_inputs or op in SILU_OPS
        else:
            take = True
        if take:
            out.append(t)
    return out


def _concat_shared(model: onnx.ModelProto, chosen: set[str]) -> dict[str, str]:
    """Quantized tensors read only by one quantized Concat -> that Concat's output: sharing its scale/zero point lets
    ORT's QLinearConcat copy bytes instead of requantizing (yolov5s: its share of INT8 time 2.2% -> 1.9%; mAP kept)."""
    consumers, prod = _consumers(model.graph), _producers(model.graph)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Concat" or n.output[0] not in chosen:
            continue
        for t in n.input:
            src = prod.get(t)
            if (t in chosen and src is not None and src.op_type not in SAME_RANGE_OPS and src.op_type != "Concat"
                    and [c.name for c in consumers.get(t, [])] == [n.name]):
                out[t] = n.output[0]
    return out


def quantize_qdq(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], quantize_head: bool = False,
                 layout: str = DEFAULT_LAYOUT, keep_float: Iterable[str] = ()) -> onnx.ModelProto:
    """Opset-13 QDQ copy of an FP32 graph: calibrated uint8 activations, int8 per-channel Conv weights, int32 bias.

    keep_float: activation tensors left without a Q/DQ pair (a Conv reading one of them stays float).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if _opset(model) < OPSET:
        raise ValueError(f"QDQ with per-channel weights needs opset >= {OPSET}; re-export with --opset {OPSET}")
    graph, prod = model.graph, _producers(model.graph)
    floats = set(keep_float)
    chosen = [t for t in _chosen_tensors(model, layout, quantize_head) if t not in floats]
    missing = [t for t in chosen if t not in ranges and prod.get(t) is not None
               and prod[t].op_type not in SAME_RANGE_OPS]
    if missing:
        raise KeyError(f"no calibrated range for {len(missing)} tensors (e.g. {missing[0]}); "
                       "calibrate_ranges on this same graph")
    b = _Builder()
    chosen_set = set(chosen)
    shared = _concat_shared(model, chosen_set)
    for t in chosen:
        node = prod.get(t)
        if t in shared:
            continue
        if node is not None and node.op_type in SAME_RANGE_OPS and node.input[0] in b.params:
            b.params[t] = b.params[node.input[0]]
        else:
            b.act_params(t, *uint8_params(*ranges[t]))
    for t, concat_out in shared.items():
        b.params[t] = b.params[concat_out]
    inits = {t.name: t for t in graph.initializer}
    heads = {n.name for n in head_convs(model)}
    rewired = {t: f"{t}_dequantized" for t in chosen}
    drop_inits: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for t in chosen:
        if t not in prod:  # graph input: its Q/DQ comes first
            nodes += b.qdq(t)
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k, i in enumerate(new.input):  # every consumer reads the DQ output: ORT fuses only single-Q producers
            if i in rewired:
                new.input[k] = rewired[i]
        if (node.op_type == "Conv" and (quantize_head or node.name not in heads) and node.input[1] in inits
                and node.input[0] not in floats):  # a Conv reading a float activation stays float
            act = node.input[0]
            if act not in b.params:
                raise ValueError(f"Conv {node.name}: input {act} is not quantized")
            nodes += _quantize_conv_params(new, node, inits, b, act, drop_inits)
        nodes.append(new)
        for o in node.output:
            if o in chosen_set:
                nodes += b.qdq(o)
    q = onnx.ModelProto()
    q.CopyFrom(model)
    del q.graph.node[:]
    q.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}  # an initializer the exporter shares (Identity) stays for its readers
    keep = [t for t in graph.initializer if t.name not in drop_inits or t.name in used]
    del q.graph.initializer[:]
    q.graph.initializer.extend(keep + b.inits)
    onnx.checker.check_model(q)
    return q


def _opset(model: onnx.ModelProto) -> int:
    """Default-domain opset the file declares (metadata must state what is really in the file)."""
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def _quantize_conv_params(new: onnx.NodeProto, node: onnx.NodeProto, inits: dict, b: _Builder, act: str,
                          drop: set[str]) -> list[onnx.NodeProto]:
    """int8 weight + int32 bias initializers behind DequantizeLinear nodes; rewires `new` to their outputs."""
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    wq, ws = int8_weights(w)
    wname = node.input[1]
    out = [helper.make_node("DequantizeLinear", [b.const(f"{wname}_quantized", wq), b.const(f"{wname}_scale", ws),
                                                  b.const(f"{wname}_zero_point", np.zeros(len(ws), np.int8))],
                            [f"{wname}_dequantized"], f"{wname}_DequantizeLinear", axis=0)]
    new.input[1] = f"{wname}_dequantized"
    drop.add(wname)
    if len(node.input) > 2 and node.input[2] in inits:
        bname = node.input[2]
        bias = numpy_helper.to_array(inits[bname]).astype(np.float64)
        act_scale = float(numpy_helper.to_array(next(t for t in b.inits if t.name == b.params[act][0])))
        bs = (act_scale * ws.astype(np.float64)).astype(np.float32)
        bq = np.clip(np.round(bias / bs), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        out.append(helper.make_node("DequantizeLinear", [b.const(f"{bname}_quantized", bq),
                                                         b.const(f"{bname}_scale", bs),
                                                         b.const(f"{bname}_zero_point", np.zeros(len(bs), np.int32))],
                                    [f"{bname}_dequantized"], f"{bname}_DequantizeLinear", axis=0))
        new.input[2] = f"{bname}_dequantized"
        drop.add(bname)
    return out


def quantize_onnx_file(src: str | Path, dst: str | Path, batches: Iterable[np.ndarray], method: str = DEFAULT_METHOD,
                       quantize_head: bool = False, layout: str = DEFAULT_LAYOUT,
                       calibration_src: str | Path | None = None, choose_float: FloatChooser | None = None) -> Path:
    """FP32 ONNX file -> QDQ INT8 file keeping the source's metadata and stating how it was quantized.

    calibration_src: the same network exported at batch 1 (tensor names match), so a static batch-64 file is
    calibrated one image at a time instead of holding every activation of 64 images at once.
    choose_float: (graph, ranges, first calibration batches) -> activation tensors to leave float (mixed precision).
    """
    model = onnx.load(str(src))
    calib = onnx.load(str(calibration_src)) if calibration_src else model
    images = 0
    first: list[np.ndarray] = []

    def counted() -> Iterable[np.ndarray]:
        nonlocal images
        for batch in batches:
            images += len(batch)
            if len(first) < SENSITIVITY_BATCHES:
                first.append(batch)
            yield batch

    ranges = calibrate_ranges(calib, counted(), method)
    floats = choose_float(calib, ranges, first) if choose_float is not None else []
    q = quantize_qdq(model, ranges, quantize_head=quantize_head, layout=layout, keep_float=floats)
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({"precision": "int8", "quantization": SCHEME, "quantization_layout": layout,
                 "quantized_head": str(quantize_head), "calibration_method": method,
                 "calibration_images": str(images), "opset": str(_opset(q)),
                 "float_activations": ",".join(floats),
                 "quantized_from": Path(src).name,
                 "quantization_date": datetime.datetime.now().isoformat(timespec="seconds")})
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    dst = Path(dst)
    onnx.save(q, str(dst))
    return dst
