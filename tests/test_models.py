"""Model configs reproduce the official YOLOv5 v6/v7 table (parameters, GFLOPs at 640) and the Ultralytics API."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from models.yolo import DetectionModel, Model
from utils.assets import ROOT

# Official README table (v6.2/v7.0): params (M), GFLOPs at 640 (2 x MACs), counted on the fused model.
OFFICIAL = {"n": (1.9, 4.5), "s": (7.2, 16.5), "m": (21.2, 49.0), "l": (46.5, 109.1), "x": (86.7, 205.7)}
# Exact fused parameter counts of the official checkpoints.
EXACT_PARAMS = {"n": 1867405, "s": 7225885, "m": 21172173, "l": 46533693, "x": 86705005}


@pytest.mark.parametrize("size", list(OFFICIAL))
def test_official_table(size: str) -> None:
    model = DetectionModel(f"models/yolov5{size}.yaml", nc=80).eval().fuse()
    info = model.info(imgsz=640)
    params_m, gflops = OFFICIAL[size]
    assert info["parameters"] == EXACT_PARAMS[size]
    assert round(info["parameters"] / 1e6, 1) == params_m  # the table rounds to 0.1 M
    assert abs(info["gflops"] - gflops) / gflops < 0.01


def test_api_alias_and_forward_shapes() -> None:
    assert Model is DetectionModel
    model = DetectionModel("yolov5n.yaml", nc=3)
    assert model.nc == 3 and model.stride.tolist() == [8.0, 16.0, 32.0]
    raw = model.train()(torch.zeros(2, 3, 64, 96))
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]
    pred, _ = model.eval()(torch.zeros(2, 3, 64, 96))
    assert pred.shape == (2, 3 * (96 + 24 + 6), 8)


def test_fuse_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml").eval()
    # Default BN (mean 0, var 1, weight 1, bias 0) lets a fuse that drops running_mean, running_var, eps or the
    # affine pass unnoticed: give every BN distinct non-trivial statistics first (eps large enough to matter).
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) > 50
    with torch.no_grad():
        for bn in bns:
            c = bn.num_features
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.eps = 0.1  # 0.1 against var in [0.5, 2]: a fuse without eps is off by up to 10% per layer
            assert c == bn.running_mean.numel()
    x = torch.rand(1, 3, 64, 64)
    before = model(x)[0]
    after = model.fuse()(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # every BN was folded
    assert torch.allclose(before, after, rtol=1e-3, atol=1e-3)


def test_layer_names_match_recipes() -> None:
    names = dict(DetectionModel("yolov5s.yaml").named_parameters())
    for key in ("model.0.conv.weight", "model.2.m.0.cv1.conv.weight", "model.9.cv2.conv.weight", "model.24.m.0.weight"):
        assert key in names


def test_summary_cli() -> None:
    out = subprocess.run([sys.executable, "models/yolo.py", "--cfg", "yolov5n.yaml", "--fuse"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "1867405 parameters" in out and "4.5 GFLOPs" in out


def test_unknown_module_is_named() -> None:
    cfg = DetectionModel("yolov5n.yaml").yaml
    cfg["backbone"][1][2] = "Bogus"
    with pytest.raises(ValueError, match="layer 1: unknown module 'Bogus'"):
        DetectionModel(cfg)
