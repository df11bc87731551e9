"""--int8-format qoperator: the QDQ file rewritten as QLinearConv etc., which OpenCV DNN runs with its INT8 layers."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from tests.test_val import coco128_yaml
from utils.engines.metadata import read_onnx_metadata
from utils.export import export_weights, load_image_batch
from utils.export.qoperator import to_qoperator
from utils.nms import non_max_suppression

IMGSZ = 320


@pytest.fixture(scope="module")
def exported(tmp_path_factory, yolov5n_pt: Path, coco128_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("qop")
    weights = tmp / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    files = export_weights(weights, imgsz=IMGSZ, int8=True, data=str(coco128_yaml(tmp, coco128_dir)), calib_images=8,
                           int8_format="qoperator", verify=False, log=lambda *a: None)["files"]
    return files[0], files[1]


def _dets(y: np.ndarray) -> np.ndarray:
    return non_max_suppression(torch.from_numpy(np.asarray(y)), 0.25, 0.45)[0].numpy()


def test_the_file_is_qoperator_with_its_metadata(exported) -> None:
    _, int8 = exported
    ops = Counter(n.op_type for n in onnx.load(str(int8)).graph.node)
    assert ops["QLinearConv"] == 57 and ops["Conv"] == 3  # Detect's three convs stay float, as in qdq
    assert ops["QLinearSigmoid"] == 57 and ops["QLinearMul"] == 57 and "ConvInteger" not in ops
    meta = read_onnx_metadata(int8)
    assert meta["quantization_format"].startswith("qoperator (QLinearConv 57") and meta["precision"] == "int8"
    assert meta["names"].startswith("{0: 'person'")  # the QDQ file's metadata survives the rewrite


def test_opencv_runs_it_with_int8_layers_and_agrees_with_onnxruntime(exported, bus_jpg: Path) -> None:
    import onnxruntime as ort

    _, int8 = exported
    net = cv2.dnn.readNetFromONNX(str(int8))
    assert {"ConvolutionInt8", "SigmoidInt8", "EltwiseInt8"} <= set(net.getLayerTypes())
    x = load_image_batch(bus_jpg, (IMGSZ, IMGSZ))
    net.setInput(x)
    cv = _dets(net.forward())
    ref = _dets(ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0])
    assert len(ref) >= 3 and cv.shape == ref.shape and (cv[:, 5] == ref[:, 5]).all()
    assert np.abs(cv[:, :4] - ref[:, :4]).max() <= 2.0  # the 2 px (measured 0.0: the same integer ops)


def test_qoperator_refuses_openvino_and_non_fusable_files(tmp_path: Path, exported) -> None:
    fp32, _ = exported
    with pytest.raises(ValueError, match="drop --include openvino"):
        export_weights(fp32.with_suffix(".pt"), ("onnx", "openvino"), imgsz=IMGSZ, int8=True, data="x.yaml",
                       int8_format="qoperator")
    with pytest.raises(ValueError, match="fused no conv"):
        to_qoperator(fp32, tmp_path / "float.onnx")  # a float file has nothing to fuse


def test_opencv_engine_runs_it_end_to_end(exported, bus_jpg: Path) -> None:
    """detect/val/benchmark's `--engine opencv` on the QOperator file: INT8 convs, ONNX Runtime's detections."""
    from utils.engines import load_engine
    from utils.predict import Predictor

    _, int8 = exported
    cv_engine, ort_engine = load_engine(int8, "opencv"), load_engine(int8, "onnxruntime")
    assert cv_engine.int8_kernels() == "57/60 conv INT8 (ConvolutionInt8)"
    im = cv2.imread(str(bus_jpg))
    got, ref = Predictor(cv_engine, cv_engine.imgsz)([im])[0], Predictor(ort_engine, ort_engine.imgsz)([im])[0]
    assert len(ref) >= 3 and got.shape == ref.shape and np.abs(got - ref).max() < 1e-2
