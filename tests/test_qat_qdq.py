"""QAT INT8 (SparseML ConvInteger / QLinearConv) -> QDQ: same learned numbers, a form ORT fuses and others read."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from utils.assets import asset
from utils.checkpoint import load_model
from utils.export import export_onnx, load_image_batch, match_detections, prepare_model
from utils.export.qat_qdq import SCHEME, export_qat_qdq, qdq_from_quantized, quantized_conv_count
from utils.sparsity.ptq import calibration_batches, quantize_ptq

IMGSZ = (320, 320)
# third-party SparseML QAT export: QLinearConv, opset 11, uint8 pixel input, 1 class, 416 px
REF = "reference_onnx/yolov5n_pistols1cls_qat_int8_416.onnx"
# measured: ConvInteger vs QDQ max |diff| / max |output| = 2.9e-7 (float re-association of the rescale); the
# QLinearConv reference converts bit-exactly (ORT fuses back to the same QLinearConv)
REL_TOL = 1e-5


def _ort(path, optimized=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ops(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


@pytest.fixture(scope="module")
def qat_files(yolov5n_pt, tmp_path_factory):
    """A QAT-structured yolov5n (observers calibrated on the sample images, FakeQuantize like a QAT checkpoint):
    SparseML's ConvInteger file and our QDQ file from it."""
    d = tmp_path_factory.mktemp("qat_qdq")
    q = quantize_ptq(load_model(str(yolov5n_pt)), calibration_batches(IMGSZ))
    ci = export_onnx(prepare_model(q), d / "convinteger.onnx", IMGSZ)
    meta = {"names": ["a", "b"], "imgsz": list(IMGSZ)}
    qdq = export_qat_qdq(q, d / "qdq.onnx", IMGSZ, 1, metadata=meta, quantize_silu=False)  # the exact learned numbers
    fast = export_qat_qdq(q, d / "qdq_silu.onnx", IMGSZ, 1, metadata=meta)  # the default: SiLU in uint8 too
    return ci, qdq, fast


@pytest.fixture(scope="module")
def ref_files(tmp_path_factory):
    src = asset(REF)
    out = tmp_path_factory.mktemp("qat_qdq_ref") / "ref_qdq.onnx"
    onnx.save(qdq_from_quantized(onnx.load(str(src))), str(out))
    return src, out


@pytest.fixture(scope="module")
def bus(bus_jpg):
    return load_image_batch(bus_jpg, IMGSZ)


def test_sparseml_convinteger_pattern_is_what_we_rewrite(qat_files):
    """What our exporter writes: Q -> ConvInteger(w uint8, zp 128) -> Add(int32 bias) -> Cast -> Mul(scale) -> Q."""
    proto = onnx.load(str(qat_files[0]))
    cons = collections.defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            cons[i].append(n)
    chains = collections.Counter()
    for n in proto.graph.node:
        if n.op_type == "ConvInteger":
            chain, cur = [], n.output[0]
            for _ in range(3):
                (c,) = cons[cur]
                chain.append(c.op_type)
                cur = c.output[0]
            chains[tuple(chain) + (tuple(sorted({c.op_type for c in cons[cur]})),)] += 1
    assert chains == {("Add", "Cast", "Mul", ("QuantizeLinear",)): 57,
                      ("Add", "Cast", "Mul", ("Reshape", "Shape")): 3}  # the Detect head writes float


@pytest.mark.parametrize("which", ["qat", "reference"])
def test_structure(which, qat_files, ref_files):
    path = (qat_files if which == "qat" else ref_files)[1]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13
    ops = _ops(proto)
    assert not ops["ConvInteger"] and not ops["QLinearConv"] and not ops["Cast"] * (which == "qat")
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    n_quant = 0
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        x, w = (producer.get(i) for i in conv.input[:2])
        if w is None or w.op_type != "DequantizeLinear":
            assert which == "reference"  # the reference keeps its 3 Detect head convs float
            continue
        n_quant += 1
        assert x is not None and x.op_type == "DequantizeLinear"
        assert inits[x.input[2]].dtype == np.uint8 and x.input[0] not in inits  # uint8 activations
        assert inits[w.input[0]].dtype == np.int8 and (inits[w.input[2]] == 0).all()  # int8 symmetric weights
        if len(conv.input) > 2:
            b = producer[conv.input[2]]
            assert b.op_type == "DequantizeLinear" and inits[b.input[0]].dtype == np.int32
            assert np.allclose(inits[b.input[1]], inits[x.input[1]] * inits[w.input[1]], rtol=1e-6)
    for n in proto.graph.node:  # every activation Q/DQ is uint8
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits:
            assert inits[n.input[2]].dtype == np.uint8, n.name
    assert n_quant == (60 if which == "qat" else 57)
    assert quantized_conv_count(proto) == {"quantized": n_quant, "requantized": 57}
    used = {i for n in proto.graph.node for i in n.input}
    assert not [t for t in inits if t not in used]  # no dead initializers


