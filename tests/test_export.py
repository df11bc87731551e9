"""export.py writes ONNX/OpenVINO files that carry their metadata, keep sparsity, and predict like PyTorch."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export
from models.yolo import DetectionModel
from utils.augmentations import letterbox
from utils.checkpoint import load_model, save_checkpoint
from utils.engines import load_engine
from utils.engines.metadata import read_onnx_metadata
from utils.export.pixels import pixel_input
from utils.export import export_onnx, export_weights, load_image_batch, prepare_model, onnx_conv_sparsity, recipe_summary
from utils.nms import non_max_suppression
from utils.sparsity.measure import global_sparsity, prunable_parameters

RECIPE = """---
version: 1.1.0
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 2
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
  - !GMPruningModifier
    params: ["model.24.m.0.weight"]
---
"""


@torch.no_grad()
def prune_globally(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude prunable weights, as a finished pruning run leaves them."""
    params = list(prunable_parameters(model).values())
    threshold = torch.cat([p.abs().flatten() for p in params]).quantile(sparsity)
    for p in params:
        p.mul_(p.abs() > threshold)


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = DetectionModel("models/yolov5n.yaml")
    model.names = [f"c{i}" for i in range(80)]
    prune_globally(model, 0.7)
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_checkpoint(path, model, recipe=RECIPE)
    return path, global_sparsity(model)


def test_export_pruned_checkpoint(pruned_ckpt, bus_jpg, capsys):
    path, sparsity = pruned_ckpt
    result = export_weights(path, ("onnx",), imgsz=160)  # what export.run calls; openvino: see the slow test
    (onnx_file,) = result["files"]
    assert onnx_file == path.with_suffix(".onnx")
    out = capsys.readouterr().out
    assert "max abs diff" in out and "gzip -9 MB" in out and str(onnx_file) in out
    assert result["verify"]["max_abs_scores"] < 1e-4 and result["verify"]["max_abs_xywh"] < 1e-2
    assert result["verify"]["max_rel"] < 1e-3 and "detections at conf 0.25" in out
    assert result["verify"]["dets_matched"] == result["verify"]["dets_torch"]

    meta = read_onnx_metadata(onnx_file)
    assert meta["stride"] == "32" and meta["imgsz"] == "[160, 160]" and meta["names"].startswith("{0: 'c0'")
    assert meta["recipe"] == "EpochRangeModifier, GMPruningModifier x2"
    assert abs(float(meta["sparsity"]) - sparsity) < 1e-4 and sparsity > 0.69

    measured = onnx_conv_sparsity(onnx_file)
    assert abs(measured["sparsity"] - sparsity) < 1e-6  # BN folding scales weights; zeros stay zeros
    assert len(measured["layers"]) == len(prunable_parameters(DetectionModel("models/yolov5n.yaml")))
    raw, gz = result["sizes"]["pruned.onnx"]
    assert gz < 0.6 * raw  # zeros compress: the download-size payoff of pruning

    x = load_image_batch(bus_jpg, (160, 160))
    ref = load_engine(path)(x)
    eng = load_engine(onnx_file)
    assert eng.names[:2] == ["c0", "c1"] and np.allclose(eng(x), ref, rtol=1e-3, atol=1e-3)


def test_onnx_sparsity_reads_quantized_zero_points(assets):
    """INT8 convs count weights equal to their zero point, checked against a count made here with onnx + numpy."""
    import onnx
    from onnx import numpy_helper

    f = assets / "reference_onnx" / "yolov5n_pistols1cls_qat_int8_416.onnx"
    proto = onnx.load(str(f))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zeros = literal = total = n = 0
    for node in proto.graph.node:
        if node.op_type == "QLinearConv":  # inputs: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, B]
            w, zp = inits[node.input[3]], inits[node.input[5]]
            zp = zp.reshape(-1, 1, 1, 1) if zp.ndim == 1 else zp  # per-output-channel or per-tensor
        elif node.op_type == "Conv":  # Detect's float 1x1 convs
            w, zp = inits[node.input[1]], 0
        else:
            continue
        zeros, literal, total, n = zeros + int((w == zp).sum()), literal + int((w == 0).sum()), total + w.size, n + 1
    # the file holds every conv of a 1-class yolov5n, nothing more or less
    dense = DetectionModel("models/yolov5n.yaml", nc=1)
    convs = [m for m in dense.modules() if isinstance(m, torch.nn.Conv2d)]
    assert n == len(convs) and total == sum(m.weight.numel() for m in convs)
    assert literal != zeros  # uint8 weights at zero point 128: counting literal zeros would give another number

    m = onnx_conv_sparsity(f)
    assert (m["zeros"], m["total"], len(m["layers"])) == (zeros, total, n)
    assert m["sparsity"] == pytest.approx(zeros / total, abs=0)


def test_recipe_summary():
    assert recipe_summary(None) == "none"
    assert recipe_summary("modifiers:\n  - !QuantizationModifier\n    start_epoch: 1") == "QuantizationModifier"


def test_bad_input_gives_one_clear_message(tmp_path, pruned_ckpt):
    with pytest.raises(SystemExit, match="not found"):
        export.run(weights=str(tmp_path / "nope.pt"))
    with pytest.raises(SystemExit, match="unknown --include"):
        export.run(weights=str(pruned_ckpt[0]), include=["tflite"])


def test_parse_opt_aliases():
    opt = export.parse_opt(["--weights", "a.pt", "--img", "320", "--include", "onnx", "openvino", "--dynamic"])
    assert opt.imgsz == [320] and opt.include == ["onnx", "openvino"] and opt.dynamic and opt.opset == 13


