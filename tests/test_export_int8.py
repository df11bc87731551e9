"""export.py --int8: a calibrated QDQ file beside the FP32 one, truthful metadata, checked on the dataset's images."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

import export
from tests.test_val import coco128_yaml
from utils.engines.metadata import read_onnx_metadata

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, yolov5n_pt: Path, coco128_dir: Path) -> tuple[list[Path], Path]:
    tmp = tmp_path_factory.mktemp("int8")
    weights = tmp / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    data = coco128_yaml(tmp, coco128_dir)
    files = export.run(weights=str(weights), imgsz=[160], int8=True, data=str(data), calib_images=8)
    return files, data


def test_int8_file_beside_the_fp32_one_is_qdq(exported) -> None:
    files, _ = exported
    fp32, int8 = files
    assert int8.name == "yolov5n_int8.onnx" and fp32.name == "yolov5n.onnx"
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and not ops & {"ConvInteger", "QLinearConv"}


def test_int8_metadata_tells_the_truth(exported) -> None:
    files, _ = exported
    meta = read_onnx_metadata(files[1])
    proto = onnx.load(str(files[1]))
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert meta["precision"] == "int8" and meta["opset"] == str(opset) == "13"
    assert meta["calibration_images"] == "8" and meta["calibration_method"] == "percentile"
    assert dims == [1, 3, 160, 160] and meta["dynamic"] == "False" and meta["batch"] == "1"
    assert meta["names"].startswith("{0: 'person'")  # class names survive quantization
    assert read_onnx_metadata(files[0])["imgsz"] == meta["imgsz"] == "[160, 160]"


def test_int8_is_verified_on_the_dataset_images(tmp_path: Path, yolov5n_pt: Path, coco128_dir: Path) -> None:
    from utils.export import export_weights

    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    data = yaml.safe_load(coco128_yaml(tmp_path, coco128_dir).read_text())
    data["train"], data["val"] = str(coco128_dir / data["train"]), str(coco128_dir / data["val"])
    lines: list[str] = []
    res = export_weights(weights, imgsz=160, int8=True, data=data, calib_images=8, verify_images=4, log=lines.append)
    assert set(res["verify_all"]) == {"yolov5n.onnx", "yolov5n_int8.onnx"}
    v8 = res["verify_all"]["yolov5n_int8.onnx"]
    assert v8["precision"] == "INT8" and v8["agrees"] and v8["dets_torch"] > 0
    assert v8["dets_matched"] >= 0.8 * v8["dets_torch"]
    assert any("yolov5n_int8.onnx in ONNX Runtime vs PyTorch on 4 dataset images" in ln for ln in lines)


@pytest.mark.parametrize("args,msg", [
    (["--int8"], "--int8 calibrates on your images: pass --data"),
    (["--int8", "--data", "DATA", "--dynamic"], "--int8 writes a static-shape file"),
    (["--int8", "--data", "EMPTY"], "no images"),
])
def test_int8_bad_input_is_one_line(tmp_path: Path, yolov5n_pt: Path, coco128_dir: Path, args, msg) -> None:
    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump({"path": str(empty), "train": "images", "val": "images",
                                                         "names": ["a"]}))
    args = [{"DATA": str(coco128_yaml(tmp_path, coco128_dir)), "EMPTY": str(tmp_path / "empty.yaml")}.get(a, a)
            for a in args]
    r = subprocess.run([sys.executable, "export.py", "--weights", str(weights), "--img", "64", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-1500:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR:") and msg in last, last
    assert not list(tmp_path.glob("*.onnx"))  # refused before anything was written


def test_onnxruntime_runs_every_quantized_conv_as_qlinearconv(exported) -> None:
    """The benchmark's INT8 rows say this: of yolov5n's 60 convs, the 57 before Detect's float head are INT8."""
    from utils.engines import load_engine

    fp32, int8 = exported[0]
    assert load_engine(int8, "onnxruntime", imgsz=160).int8_kernels() == "57/60 conv INT8 (QLinearConv)"
    assert load_engine(fp32, "onnxruntime", imgsz=160).int8_kernels() == "0/60 conv INT8 (none)"


@pytest.mark.native_engines
def test_openvino_runs_the_qdq_convs_in_u8(exported) -> None:
    from utils.engines import load_engine

    fp32, int8 = exported[0]
    assert load_engine(int8, "openvino", imgsz=160).int8_kernels() == "57/60 conv INT8 (f32 3, u8 57)"
    assert load_engine(fp32, "openvino", imgsz=160).int8_kernels().startswith("0/60 conv INT8")


@pytest.mark.native_engines
def test_qdq_inputs_format_runs_every_conv_in_u8_on_openvino(tmp_path: Path, yolov5n_pt: Path,
                                                            coco128_dir: Path) -> None:
    """--int8-format qdq-inputs --include openvino: the IR runs all 60 convs in u8 (Detect's too), the metadata says
    where the Q/DQ pairs are, and the default qdq form's IR gets a one-line hint towards it."""
    from utils.engines import load_engine
    from utils.export import export_weights

    data = coco128_yaml(tmp_path, coco128_dir)
    for fmt in ("qdq-inputs", "qdq"):
        weights = tmp_path / fmt / "yolov5n.pt"
        weights.parent.mkdir()
        shutil.copy(yolov5n_pt, weights)
        lines: list[str] = []
        res = export_weights(weights, ("onnx", "openvino"), imgsz=160, int8=True, data=str(data), calib_images=4,
                             int8_format=fmt, verify=False, log=lines.append)
        int8_ir = next(f for f in res["files"] if f.name == "yolov5n_int8_openvino_model")
        hint = any("--int8-format qdq-inputs" in line for line in lines)
        if fmt == "qdq-inputs":
            assert read_onnx_metadata(weights.with_name("yolov5n_int8.onnx"))["quantization_layout"] == "inputs"
            assert load_engine(int8_ir, imgsz=160).int8_kernels() == "60/60 conv INT8 (u8 60)" and not hint
        else:
            assert hint
