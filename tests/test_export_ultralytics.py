"""export.py --include ultralytics: a .pt in Ultralytics YOLOv5's own (pickled) layout that predicts like our model.

Ultralytics' loaders themselves are not installed here; the README records the run with the yolov5 pip package.
"""
from __future__ import annotations

import pickletools
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import export
from models.yolo import DetectionModel
from utils.augmentations import letterbox
from utils.checkpoint import load_model, read_checkpoint, save_checkpoint
from utils.export.ultralytics import ULTRALYTICS_KEYS, export_ultralytics
from utils.sparsity.channel import channel_prune

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, yolov5n_pt) -> Path:
    folder = tmp_path_factory.mktemp("ultra")
    weights = Path(shutil.copy(yolov5n_pt, folder / "yolov5n.pt"))
    files = export.run(weights=str(weights), include=["ultralytics"])
    assert [Path(f).name for f in files] == ["yolov5n_ultralytics.pt"]  # alone: no ONNX written
    assert sorted(p.name for p in folder.iterdir()) == ["yolov5n.pt", "yolov5n_ultralytics.pt"]
    return Path(files[0])


@pytest.fixture(scope="module")
def bus(bus_jpg) -> torch.Tensor:
    img = letterbox(cv2.imread(str(bus_jpg)), 320, auto=False)[0]
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255


@torch.no_grad()
def predict(model: nn.Module, im: torch.Tensor) -> torch.Tensor:
    return model.float().eval()(im)[0]


def test_plain_torch_load_opens_it_as_a_model(exported, yolov5n_pt, bus, tmp_path) -> None:
    """What Ultralytics' attempt_load does first: unpickle (code runs), ckpt['ema'] or ckpt['model'], .float()."""
    torch.save(bus, tmp_path / "im.pt")
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); "
            f"ck = torch.load({str(exported)!r}, map_location='cpu', weights_only=False); "
            f"m = (ck.get('ema') or ck['model']).to('cpu').float().eval(); "
            f"print(type(m).__module__, type(m).__name__, m.nc, m.names[0], m.stride.tolist(), "
            f"next(m.parameters()).requires_grad); "
            f"torch.save(m(torch.load({str(tmp_path / 'im.pt')!r}))[0], {str(tmp_path / 'y.pt')!r})")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["models.yolo", "DetectionModel", "80", "person", "[8.0,", "16.0,", "32.0]", "False"]
    theirs = torch.load(tmp_path / "y.pt", weights_only=True)
    ours = predict(load_model(yolov5n_pt), bus)
    assert torch.equal(theirs, ours)  # official weights are fp16 already: saving them as fp16 loses nothing


def test_file_has_ultralytics_keys_and_class_names(exported) -> None:
    ckpt = read_checkpoint(exported)  # our safe reader: every pickled class is on the official allowlist
    assert set(ckpt) == set(ULTRALYTICS_KEYS)
    assert {ckpt[k] for k in ("ema", "updates", "optimizer", "best_fitness")} == {None} and ckpt["epoch"] == -1
    state = ckpt["model"]._state
    assert state["names"][0] == "person" and len(state["names"]) == state["nc"] == 80 and "yaml" in state
    assert "checkpoint_meta" not in state and "epoch" not in state  # ours, not Ultralytics'
    with zipfile.ZipFile(exported) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    globals_ = {a for op, a, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    assert "models.yolo Model" in globals_ and "torch HalfStorage" in globals_  # as official files name it, fp16
    assert not any(g.startswith(("utils", "models.yolo DetectionModel")) for g in globals_)


def test_our_loader_reads_it_back(exported, yolov5n_pt, bus) -> None:
    back = load_model(exported)
    assert back.names[:2] == ["person", "bicycle"] and back.stride.tolist() == [8.0, 16.0, 32.0]
    assert torch.equal(predict(back, bus), predict(load_model(yolov5n_pt), bus))


def test_channel_pruned_model_round_trips(tmp_path, bus) -> None:
    """Pickled modules keep their pruned shapes: plain torch.load runs it; our loader rebuilds it from channel_widths."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml").eval()
    channel_prune(model, channel_ratio=0.5)
    model.half().float()  # fp16-exact weights, so the fp16 file loses nothing and outputs compare exactly
    weights = save_checkpoint(tmp_path / "small.pt", model)
    file = export.run(weights=str(weights), include=["ultralytics"])[0]
    want = predict(load_model(weights), bus)
    assert torch.equal(predict(load_model(file), bus), want)
    ck = torch.load(file, map_location="cpu", weights_only=False)
    dense = sum(p.numel() for p in DetectionModel("yolov5n.yaml").parameters())
    assert sum(p.numel() for p in ck["model"].parameters()) < 0.8 * dense  # pruned shapes travel in the pickle
    assert ck["model"].yaml["channel_widths"]
    assert torch.equal(predict(ck["model"], bus), want)


def test_qat_and_foreign_layers_are_refused_before_writing(tmp_path, yolov5n_pt) -> None:
    model = load_model(yolov5n_pt)
    model.model[0].fq = type("FakeQuantize", (nn.Module,), {})()
    with pytest.raises(ValueError, match="QAT model.*INT8 ONNX"):
        export_ultralytics(model, tmp_path / "qat_ultralytics.pt")
    model = load_model(yolov5n_pt)
    model.model[0].act = nn.GELU()
    with pytest.raises(ValueError, match="layer 'model.0.act' is a torch.nn.modules.activation.GELU"):
        export_ultralytics(model, tmp_path / "gelu_ultralytics.pt")
    assert not list(tmp_path.iterdir())