@pytest.mark.slow
@pytest.mark.native_engines
def test_official_yolov5n_all_engines_agree_on_bus(yolov5n_pt, bus_jpg, tmp_path):
    weights = tmp_path / "yolov5n.pt"  # export writes next to the weights: never into the shared assets
    shutil.copy(yolov5n_pt, weights)
    onnx_file, ov_dir = export.run(weights=str(weights), imgsz=[640], include=["onnx", "openvino"])
    x = load_image_batch(bus_jpg, (640, 640))
    engines = {"torch": load_engine(weights), "onnxruntime": load_engine(onnx_file),
               "deepsparse": load_engine(onnx_file, engine="deepsparse"), "openvino": load_engine(ov_dir)}
    preds = {k: e(x) for k, e in engines.items()}
    dets = {k: non_max_suppression(torch.from_numpy(p))[0] for k, p in preds.items()}
    ref = dets["torch"]
    assert engines["onnxruntime"].names[0] == "person" and engines["openvino"].names[5] == "bus"
    assert sorted(ref[:, 5].int().tolist()) == [0, 0, 0, 5]  # yolov5n v6.1 on bus.jpg: 3 people and the bus
    assert engines["openvino"].file.endswith("yolov5n_openvino_model/yolov5n.xml")
    for k, d in dets.items():
        assert np.allclose(preds[k], preds["torch"], rtol=1e-3, atol=1e-2), k
        assert d.shape == ref.shape and torch.equal(d[:, 5], ref[:, 5]), k
        assert torch.allclose(d[:, :5], ref[:, :5], atol=0.05), k


def test_read_only_weights_folder_is_left_alone(tmp_path, yolov5n_pt, monkeypatch) -> None:
    """Exporting the shared (read-only) yolov5n.pt writes under runs/export/, never beside the asset."""
    from utils.export import export_weights

    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in yolov5n_pt.parent.iterdir())
    res = export_weights(yolov5n_pt, imgsz=64, verify=False, log=lambda *_: None)
    assert sorted(p.name for p in yolov5n_pt.parent.iterdir()) == before
    assert res["files"][0].resolve().is_relative_to(tmp_path / "runs" / "export")


def test_match_detections_counts_same_class_overlaps():
    from utils.export import match_detections

    a = np.zeros((1, 3, 7), np.float32)
    a[0, :, :4] = [[50, 50, 20, 20], [150, 150, 30, 30], [300, 300, 40, 40]]
    a[0, :, 4] = 0.9
    a[0, :, 5] = 1.0  # class 0
    b = a.copy()
    b[0, 0, :2] += 1.0  # moved one pixel: still a match
    b[0, 2, 5:] = [0.0, 1.0]  # class changed: not a match
    m = match_detections(a, b)
    assert (m["dets_torch"], m["dets_onnx"], m["dets_matched"]) == (3, 3, 2) and abs(m["max_box_px"] - 1) < 1e-5


def test_channel_prune_export_with_latency_allocation(tmp_path, yolov5n_pt) -> None:
    """--channel-prune 0.3 --channel-allocation latency: a smaller .pt and ONNX beside the copied weights; the
    checkpoint rebuilds its layout and has about 30% fewer conv MACs."""
    from utils.checkpoint import load_model
    from utils.sparsity.channel import ChannelGraph

    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    opt = export.parse_opt(["--weights", str(weights), "--img", "128", "--channel-prune", "0.3",
                            "--channel-allocation", "latency"])
    files = export.main(opt)
    assert files[0] == tmp_path / "yolov5n_cp30.onnx" and files[0].is_file()
    pruned, dense = load_model(tmp_path / "yolov5n_cp30.pt"), load_model(weights)
    left = ChannelGraph(pruned).macs() / ChannelGraph(dense).macs()
    assert 0.6 <= left <= 0.72
    with pytest.raises(SystemExit):
        export.parse_opt(["--weights", "a.pt", "--channel-prune", "0.3", "--channel-allocation", "fastest"])


def _uint8_vs_float(yolov5n_pt, bus_jpg, tmp_path, engine: str) -> None:
    """Issue 21: --uint8-input puts the /255 in the graph; fed the same pixels as bytes it gives the float file's
    outputs (within 1e-5) and the same detections."""
    model = load_model(str(yolov5n_pt))
    f32 = export_onnx(prepare_model(model), tmp_path / "f32.onnx", 320)
    u8 = pixel_input(Path(shutil.copy(f32, tmp_path / "u8.onnx")))
    im = letterbox(cv2.imread(str(bus_jpg)), 320, auto=False)[0][:, :, ::-1].transpose(2, 0, 1)[None]
    x8 = np.ascontiguousarray(im)
    a, e8 = load_engine(f32, engine=engine), load_engine(u8, engine=engine)
    assert e8.input_dtype == np.uint8 and a.input_dtype == np.float32
    pa, pb = a(x8.astype(np.float32) * np.float32(1 / 255.0)), e8(x8)
    np.testing.assert_allclose(pb, pa, rtol=1e-5, atol=1e-5, err_msg=engine)
    da, db = (non_max_suppression(torch.from_numpy(p))[0] for p in (pa, pb))
    assert da.shape == db.shape and len(da) and torch.allclose(da, db, rtol=1e-5, atol=1e-5), engine


def test_uint8_input_graph_equals_float_graph(yolov5n_pt, bus_jpg, tmp_path):
    _uint8_vs_float(yolov5n_pt, bus_jpg, tmp_path, "onnxruntime")


@pytest.mark.native_engines  # OpenVINO in the main pytest process makes a later fork segfault (see Makefile)
def test_uint8_input_graph_equals_float_graph_on_openvino(yolov5n_pt, bus_jpg, tmp_path):
    _uint8_vs_float(yolov5n_pt, bus_jpg, tmp_path, "openvino")
