"""Loading and exporting never touch the network, never read outside a model's folder, never leave half a file."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from models.yolo import DetectionModel
from tests.test_faults import guarded, user_env
from utils.checkpoint import CheckpointError, load_model, save_checkpoint
from utils.engines import check_onnx_file, load_engine
from utils.export import export_onnx, prepare_model


def _external_model(folder: Path, location: str) -> Path:
    """A one-Add ONNX model whose weight is stored as external data at `location` (relative to the model file)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    w.external_data.add(key="offset", value="0")
    w.external_data.add(key="length", value="4")
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [w])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.float32(7).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    if kind == "symlink":
        (folder / "weights.bin").symlink_to(secret)
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink": "weights.bin"}[kind]
    path = _external_model(folder, location)
    with pytest.raises(ValueError, match=r"model\.onnx: refused: its weights point outside the model's folder"):
        check_onnx_file(path)
    with pytest.raises(ValueError, match=location.replace(".", r"\.")):
        load_engine(path, "onnxruntime")  # every ONNX engine goes through the same check before its backend


def test_external_data_beside_the_model_is_fine(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(np.float32(7).tobytes())
    check_onnx_file(_external_model(tmp_path, "weights.bin"))  # no error


def test_stored_recipe_must_be_yaml_text(tmp_path: Path) -> None:
    """A checkpoint whose recipe is a zoo: stub or a path is refused before anything could fetch or read it."""
    model = DetectionModel("models/yolov5n.yaml")
    for recipe in ("zoo:cv/detection/yolov5-n/pytorch/ultralytics/coco/pruned-none", "recipes/yolov5n.pruned.yaml"):
        f = save_checkpoint(tmp_path / "x.pt", model, recipe=recipe)
        with pytest.raises(CheckpointError, match="not recipe YAML text"):
            load_model(f)


def test_checkpoint_with_a_zoo_recipe_makes_no_connection(tmp_path: Path, bus_jpg: Path) -> None:
    """detect.py on such a file: one line naming it, exit 2, and no connection attempt (was: SparseZoo calls)."""
    f = save_checkpoint(tmp_path / "zoo_recipe.pt", DetectionModel("models/yolov5n.yaml"),
                        recipe="zoo:cv/detection/yolov5-n/pytorch/ultralytics/coco/pruned-none")
    report = guarded(tmp_path, "detect.py", "--weights", str(f), "--source", str(bus_jpg), "--img", "64",
                     "--project", str(tmp_path / "d"), rc=2,
                     env_extra={"YOLOV5_SPARSE_ZOO_OFFLINE": "1"})
    assert report["attempts"] == []
    lines = [ln for ln in report["stderr"].splitlines() if ln.strip()]
    assert lines[-1].startswith(f"ERROR: {f}: stored recipe") and "not recipe YAML text" in lines[-1]
    assert "Traceback" not in report["stderr"]


def test_failed_export_keeps_the_previous_file_and_names_it(tmp_path: Path, monkeypatch) -> None:
    """A full disk while writing leaves the earlier export intact, no temp file behind, and says which file."""
    model = prepare_model(DetectionModel("models/yolov5n.yaml"))
    target = tmp_path / "m.onnx"
    export_onnx(model, target, 64)
    before = target.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    with pytest.raises(Exception, match=r"cannot write export m\.onnx in .*No space left on device.*previous m\.onnx "
                                        r"is intact"):
        export_onnx(model, target, 64)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_interrupted_export_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM/Ctrl-C mid-trace: nothing at the final path, no temp left (a later detect cannot read half a file)."""
    model = prepare_model(DetectionModel("models/yolov5n.yaml"))

    def interrupted(*args, **kwargs):
        Path(args[2]).write_bytes(b"partial")  # torch.onnx.export(model, x, file, ...) got part-way
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, tmp_path / "m.onnx", 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.native_engines
@pytest.mark.slow
def test_openvino_export_and_detect_send_no_telemetry(tmp_path: Path, yolov5n_pt: Path, bus_jpg: Path) -> None:
    """OpenVINO's converter phones home and writes $HOME/intel/ unless opted out; ours is opted out before import."""
    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    export = guarded(tmp_path, "export.py", "--weights", str(weights), "--img", "64", "--include", "onnx", "openvino",
                     env_extra=env)
    assert export["attempts"] == [] and (tmp_path / "yolov5n_openvino_model" / "yolov5n.xml").is_file()
    detect = guarded(tmp_path, "detect.py", "--weights", str(tmp_path / "yolov5n_openvino_model"), "--engine",
                     "openvino", "--source", str(bus_jpg), "--img", "64", "--project", str(tmp_path / "d"),
                     env_extra=env)
    assert detect["attempts"] == []
    assert not [p for p in home.rglob("*") if "intel" in p.name.lower() or "telemetry" in p.name.lower()]  # no id
    raw_home = tmp_path / "raw_home"  # control: openvino imported without our opt-out writes its client id there
    raw_home.mkdir()
    subprocess.run([sys.executable, "-c", f"import openvino as ov; ov.convert_model({str(tmp_path / 'yolov5n.onnx')!r})"],
                   env={**user_env(), "HOME": str(raw_home)}, check=True, capture_output=True, timeout=300)
    assert [p for p in raw_home.rglob("*") if "intel" in p.name.lower()]


def test_static_file_size_overrides_imgsz_with_one_warning(tmp_path: Path, yolov5n_pt: Path, bus_jpg: Path,
                                                           project_log) -> None:
    """detect on a 160x160 static ONNX with --imgsz 640 runs at 160 and says so once (was: silent)."""
    import detect

    model = prepare_model(load_model(yolov5n_pt))
    f = export_onnx(model, tmp_path / "m160.onnx", 160)
    detect.run(weights=str(f), source=str(bus_jpg), imgsz=[640, 640], project=str(tmp_path), name="d", nosave=True)
    lines = sorted({r.getMessage() for r in project_log.records if "ignored" in r.getMessage()})
    assert len(lines) == 1 and "--imgsz 640x640 ignored" in lines[0] and "fixed 160x160 input" in lines[0]