def test_metadata(qat_files):
    meta = {p.key: p.value for p in onnx.load(str(qat_files[1])).metadata_props}
    assert meta["precision"] == "int8" and meta["scheme"] == SCHEME and int(meta["opset"]) >= 13
    assert meta["names"] == "{0: 'a', 1: 'b'}"
    assert not list(qat_files[1].parent.glob(".*"))  # no temp files left beside the export


@pytest.mark.parametrize("which", ["qat", "reference"])
def test_onnxruntime_fuses_every_requantized_conv(which, qat_files, ref_files, tmp_path):
    path = (qat_files if which == "qat" else ref_files)[1]
    opt = tmp_path / "optimized.onnx"
    _ort(path, opt)
    ops = _ops(onnx.load(str(opt)))
    # 57 DQ -> Conv -> Q units become QLinearConv; the 3 Detect head convs write float (no Q in the QAT export)
    assert ops["QLinearConv"] == quantized_conv_count(onnx.load(str(path)))["requantized"] == 57
    assert ops["Conv"] == 3 and not ops["ConvInteger"]


def test_numbers_match_the_convinteger_file(qat_files, bus):
    a = _ort(qat_files[0]).run(None, {"images": bus})[0]
    b = _ort(qat_files[1]).run(None, {"images": bus})[0]
    rel = float(np.abs(a - b).max() / np.abs(a).max())
    assert rel < REL_TOL, rel
    m = match_detections(a, b)
    assert m["dets_torch"] >= 3 and m["dets_matched"] == m["dets_torch"] == m["dets_onnx"], m


def test_default_export_runs_silu_in_uint8_with_the_same_detections(qat_files, bus, tmp_path):
    """export.py's QAT form: each Sigmoid output gets a fixed-range Q/DQ, so ORT fuses QLinearSigmoid/QLinearMul
    (the float SiLU between Q/DQ pairs made QAT files slower than FP32); detections stay those of ConvInteger."""
    proto = onnx.load(str(qat_files[2]))
    sig = {n.output[0] for n in proto.graph.node if n.op_type == "Sigmoid"}
    sig_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in sig]
    assert len(sig_q) == 43 and "SiLU uint8" in {p.key: p.value for p in proto.metadata_props}["scheme"]
    _ort(qat_files[2], tmp_path / "opt.onnx")
    ops = _ops(onnx.load(str(tmp_path / "opt.onnx")))
    # yolov5n: 27 of 57 SiLUs feed only QuantizeLinear (the next conv's input), 16 more once each Concat's Q moves
    # onto its inputs (all 13 Concats become QLinearConcat); 14 feed a residual Add in float and are left as exported
    assert ops["QLinearSigmoid"] == 43 and ops["QLinearMul"] >= 41 and ops["QLinearConv"] == 57, ops
    assert ops["QLinearConcat"] == 13, ops  # the float Concats left are the decode's
    a = _ort(qat_files[0]).run(None, {"images": bus})[0]
    b = _ort(qat_files[2]).run(None, {"images": bus})[0]
    m = match_detections(a, b)
    assert m["dets_torch"] >= 3 and m["dets_matched"] >= 0.9 * m["dets_torch"], m


def test_numbers_match_the_qlinearconv_reference(ref_files, bus_jpg):
    x = np.round(load_image_batch(bus_jpg, (416, 416)) * 255).astype(np.uint8)  # the reference takes uint8 pixels
    a = _ort(ref_files[0]).run(None, {"input": x})
    b = _ort(ref_files[1]).run(None, {"input": x})
    for p, q in zip(a, b):
        assert p.shape == q.shape and float(np.abs(p - q).max()) <= REL_TOL * float(np.abs(p).max())
    m = match_detections(a[0], b[0], conf=0.05)  # one class (pistols): few confident boxes on bus.jpg
    assert m["dets_matched"] == m["dets_torch"] == m["dets_onnx"], m


def test_opencv_dnn_reads_qdq_with_the_same_detections(qat_files, bus):
    import cv2

    net = cv2.dnn.readNetFromONNX(str(qat_files[1]))
    net.setInput(bus)
    y = net.forward()
    a = _ort(qat_files[0]).run(None, {"images": bus})[0]
    m = match_detections(a, y)
    assert m["dets_torch"] >= 3 and m["dets_matched"] == m["dets_torch"] == m["dets_onnx"], m


