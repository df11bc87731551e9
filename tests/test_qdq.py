"""QDQ INT8 writer: structure, ONNX Runtime fusion, detections on three engines, truthful metadata (yolov5n, 320)."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from utils.engines import load_engine
from utils.engines.metadata import read_onnx_metadata
from utils.export.qdq import (METHODS, OPSET, SCHEME, _chosen_tensors, calibrate_ranges, head_convs, image_batches,
                              quantize_onnx_file, quantize_qdq)
from utils.export import export_weights, load_image_batch
from utils.export.pipeline import check_int8_options
from utils.export.sensitivity import _head_probs, rank_units
from utils.nms import non_max_suppression

IMGSZ, CALIB_IMAGES = 320, 8
# Detections above CONF on bus.jpg: same classes, box corners within these pixels. Measured at 320 with 8 images:
# INT8 vs FP32 (ORT) worst corner 2.0 px; the same QDQ file on ORT vs OpenCV 2.6 px, ORT vs OpenVINO 1.5 px
# (runtimes round requantization differently; at 640 the bus's 460 px wide box moves up to 6 px between them)
CONF, BOX_PX, ENGINE_BOX_PX = 0.4, 4.0, 4.0


@pytest.fixture(scope="module")
def files(tmp_path_factory, yolov5n_pt, coco128_dir):
    """FP32 export of the official yolov5n at 320 and its QDQ twin calibrated on a few coco128 train images."""
    tmp = tmp_path_factory.mktemp("qdq")
    weights = tmp / "yolov5n.pt"  # export writes next to the weights: never into the shared assets
    shutil.copy(yolov5n_pt, weights)
    fp32 = export_weights(weights, ("onnx",), imgsz=IMGSZ, verify=False, log=lambda *a: None)["files"][0]
    images = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:CALIB_IMAGES]
    qdq = quantize_onnx_file(fp32, tmp / "yolov5n_qdq.onnx", image_batches(images, IMGSZ, batch_size=4))
    return fp32, qdq


def _ort(path, x: np.ndarray, optimized=None) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if optimized:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def _dets(y: np.ndarray) -> np.ndarray:
    return non_max_suppression(torch.from_numpy(y), 0.25, 0.45)[0].numpy()


def _assert_match(ref: np.ndarray, other: np.ndarray, box_px: float, conf: float = CONF) -> None:
    """Every detection of `ref` above `conf` has one of the same class in `other` with corners within box_px."""
    confident = ref[ref[:, 4] >= conf]
    assert len(confident) >= 3, "bus.jpg should give several confident detections"
    for d in confident:
        same = other[other[:, 5] == d[5]]
        assert len(same), f"class {int(d[5])} detection {d[:4].round(1)} missing"
        err = np.abs(same[:, :4] - d[:4]).max(1)
        assert err.min() <= box_px, f"class {int(d[5])} box {d[:4].round(1)}: nearest differs by {err.min():.1f} px"


def _producers(model: onnx.ModelProto) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def test_structure(files):
    fp32, qdq = files
    model = onnx.load(str(qdq))
    prod, inits = _producers(model), {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    heads = {n.name for n in head_convs(onnx.load(str(fp32)))}
    assert len(convs) == 60 and len(heads) == 3
    for conv in convs:
        dq = prod[conv.input[0]]
        assert dq.op_type == "DequantizeLinear", f"{conv.name} reads a float activation"
        assert inits[dq.input[2]].data_type == onnx.TensorProto.UINT8  # uint8 activations (x86 QLinearConv)
        if conv.name in heads:  # the default keeps Detect's output convs float
            assert conv.input[1] in inits
            continue
        wdq = prod[conv.input[1]]
        w, ws = numpy_helper.to_array(inits[wdq.input[0]]), numpy_helper.to_array(inits[wdq.input[1]])
        assert wdq.op_type == "DequantizeLinear" and w.dtype == np.int8 and ws.shape == (w.shape[0],)
        assert next(a.i for a in wdq.attribute if a.name == "axis") == 0
        assert not numpy_helper.to_array(inits[wdq.input[2]]).any()  # symmetric
        bdq = prod[conv.input[2]]
        b, bs = numpy_helper.to_array(inits[bdq.input[0]]), numpy_helper.to_array(inits[bdq.input[1]])
        act_scale = numpy_helper.to_array(inits[dq.input[1]])
        assert b.dtype == np.int32 and np.allclose(bs, act_scale * ws, rtol=1e-6)
    # Detect's decode stays float: nothing downstream of a head conv is quantized
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    stack, seen = [c.output[0] for c in convs if c.name in heads], set()
    while stack:
        for n in consumers.get(stack.pop(), []):
            assert n.op_type not in ("QuantizeLinear", "DequantizeLinear"), f"{n.name} quantizes the decode"
            if n.name not in seen:
                seen.add(n.name)
                stack.extend(n.output)
    assert any(o.op_type == "Sigmoid" for o in model.graph.node if o.name in seen)


def test_ort_fuses_every_quantized_conv(files, tmp_path, bus_jpg):
    _, qdq = files
    x = load_image_batch(bus_jpg, (IMGSZ, IMGSZ))
    _ort(qdq, x, optimized=tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 57 and ops["Conv"] == 3  # 3 = Detect's float output convs
    assert ops["QLinearSigmoid"] == 57 and ops["QLinearMul"] == 57  # SiLU runs in uint8 too


def test_detections_onnxruntime_and_opencv(files, bus_jpg):
    import cv2

    fp32, qdq = files
    x = load_image_batch(bus_jpg, (IMGSZ, IMGSZ))
    ref, q = _dets(_ort(fp32, x)), _dets(_ort(qdq, x))
    _assert_match(ref, q, BOX_PX)
    _assert_match(q, ref, BOX_PX)
    net = cv2.dnn.readNetFromONNX(str(qdq))
    net.setInput(x)
    cv = _dets(net.forward())
    _assert_match(q, cv, ENGINE_BOX_PX)
    _assert_match(ref, cv, BOX_PX)


@pytest.mark.native_engines
def test_detections_openvino(files, bus_jpg):
    import openvino as ov

    fp32, qdq = files
    x = load_image_batch(bus_jpg, (IMGSZ, IMGSZ))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(qdq)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = _dets(compiled({0: x})[0])
    _assert_match(_dets(_ort(qdq, x)), got, ENGINE_BOX_PX)
    _assert_match(_dets(_ort(fp32, x)), got, BOX_PX)


def _quantized_inputs(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_inputs_layout_quantizes_only_what_convs_read(files, coco128_dir):
    """--int8-format qdq-inputs: Q/DQ on the convs' inputs (and their weights) only, so every SiLU stays float for
    OpenVINO to fuse into the INT8 conv before it, and Detect's convs can take INT8 weights with a float output;
    ONNX Runtime then fuses no QLinearConv (it needs the output Q)."""
    fp32, _ = files
    model = onnx.load(str(fp32))
    images = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:2]
    q = quantize_qdq(model, calibrate_ranges(model, list(image_batches(images, IMGSZ))), layout="inputs",
                     quantize_head=True)
    prod = _producers(q)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 60 and all(prod[c.input[0]].op_type == "DequantizeLinear" for c in convs)
    assert all(prod[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    conv_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Conv"}
    assert _quantized_inputs(q) and _quantized_inputs(q) <= conv_inputs
    src = _producers(model)
    assert not [t for t in _quantized_inputs(q) if t in src and src[t].op_type in ("Conv", "Sigmoid")]
    assert not {n.output[0] for n in head_convs(model)} & _quantized_inputs(q)  # Detect's convs output float


@pytest.fixture(scope="module")
def inputs_file(files, coco128_dir, tmp_path_factory):
    """The --int8-format qdq-inputs twin of the FP32 file, same calibration images as `files`."""
    images = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:CALIB_IMAGES]
    return quantize_onnx_file(files[0], tmp_path_factory.mktemp("inputs") / "inputs.onnx",
                              image_batches(images, IMGSZ, batch_size=4), layout="inputs", quantize_head=True)


def test_opencv_matches_onnxruntime_within_2px_on_the_inputs_layout(inputs_file, bus_jpg):
    """The issue's OpenCV target on the qdq-inputs file (OpenCV runs QDQ as float fake-quant, as ORT runs this form):
    same classes, boxes within 2 px on bus.jpg (measured 1.0 px here, 1.9 px at 640 with 128 images)."""
    import cv2

    x = load_image_batch(bus_jpg, (IMGSZ, IMGSZ))
    net = cv2.dnn.readNetFromONNX(str(inputs_file))
    net.setInput(x)
    ref, cv = _dets(_ort(inputs_file, x)), _dets(net.forward())
    _assert_match(ref, cv, 2.0)
    _assert_match(cv, ref, 2.0)


@pytest.mark.native_engines
def test_inputs_layout_on_openvino(files, inputs_file, bus_jpg):
    import openvino as ov

    fp32, _ = files
    inputs = inputs_file
    assert read_onnx_metadata(inputs)["quantization_layout"] == "inputs"
    x = load_image_batch(bus_jpg, (IMGSZ, IMGSZ))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(inputs)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = _dets(compiled({0: x})[0])
    _assert_match(_dets(_ort(fp32, x)), got, BOX_PX)
    _assert_match(got, _dets(_ort(fp32, x)), BOX_PX)
    kernels = load_engine(inputs, "openvino").int8_kernels()
    assert kernels.startswith("60/60 conv INT8"), kernels  # Detect's convs too: their outputs stay float


def test_metadata_truthful(files):
    fp32, qdq = files
    src, meta = read_onnx_metadata(fp32), read_onnx_metadata(qdq)
    assert all(meta[k] == v for k, v in src.items() if k != "date")  # names, stride, imgsz... kept
    assert meta["precision"] == "int8" and meta["quantization"] == SCHEME
    assert meta["calibration_images"] == str(CALIB_IMAGES) and meta["calibration_method"] == "percentile"
    model = onnx.load(str(qdq))
    assert meta["opset"] == str(OPSET) == str(next(o.version for o in model.opset_import if o.domain == ""))


def test_calibration_methods_and_errors(files):
    fp32, _ = files
    model = onnx.load(str(fp32))
    rng = np.random.default_rng(0)
    batches = [rng.random((1, 3, IMGSZ, IMGSZ), dtype=np.float32) for _ in range(2)]
    r = {m: calibrate_ranges(model, batches, m) for m in METHODS}
    assert all(r[m].keys() == r["minmax"].keys() for m in METHODS)
    for name, (lo, hi) in r["minmax"].items():  # clipping methods never widen the seen range
        for m in METHODS:
            assert lo - 1e-6 <= r[m][name][0] <= r[m][name][1] <= hi + 1e-6, (m, name)
    with pytest.raises(ValueError, match="method"):
        calibrate_ranges(model, batches, "mse-typo")
    with pytest.raises(KeyError, match="no calibrated range"):
        quantize_qdq(model, {})


def test_mixed_precision_leaves_the_most_sensitive_units_float(files, coco128_dir, tmp_path):
    """--int8-float: units ranked by the head error each adds alone; the top ones stay float and the error drops."""
    fp32, _ = files
    model = onnx.load(str(fp32))
    images = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:2]
    batches = list(image_batches(images, IMGSZ))
    ranges = calibrate_ranges(model, batches)
    ranked = rank_units(model, ranges, batches, "all")
    tensors = [t for unit, _ in ranked for t in unit]
    assert sorted(tensors) == sorted(_chosen_tensors(model, "all", False))  # every quantized tensor, once
    errors = [e for _, e in ranked]
    assert errors == sorted(errors, reverse=True) and errors[-1] >= 0 and errors[0] > 0
    prod = _producers(model)
    silu = [u for u, _ in ranked if len(u) == 3]
    assert len(silu) == 57 and all([prod[t].op_type for t in u] == ["Conv", "Sigmoid", "Mul"] for u in silu)

    floats = [t for unit, _ in ranked[:2] for t in unit]
    mixed = quantize_qdq(model, ranges, keep_float=floats)
    q_inputs = {n.input[0] for n in mixed.graph.node if n.op_type == "QuantizeLinear"}
    assert not q_inputs & set(floats)
    inits = {t.name for t in mixed.graph.initializer}
    readers = [n for n in mixed.graph.node if n.op_type == "Conv" and n.input[0] in floats]
    assert readers and all(n.input[1] in inits for n in readers)  # a Conv reading a float tensor keeps float weights
    ref = _head_probs(model, batches, 1)

    def err(m: onnx.ModelProto) -> float:
        return float(np.mean([np.mean((a - r) ** 2) for a, r in zip(_head_probs(m, batches, 1), ref)]))

    assert err(mixed) < err(quantize_qdq(model, ranges))

    images8 = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:4]
    out = quantize_onnx_file(fp32, tmp_path / "mixed.onnx", image_batches(images8, IMGSZ),
                             choose_float=lambda m, r, b: floats if len(b) == 4 else [])
    assert read_onnx_metadata(out)["float_activations"] == ",".join(floats)


def test_int8_float_needs_qdq_int8():
    check_int8_options(True, "d.yaml", "qdq", False, 3)
    for args in ((False, None, "qdq", False, 3), (True, "d.yaml", "convinteger", False, 1),
                 (True, "d.yaml", "qdq", False, -1)):
        with pytest.raises(ValueError, match="--int8-float"):
            check_int8_options(*args)
