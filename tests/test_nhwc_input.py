"""--nhwc: files take uint8 NHWC BGR frames; the host only letterboxes, detections stay those of the float file."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import export
from tests.conftest import detections_by_file, writable_copy
from utils.augmentations import letterbox, letterbox_hwc, letterbox_shape
from utils.engines import load_engine
from utils.engines.metadata import read_onnx_metadata
from utils.predict import Letterboxer, Predictor


@pytest.fixture(scope="module")
def files(tmp_path_factory, yolov5n_pt):
    """The official yolov5n at 320 with the raw head: float NCHW input (the default) and --nhwc."""
    return {layout: export.run(weights=str(writable_copy(yolov5n_pt, tmp_path_factory.mktemp(layout))), imgsz=[320],
                               head="raw", nhwc=layout == "nhwc")[0] for layout in ("nchw", "nhwc")}


def test_graph_takes_frames_and_absorbs_bgr_in_the_first_conv(files):
    proto, ref = onnx.load(str(files["nhwc"])), onnx.load(str(files["nchw"]))
    inp = proto.graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 320, 320, 3]
    assert [n.op_type for n in proto.graph.node[:3]] == ["Transpose", "Cast", "Conv"]  # /255 in the conv's weights
    assert "Gather" not in {n.op_type for n in proto.graph.node[:4]}  # the flip went into the weights
    assert read_onnx_metadata(files["nhwc"])["input_layout"] == "NHWC BGR"
    first = next(n for n in ref.graph.node if n.op_type == "Conv").input[1]
    w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}[first]
    w0 = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}[first]
    np.testing.assert_array_equal(w, w0[:, ::-1] * np.float32(1 / 255.0))


def test_letterbox_hwc_equals_letterbox(bus_jpg, assets):
    for im in (cv2.imread(str(bus_jpg)), cv2.imread(str(assets / "images" / "zidane.jpg"))):
        for shape, auto in (((320, 320), False), ((640, 640), True), ((256, 416), False)):
            out = np.empty((*letterbox_shape(im.shape[:2], shape, auto), 3), np.uint8)
            ratio, pad = letterbox_hwc(im, out, shape, auto=auto)
            ref, r0, p0 = letterbox(im, shape, auto=auto)
            np.testing.assert_array_equal(out, ref)
            assert (ratio, pad) == (r0, p0)


def test_engine_gets_frames_and_gives_the_same_detections(files, bus_jpg, assets):
    """ONNX Runtime: the predictor feeds letterboxed frames; boxes equal the float file's on both sample images."""
    preds = {k: Predictor(load_engine(f), (320, 320), 0.25, 0.45) for k, f in files.items()}
    eng = preds["nhwc"].engine
    assert eng.input_layout == "NHWC BGR" and eng.input_dtype == np.uint8 and eng.imgsz == (320, 320)
    for im in (cv2.imread(str(bus_jpg)), cv2.imread(str(assets / "images" / "zidane.jpg"))):
        x, _ = preds["nhwc"].preprocess([im])
        assert x.shape == (1, 320, 320, 3) and x.dtype == np.uint8
        a, b = preds["nchw"]([im])[0], preds["nhwc"]([im])[0]
        assert a.shape == b.shape and len(a) > 0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)


def test_nchw_float_batches_still_work(files, bus_jpg):
    """val and export's checks feed NCHW RGB floats: the engine reorders them itself."""
    lb = Letterboxer()
    x, _ = lb([cv2.imread(str(bus_jpg))], (320, 320), False, 32)
    a, b = (load_engine(f)(x) for f in (files["nchw"], files["nhwc"]))
    for m, n in zip(a.maps, b.maps):
        np.testing.assert_allclose(n, m, rtol=0, atol=1e-4)


