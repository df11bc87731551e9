"""Every engine behind load_engine gives the same predictions as PyTorch and reads names/stride from the file."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from utils.engines import ENGINES, EngineUnavailable, engine_name, load_engine
from utils.engines.metadata import interpret, parse_names
from utils.export import export_metadata, export_onnx, export_openvino, load_image_batch, prepare_model

IMGSZ = 160
NAMES = [f"thing{i}" for i in range(80)]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Boxes are in pixels (up to imgsz), scores in [0, 1]: 1e-3 relative plus 1e-3 absolute covers both."""
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = DetectionModel("models/yolov5n.yaml").eval()
    m.names = list(NAMES)
    return prepare_model(m)


@pytest.fixture(scope="module")
def onnx_static(model, tmp_path_factory):
    f = tmp_path_factory.mktemp("static") / "tiny.onnx"
    meta = export_metadata(model, (IMGSZ, IMGSZ), 1, False, 0.0)
    return export_onnx(model, f, IMGSZ, 1, dynamic=False, metadata=meta)


@pytest.fixture(scope="module")
def onnx_dynamic(model, tmp_path_factory):
    f = tmp_path_factory.mktemp("dynamic") / "tiny_dyn.onnx"
    meta = export_metadata(model, (IMGSZ, IMGSZ), 1, True, 0.0)
    return export_onnx(model, f, IMGSZ, 1, dynamic=True, metadata=meta)


@pytest.fixture(scope="module")
def bus_batch(bus_jpg) -> np.ndarray:
    return load_image_batch(bus_jpg, (IMGSZ, IMGSZ))


@pytest.fixture(scope="module")
def torch_pred(model, bus_batch) -> np.ndarray:
    return load_engine(model)(bus_batch)


def test_metadata_round_trip(onnx_static, model):
    eng = load_engine(onnx_static)
    assert eng.name == "onnxruntime"
    assert eng.names == NAMES
    assert eng.stride == int(model.stride.max()) == 32
    assert eng.imgsz == (IMGSZ, IMGSZ) and eng.dynamic is False and eng.fixed_batch == 1
    assert eng.metadata["imgsz"] == [IMGSZ, IMGSZ] and eng.metadata["sparsity"] == "0.0"
    info = eng.info()
    assert info["input_name"] == "images" and info["input_dtype"] == "float32"
    assert info["input_shape"] == [1, 3, IMGSZ, IMGSZ]
    assert info["version"] and info["file"] == str(onnx_static) and info["threads"] >= 1


def test_names_parsed_from_json_and_python_literals():
    assert parse_names("{0: 'person', 1: 'bus'}") == ["person", "bus"]  # what Ultralytics writes
    assert parse_names('{"1": "bus", "0": "person"}') == ["person", "bus"]
    assert parse_names('["person", "bus"]') == ["person", "bus"]
    meta = interpret({"stride": "[8, 16, 32]"}, nc=2)
    assert meta["stride"] == 32 and meta["names"] == ["class0", "class1"] and meta["imgsz"] is None


def test_onnxruntime_matches_torch_on_real_image(onnx_static, bus_batch, torch_pred):
    pred = load_engine(onnx_static, engine="onnxruntime", num_threads=1)(bus_batch)
    assert pred.dtype == np.float32 and pred.shape == (1, 3 * (20 * 20 + 10 * 10 + 5 * 5), 85)
    assert close(pred, torch_pred)
    opts = load_engine(onnx_static, engine="onnxruntime").session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # idle threads leave NMS the cores


def test_uint8_and_float_batches_agree(onnx_static, bus_batch):
    eng = load_engine(onnx_static)
    as_uint8 = np.rint(bus_batch * 255).astype(np.uint8)
    assert np.allclose(eng(as_uint8), eng(bus_batch), atol=1e-4)


def test_dynamic_onnx_takes_other_sizes_and_batches(onnx_dynamic, model, bus_jpg):
    batch = np.concatenate([load_image_batch(bus_jpg, (192, 256))] * 3)
    eng = load_engine(onnx_dynamic)
    assert eng.dynamic and eng.imgsz is None and eng.fixed_batch is None
    assert close(eng(batch), load_engine(model)(batch))


def test_static_batch_engine_chunks_and_pads(onnx_static, bus_batch, torch_pred):
    batch = np.concatenate([bus_batch] * 3)
    pred = load_engine(onnx_static)(batch)  # file is batch 1: three calls
    assert pred.shape[0] == 3 and all(close(p[None], torch_pred) for p in pred)


