"""verify_onnx must tell a broken ONNX file from a good one (it compares ONNX Runtime with PyTorch)."""
from __future__ import annotations

import shutil

import onnx
import pytest
from onnx import numpy_helper

from utils.checkpoint import load_model
from utils.export import export_weights, load_image_batch, verify_onnx

IMGSZ = (320, 320)


@pytest.fixture(scope="module")
def exported(yolov5n_pt, bus_jpg, tmp_path_factory):
    """yolov5n exported at 320, the unfused model it came from, bus.jpg as a batch, and copies of the file with the
    first conv's weights scaled by 10 and by 2 (what a wrong BN fold or a corrupt initializer would leave)."""
    d = tmp_path_factory.mktemp("verify")
    weights = d / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    good = export_weights(weights, ("onnx",), imgsz=IMGSZ, verify=False, log=lambda *_: None)["files"][0]
    broken = {k: scaled_first_conv(good, k, d / f"x{k}.onnx") for k in (10, 2)}
    return load_model(str(weights), fuse=False), good, broken, load_image_batch(bus_jpg, IMGSZ)


def scaled_first_conv(src, factor: float, dst):
    proto = onnx.load(str(src))
    inits = {t.name: t for t in proto.graph.initializer}
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits)
    w = inits[first_conv.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * factor, w.name))
    onnx.save(proto, str(dst))
    return dst


def test_verify_reports_agreement_for_the_good_file(exported):
    model, good, _, batch = exported
    v = verify_onnx(model, good, batch)
    assert v["dets_torch"] >= 3 and v["dets_matched"] == v["dets_torch"] == v["dets_onnx"]
    assert v["max_rel"] < 1e-3


def test_verify_reports_disagreement_for_a_broken_file(exported):
    model, good, broken, batch = exported
    v = verify_onnx(model, broken[10], batch)
    assert v["dets_torch"] >= 3
    assert v["dets_matched"] < v["dets_torch"]  # detections the PyTorch model makes are lost or moved
    assert v["max_rel"] > 0.05 and v["max_abs"] > 1.0  # far beyond float rounding (< 1e-3 for the good file)
    # x2: every detection still matches at IoU >= 0.5, so only the raw difference shows the file is wrong; this is
    # why a verdict must look at max_rel for float files, not only at the detection match rate
    v = verify_onnx(model, broken[2], batch)
    assert v["max_rel"] > 0.05 and v["max_box_px"] > 1.0


def test_verify_gives_a_verdict(exported):
    model, good, broken, batch = exported
    assert verify_onnx(model, good, batch)["agrees"] is True
    assert verify_onnx(model, broken[10], batch)["agrees"] is False
    assert verify_onnx(model, broken[2], batch)["agrees"] is False  # detections match, raw outputs do not


def test_export_has_a_verify_strict_option():
    import export

    assert export.parse_opt(["--weights", "a.pt", "--verify-strict"]).verify_strict is True
