"""--head raw: files end at Detect's convs, the host decodes only cells that pass objectness, detections unchanged."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import export
from tests.conftest import detections_by_file, writable_copy
import val
from models.yolo import DetectionModel
from utils.checkpoint import load_model
from utils.engines import load_engine
from utils.engines.metadata import read_onnx_metadata
from utils.export import export_onnx, prepare_model
from utils.export.head import model_head, strip_decode
from utils.export.qat_qdq import export_qat_qdq
from utils.nms import non_max_suppression
from utils.predict import Predictor
from utils.raw_head import RawHead, RawPrediction
from utils.sparsity.ptq import calibration_batches, quantize_ptq


@pytest.fixture(scope="module")
def files(tmp_path_factory, yolov5n_pt):
    """The official yolov5n exported twice at 640: decoded (the default) and --head raw."""
    return {head: export.run(weights=str(writable_copy(yolov5n_pt, tmp_path_factory.mktemp(head))), head=head)[0]
            for head in ("decoded", "raw")}


def test_host_decode_equals_detect_decode():
    """RawPrediction decodes exactly as Detect._decode does in the model (every row, same order)."""
    torch.manual_seed(0)
    model = DetectionModel("models/yolov5n.yaml", nc=3).eval()
    detect, maps = model.model[-1], []
    hooks = [c.register_forward_hook(lambda _m, _i, o: maps.append(o.detach().numpy())) for c in detect.m]
    with torch.no_grad():
        pred = model(torch.rand(2, 3, 256, 192))[0].numpy()
    for h in hooks:
        h.remove()
    raw = RawPrediction(maps, model_head(model))
    assert raw.shape == pred.shape
    np.testing.assert_allclose(raw.dense(), pred, rtol=1e-6, atol=1e-4)
    u = np.unique(pred[..., 4])  # a fresh head's objectness is low everywhere: threshold between two distinct values
    conf = float(u[-20:-18].mean())  # (a threshold on a value itself would test 1-ulp sigmoid differences)
    rows, img = raw.candidates(conf)
    b, r = np.nonzero(pred[..., 4] > conf)
    assert len(rows) > 0 and (img == b).all()
    np.testing.assert_allclose(rows, pred[b, r], rtol=1e-6, atol=1e-4)


def test_raw_file_structure_and_metadata(files):
    proto = onnx.load(str(files["raw"]))
    assert [o.name for o in proto.graph.output] == ["output0", "output1", "output2"]
    dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output]
    assert dims == [[1, 255, 80, 80], [1, 255, 40, 40], [1, 255, 20, 20]]
    assert not {"Sigmoid", "Concat"} & {n.op_type for n in proto.graph.node if n.name.startswith("/model/model.24")}
    head = RawHead.from_metadata(read_onnx_metadata(files["raw"]))
    assert head.nc == 80 and head.strides.tolist() == [8, 16, 32]
    assert head.anchors[0].tolist() == [[10, 13], [16, 30], [33, 23]]  # yolov5 P3 anchors, pixels
    assert RawHead.from_metadata(read_onnx_metadata(files["decoded"])) is None


@pytest.mark.parametrize("conf", [0.25, 0.001])
def test_raw_file_gives_the_same_detections(files, bus_jpg, assets, conf):
    """ONNX Runtime: the same boxes as the decoded file on both sample images, at detect's and val's thresholds."""
    preds = {h: Predictor(load_engine(f), (640, 640), conf, 0.45) for h, f in files.items()}
    for im in (cv2.imread(str(bus_jpg)), cv2.imread(str(assets / "images" / "zidane.jpg"))):
        a, b = preds["decoded"]([im])[0], preds["raw"]([im])[0]
        assert a.shape == b.shape and len(a) > 0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)  # float rounding of 1e3-px coordinates


def test_val_on_raw_file_equals_decoded(files, coco128_dir, tmp_path):
    maps = [val.run(data="data/coco128-local.yaml", weights=str(f), engine="onnxruntime", batch_size=8,
                    project=str(tmp_path), name=h, plots=False)["map"] for h, f in files.items()]
    assert maps[0] > 0.3 and abs(maps[0] - maps[1]) < 1e-4


def test_qat_and_int8_exports_strip_too(tmp_path, yolov5n_pt):
    """Every form (here post-training QDQ) ends at the conv maps and still matches PyTorch's detections."""
    res = export.export_weights(writable_copy(yolov5n_pt, tmp_path), imgsz=320, int8=True,
                                data="data/coco128-local.yaml", calib_images=8, verify_images=4, head="raw")
    for f in res["files"]:
        assert len(onnx.load(str(f)).graph.output) == 3
    assert res["verify_all"]["yolov5n_int8.onnx"]["agrees"] and res["verify"]["max_abs"] < 0.05


