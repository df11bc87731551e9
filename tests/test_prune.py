"""prune.py: one registry of methods behind every script's choices; one-shot .pt files that val, export and
train.py (sparse transfer learning) take as they are."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmark
import export
import prune
import val
from tests.test_faults import tiny_data
from utils.checkpoint import load_model
from utils.sparsity.channel import ChannelGraph
from utils.sparsity.measure import global_sparsity, prunable_parameters
from utils.sparsity.methods import DATA_FREE, METHOD_CHOICES, METHODS

ROOT = Path(__file__).resolve().parents[1]


def _choices(parse_opt, flag: str, capsys) -> list[str]:
    """The choices a script's parser holds for a flag, read from argparse's own 'invalid choice' message."""
    with pytest.raises(SystemExit):
        parse_opt(["--weights", "x.pt", flag, "bogus"])
    listed = re.search(r"choose from (.*)\)", capsys.readouterr().err).group(1)
    return re.findall(r"'([^']+)'", listed)


def test_every_script_takes_its_method_choices_from_the_registry(capsys) -> None:
    assert _choices(prune.parse_opt, "--method", capsys) == list(METHOD_CHOICES)
    assert _choices(val.parse_opt, "--prune-method", capsys) == list(METHOD_CHOICES)
    assert _choices(export.parse_opt, "--prune-method", capsys) == list(METHOD_CHOICES)
    assert _choices(benchmark.parse_opt, "--method", capsys) == list(DATA_FREE)
    assert {"global", "layerwise", "obc", "blocks", "channel"} <= set(METHODS)
    assert [n for n, m in METHODS.items() if m.structured] == ["channel"]
    assert [n for n, m in METHODS.items() if m.needs_calibration] == ["obc"]


def test_prune_writes_a_sparse_checkpoint(tmp_path: Path, yolov5n_pt: Path) -> None:
    out = prune.run(weights=str(yolov5n_pt), method="global", sparsity=0.5, project=str(tmp_path), name="p")
    assert out == tmp_path / "p" / "yolov5n_global50.pt"
    model = load_model(out)
    assert global_sparsity(model) == pytest.approx(0.5, abs=2e-3)
    assert model.names[0] == "person"  # class names travel with the file


def test_blocks_method_zeroes_whole_1x4_blocks(tmp_path: Path, yolov5n_pt: Path) -> None:
    out = prune.run(weights=str(yolov5n_pt), method="blocks", sparsity=0.6, block=4, project=str(tmp_path), name="b")
    model = load_model(out)
    w = prunable_parameters(model)["model.2.cv1.conv.weight"].detach()  # (out, in=32, 1, 1): 8 blocks per row
    blocks = w.movedim(1, -1).reshape(-1, 4)
    zero_rows = (blocks == 0).all(1)
    assert zero_rows.any() and bool(((blocks == 0).any(1) == zero_rows).all())  # zeros only as whole blocks


def test_channel_method_makes_a_smaller_dense_network(tmp_path: Path, yolov5n_pt: Path) -> None:
    out = prune.run(weights=str(yolov5n_pt), method="channel", sparsity=0.3, imgsz=128, project=str(tmp_path),
                    name="c")
    assert out.name == "yolov5n_cp30.pt"
    dense, small = load_model(yolov5n_pt), load_model(out)
    ratio = ChannelGraph(small).macs() / ChannelGraph(dense).macs()
    assert 0.6 < ratio < 0.75
    assert small(torch.zeros(1, 3, 128, 128))[0].shape[-1] == 85


def test_bad_options_are_one_line_before_any_work(tmp_path: Path, yolov5n_pt: Path) -> None:
    for args, msg in ((["--method", "obc", "--sparsity", "0.5"], "needs images: pass --data"),
                      (["--method", "global", "--sparsity", "1.5"], "--sparsity must be in (0, 1)"),
                      (["--sweep", "0,0.5"], "--sweep and --sensitivity validate/calibrate on a dataset")):
        r = subprocess.run([sys.executable, "prune.py", "--weights", str(yolov5n_pt), "--project", str(tmp_path), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("ERROR:"), r.stderr[-500:]
        assert msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "exp").exists()  # no run folder for a refused command


@pytest.mark.slow
def test_sparse_transfer_learning_from_a_one_shot_checkpoint(tmp_path: Path, yolov5n_pt: Path,
                                                              coco128_dir: Path) -> None:
    """prune.py's .pt fine-tunes with the transfer recipe and keeps its zeros (issue 20, item 3)."""
    pruned = prune.run(weights=str(yolov5n_pt), method="global", sparsity=0.5, project=str(tmp_path), name="p")
    data = tiny_data(tmp_path, coco128_dir, 64)  # batch 64 = nominal batch: one optimizer step per batch
    r = subprocess.run([sys.executable, "train.py", "--weights", str(pruned), "--data", str(data), "--img", "64",
                        "--batch-size", "64", "--workers", "0", "--noplots", "--noautoanchor", "--project",
                        str(tmp_path / "t"), "--recipe", "recipes/yolov5.transfer_learn_pruned.yaml", "--recipe-args",
                        '{"num_epochs": 1, "warmup_epochs": 0.5, "weights_warmup_lr": 0.001}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    trained = load_model(tmp_path / "t/exp/weights/last.pt")
    assert global_sparsity(trained) == pytest.approx(0.5, abs=2e-3)
    before = load_model(pruned).state_dict()
    moved = [k for k, v in trained.state_dict().items() if k.endswith("conv.weight") and not torch.equal(v, before[k])]
    assert len(moved) > 40  # it trained: weights changed, zeros stayed


def test_sparse_transfer_to_another_class_count_says_the_new_head_is_dense(tmp_path: Path, yolov5n_pt: Path,
                                                                           project_log) -> None:
    """Issue 19: a 50%-sparse 80-class checkpoint fine-tuned on 1 class: Detect's 3 output convs start dense."""
    from models.yolo import DetectionModel
    from utils.train_utils import intersect_dicts
    from utils.trainer import warn_dense_new_layers

    sparse = load_model(prune.run(weights=str(yolov5n_pt), method="global", sparsity=0.5, project=str(tmp_path)))
    one_class = DetectionModel("models/yolov5n.yaml", nc=1)
    csd = intersect_dicts(sparse.state_dict(), one_class.state_dict())
    one_class.load_state_dict(csd, strict=False)
    new = warn_dense_new_layers(sparse.state_dict(), csd, one_class)
    assert new == [f"model.24.m.{i}.weight" for i in range(3)]
    assert "start DENSE" in project_log.text and "global sparsity is now 0.48" in project_log.text
    same = DetectionModel("models/yolov5n.yaml")  # same class count: everything transfers, nothing to say
    assert warn_dense_new_layers(sparse.state_dict(), intersect_dicts(sparse.state_dict(), same.state_dict()), same) == []