def test_int8_and_batch_files_take_frames(tmp_path, yolov5n_pt, bus_jpg):
    """Post-training QDQ gets the same rewrite (the flip lands in its int8 weights) and a batch-2 file chunks."""
    res = export.export_weights(writable_copy(yolov5n_pt, tmp_path), imgsz=160, batch_size=2, int8=True,
                                data="data/coco128-local.yaml", calib_images=4, verify_images=2, nhwc=True)
    assert res["verify_all"]["yolov5n_int8.onnx"]["agrees"]
    int8 = onnx.load(str(res["files"][1]))
    assert [n.op_type for n in int8.graph.node[:2]] == ["Transpose", "DequantizeLinear"]  # pixels = quantized input
    im = cv2.imread(str(bus_jpg))
    for f in res["files"]:
        eng = load_engine(f)
        assert eng.input_layout == "NHWC BGR" and eng.fixed_batch == 2
        dets = Predictor(eng, (160, 160), 0.25, 0.45)([im, im, im])
        assert len(dets) == 3 and len(dets[0]) > 0 and np.array_equal(dets[0], dets[2])


def test_nhwc_with_uint8_input_is_one_line(yolov5n_pt, tmp_path):
    with pytest.raises(ValueError, match="drop --uint8-input"):
        export.export_weights(writable_copy(yolov5n_pt, tmp_path), imgsz=160, uint8_input=True, nhwc=True)


def _int8_pair(tmp_path, yolov5n_pt, fmt: str) -> dict:
    """The same post-training INT8 file at 160, raw head: float NCHW input, --uint8-input and --nhwc."""
    out = {}
    for layout in ("nchw", "uint8", "nhwc"):
        out[layout] = export.export_weights(writable_copy(yolov5n_pt, tmp_path / layout), imgsz=160, int8=True,
                                            int8_format=fmt, data="data/coco128-local.yaml", calib_images=4,
                                            verify=False, head="raw", uint8_input=layout == "uint8",
                                            nhwc=layout == "nhwc")["files"][1]
    return out


@pytest.mark.parametrize("fmt", ["qdq", "qdq-inputs", "convinteger"])
def test_int8_frames_are_bit_identical(tmp_path, yolov5n_pt, bus_jpg, fmt):
    """Both INT8 forms, both pixel layouts: uint8 pixels replace the input's quantizer (scale 1/255, zero point 0)
    with no change at all."""
    out = _int8_pair(tmp_path, yolov5n_pt, fmt)
    for layout in ("uint8", "nhwc"):
        assert "QuantizeLinear" not in [n.op_type for n in onnx.load(str(out[layout])).graph.node[:2]]
    x, _ = Letterboxer()([cv2.imread(str(bus_jpg))], (160, 160), False, 32)
    a, b, c = (load_engine(out[k])(x) for k in ("nchw", "uint8", "nhwc"))
    assert load_engine(out["uint8"]).input_dtype == np.uint8
    for m, n, o in zip(a.maps, b.maps, c.maps):
        np.testing.assert_array_equal(n, m)
        np.testing.assert_array_equal(o, m)


@pytest.mark.native_engines
@pytest.mark.parametrize("engine", ["openvino", "deepsparse"])
def test_frames_on_native_engines(files, bus_jpg, engine):
    dets = detections_by_file(files, engine, 320, bus_jpg)
    a, b = dets["nchw"], dets["nhwc"]
    assert load_engine(files["nhwc"], engine).input_layout == "NHWC BGR" and a.shape == b.shape and len(a) > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)


@pytest.mark.native_engines
def test_convinteger_pixels_on_deepsparse(tmp_path, yolov5n_pt, bus_jpg):
    """DeepSparse's INT8 form with --uint8-input and --nhwc: the same detections as with float input."""
    files = _int8_pair(tmp_path, yolov5n_pt, "convinteger")
    im = cv2.imread(str(bus_jpg))
    a, b, c = (Predictor(load_engine(f, "deepsparse", num_threads=1), (160, 160), 0.25, 0.45)([im])[0]
               for f in files.values())
    assert a.shape == b.shape == c.shape and len(a) > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
    np.testing.assert_allclose(c, a, rtol=0, atol=1e-3)