@pytest.mark.native_engines
def test_deepsparse_agrees_with_onnxruntime(onnx_dynamic, bus_batch, torch_pred):
    eng = load_engine(onnx_dynamic, engine="deepsparse", batch_size=2, imgsz=IMGSZ, num_threads=1)
    assert eng.imgsz == (IMGSZ, IMGSZ) and eng.fixed_batch == 2 and not eng.dynamic  # compiled static
    assert eng.names == NAMES and eng.info()["threads"] == 1
    pred = eng(np.concatenate([bus_batch] * 3))  # 3 images through a batch-2 engine
    ort = load_engine(onnx_dynamic)(bus_batch)
    assert all(close(p[None], ort) for p in pred) and close(ort, torch_pred)


@pytest.mark.native_engines
def test_openvino_onnx_and_ir_agree_with_onnxruntime(onnx_static, bus_batch, tmp_path):
    ort = load_engine(onnx_static)(bus_batch)
    eng = load_engine(onnx_static, engine="openvino", num_threads=1)  # f32 by default, not this CPU's bf16
    assert eng.info()["precision"] == "f32" and close(eng(bus_batch), ort)
    ir = export_openvino(onnx_static, {"names": NAMES, "stride": 32}, tmp_path / "tiny_openvino_model")
    ov_ir = load_engine(ir)  # folder -> openvino, names from the YAML side file
    assert ov_ir.name == "openvino" and ov_ir.names == NAMES and ov_ir.imgsz == (IMGSZ, IMGSZ)
    assert close(ov_ir(bus_batch), ort)


@pytest.mark.native_engines
def test_openvino_outputs_belong_to_the_caller(onnx_static, onnx_dynamic, bus_batch):
    """OpenVINO writes straight into fresh arrays (no copy out of its buffers): a result kept across the next call
    stays as it was, and dynamic output shapes (copied) give the same values."""
    eng = load_engine(onnx_static, engine="openvino", num_threads=1)
    first = eng(bus_batch)
    kept = first.copy()
    second = eng(np.zeros_like(bus_batch))
    assert second is not first and np.array_equal(first, kept) and not np.array_equal(second, kept)
    assert np.array_equal(eng(bus_batch), kept)
    dyn = load_engine(onnx_dynamic, engine="openvino", num_threads=1)
    assert close(dyn(bus_batch), kept)


def test_opencv_agrees_with_onnxruntime(onnx_static, bus_batch, torch_pred):
    eng = load_engine(onnx_static, engine="opencv")
    assert eng.names == NAMES and eng.imgsz == (IMGSZ, IMGSZ)
    assert eng.int8_kernels() == "0/60 conv INT8 (ConvolutionInt8)"
    assert close(eng(bus_batch), load_engine(onnx_static)(bus_batch)) and close(eng(bus_batch), torch_pred)
    assert engine_name(onnx_static, "cv2") == "opencv" and engine_name(onnx_static) == "onnxruntime"


def test_fixed_size_mismatch_says_how_to_fix(onnx_static):
    with pytest.raises(ValueError, match="--dynamic"):
        load_engine(onnx_static)(np.zeros((1, 3, 192, 192), np.float32))


@pytest.mark.parametrize("engine,package", [("deepsparse", "deepsparse"), ("openvino", "openvino"),
                                            ("onnxruntime", "onnxruntime")])
def test_missing_engine_message(onnx_static, monkeypatch, engine, package):
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError, as if not installed
    with pytest.raises(EngineUnavailable, match=f"pip install {package}") as e:
        load_engine(onnx_static, engine=engine)
    assert len(str(e.value).splitlines()) == 1 and "--engine" in str(e.value)


def test_engine_choice_from_suffix_and_wrong_file(onnx_static, tmp_path):
    assert engine_name("a.pt") == "torch" and engine_name("a.onnx") == "onnxruntime"
    assert engine_name("a.xml") == "openvino" and engine_name(tmp_path) == "openvino"
    assert engine_name("a.onnx", "ORT") == "onnxruntime" and set(ENGINES) >= {"torch", "deepsparse"}
    with pytest.raises(ValueError, match="unknown engine"):
        engine_name("a.onnx", "tensorrt")
    pt = tmp_path / "x.pt"
    pt.touch()
    with pytest.raises(ValueError, match="export.py --weights"):
        load_engine(pt, engine="deepsparse")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_engine(tmp_path / "missing.onnx")


@pytest.mark.native_engines
def test_quantized_uint8_input_model(assets):
    """Third-party SparseML INT8 export: uint8 input, no metadata, extra raw-head outputs."""
    f = assets / "reference_onnx" / "yolov5n_pistols1cls_qat_int8_416.onnx"
    x = np.random.default_rng(0).random((1, 3, 416, 416), dtype=np.float32)
    ort = load_engine(f)
    assert ort.input_dtype == np.uint8 and ort.names == ["class0"] and ort.imgsz == (416, 416)
    a = ort(x)
    b = load_engine(f, engine="deepsparse", imgsz=416)(x)
    assert a.shape == (1, 10647, 6)
    assert np.allclose(a, b, rtol=1e-3, atol=1e-3)  # same INT8 graph, same arithmetic