def test_qat_forms_strip_too(tmp_path, yolov5n_pt, bus_jpg):
    """A QAT model's two INT8 forms (SparseML's ConvInteger, our QDQ) keep their detections with --head raw."""
    q = quantize_ptq(load_model(str(yolov5n_pt)), calibration_batches((320, 320)))
    meta = {"names": [str(i) for i in range(80)], "imgsz": [320, 320]}
    made = [export_onnx(prepare_model(q), tmp_path / "ci.onnx", 320, metadata=meta),
            export_qat_qdq(q, tmp_path / "qdq.onnx", (320, 320), 1, meta)]
    im = cv2.imread(str(bus_jpg))
    for f in made:
        raw = strip_decode(Path(shutil.copy(f, f.with_name(f.stem + "_raw.onnx"))), model_head(q))
        a, b = (Predictor(load_engine(x), (320, 320), 0.25, 0.45)([im])[0] for x in (f, raw))
        assert len(onnx.load(str(raw)).graph.output) == 3 and a.shape == b.shape and len(a) >= 3, f.name
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)


def test_file_without_decode_is_one_clear_error(files, tmp_path):
    f = shutil.copy(files["raw"], tmp_path / "already_raw.onnx")
    with pytest.raises(ValueError, match="--head decoded"):
        strip_decode(f, model_head(load_model(str(files["decoded"].with_suffix(".pt")))))
    with pytest.raises(SystemExit):
        export.parse_opt(["--head", "sideways"])


def test_nms_on_raw_prediction_with_hybrid_labels(yolov5n_pt, bus_jpg):
    """val --save-hybrid labels still work on raw-head predictions (decoded in full for that rare path)."""
    model = load_model(str(yolov5n_pt)).eval()
    maps = []
    hooks = [c.register_forward_hook(lambda _m, _i, o: maps.append(o.detach().numpy())) for c in model.model[-1].m]
    x = torch.from_numpy(cv2.resize(cv2.imread(str(bus_jpg)), (320, 320))[..., ::-1].transpose(2, 0, 1).copy())
    with torch.no_grad():
        pred = model(x[None].float() / 255)[0]
    for h in hooks:
        h.remove()
    labels = [torch.tensor([[1.0, 64, 64, 20, 20]])]
    a = non_max_suppression(pred, 0.001, 0.6, labels=labels, multi_label=True)[0]
    b = non_max_suppression(RawPrediction(maps, model_head(model)), 0.001, 0.6, labels=labels, multi_label=True)[0]
    assert a.shape == b.shape and a[0, 4] == 1 and torch.allclose(a, b, atol=1e-3)  # the label row leads both


@pytest.mark.native_engines
@pytest.mark.parametrize("engine", ["openvino", "deepsparse"])
def test_raw_file_on_native_engines(files, bus_jpg, engine):
    dets = detections_by_file(files, engine, 640, bus_jpg)
    a, b = dets["decoded"], dets["raw"]
    assert a.shape == b.shape and len(a) >= 4
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)


def test_static_batch_file_chunks_raw_outputs(tmp_path, yolov5n_pt, bus_jpg):
    """A batch-2 raw file given 3 images: every level's maps are chunked, padded and cut back like decoded outputs."""
    out = {head: export.run(weights=str(writable_copy(yolov5n_pt, tmp_path / head)), imgsz=[160], batch_size=2,
                            head=head)[0] for head in ("decoded", "raw")}
    im = cv2.resize(cv2.imread(str(bus_jpg)), (160, 160))[..., ::-1].transpose(2, 0, 1)
    x = np.stack([im, im[:, ::-1], im[:, :, ::-1]]).astype(np.float32) / 255
    raw = load_engine(out["raw"])(x)
    assert isinstance(raw, RawPrediction) and [m.shape[0] for m in raw.maps] == [3, 3, 3]
    np.testing.assert_allclose(raw.dense(), load_engine(out["decoded"])(x), rtol=1e-5, atol=1e-3)