def test_qat_qoperator_runs_int8_in_opencv_with_the_same_detections(qat_files, bus, tmp_path):
    """A QAT model's learned scales, rewritten as QOperator (benchmark's OpenCV INT8 row, export --int8-format
    qoperator): OpenCV builds INT8 convolutions and finds what the ConvInteger file finds."""
    import cv2

    from utils.export.qoperator import to_qoperator

    qop = to_qoperator(qat_files[2], tmp_path / "qat_qop.onnx")
    net = cv2.dnn.readNetFromONNX(str(qop))
    assert "ConvolutionInt8" in net.getLayerTypes()
    net.setInput(bus)
    m = match_detections(_ort(qat_files[0]).run(None, {"images": bus})[0], net.forward())
    assert m["dets_torch"] >= 3 and m["dets_matched"] == m["dets_torch"] == m["dets_onnx"], m


@pytest.mark.native_engines
def test_openvino_runs_qdq_as_int8(qat_files, bus):
    import openvino as ov

    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": 1})
    cm = core.compile_model(str(qat_files[1]), "CPU")
    y = cm(bus)[0]
    a = _ort(qat_files[0]).run(None, {"images": bus})[0]
    m = match_detections(a, y)
    assert m["dets_torch"] >= 3 and m["dets_matched"] == m["dets_torch"] == m["dets_onnx"], m
    ops = cm.get_runtime_model().get_ops()
    convs = [op for op in ops if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert convs and all(op.get_rt_info()["runtimePrecision"].astype(str) in ("u8", "i8") for op in convs)


# ---- synthetic graphs: the other patterns (int8 activations, per-channel weights, float bias after Mul)


def _const(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _model(nodes, inits, out_shape):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _run(proto, x):
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_int8_activations_per_channel_qlinearconv_move_to_uint8():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    inits = [_const("xs", np.float32(0.02)), _const("xzp", np.int8(-5)), _const("w", w),
             _const("ws", rng.uniform(0.001, 0.01, 4).astype(np.float32)), _const("wzp", np.zeros(4, np.int8)),
             _const("ys", np.float32(0.05)), _const("yzp", np.int8(3)),
             _const("b", rng.integers(-500, 500, 4, np.int32))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp", "b"], ["yq"],
                              pads=[1] * 4),
             helper.make_node("MaxPool", ["yq"], ["pq"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("DequantizeLinear", ["pq", "ys", "yzp"], ["y"])]
    src = _model(nodes, inits, [1, 4, 4, 4])
    out = qdq_from_quantized(src)
    x = rng.uniform(-1, 1.5, (1, 3, 8, 8)).astype(np.float32)
    assert np.abs(_run(src, x) - _run(out, x)).max() <= 1e-6
    inits_out = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    zps = [inits_out[n.input[2]] for n in out.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits_out]
    assert len(zps) == 4 and all(z.dtype == np.uint8 for z in zps)
    assert sorted(int(z) for z in zps) == [123, 123, 131, 131]  # -5 + 128, 3 + 128
    dq_w = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits_out)
    assert [a.i for a in dq_w.attribute if a.name == "axis"] == [0]


def test_convinteger_with_float_bias_after_mul():
    """The other SparseML chain: ConvInteger -> Cast -> Mul(per-channel scale) -> Add(float bias)."""
    rng = np.random.default_rng(1)
    w = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    comb = rng.uniform(1e-4, 1e-3, (1, 4, 1, 1)).astype(np.float32)
    inits = [_const("xs", np.float32(1 / 255)), _const("xzp", np.uint8(0)), _const("w", w),
             _const("wzp", np.uint8(128)),
             _const("comb", comb), _const("bias", rng.normal(0, 1, (1, 4, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
             helper.make_node("ConvInteger", ["xq", "w", "xzp", "wzp"], ["acc"], pads=[1] * 4),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "comb"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["y"])]
    src = _model(nodes, inits, [1, 4, 8, 8])
    out = qdq_from_quantized(src)
    assert _ops(out) == {"QuantizeLinear": 1, "DequantizeLinear": 3, "Conv": 1}
    x = rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    a, b = _run(src, x), _run(out, x)
    assert np.abs(a - b).max() <= 0.51 * comb.max() + 1e-5  # the float bias rounds to int32 accumulator units


def test_unknown_rescale_chain_is_refused():
    inits = [_const("xs", np.float32(0.1)), _const("xzp", np.uint8(0)), _const("w", np.ones((2, 3, 1, 1), np.uint8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
             helper.make_node("ConvInteger", ["xq", "w"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
    with pytest.raises(ValueError, match="Mul"):
        qdq_from_quantized(_model(nodes, inits, [1, 2, 8, 8]))
