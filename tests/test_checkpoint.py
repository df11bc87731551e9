"""Checkpoints load without running pickled code; ours are tensors-only, atomic, and round-trip."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint


def test_official_checkpoint_loads(yolov5n_pt: Path) -> None:
    model = load_model(yolov5n_pt)
    assert len(model.names) == 80 and model.names[0] == "person" and model.names[5] == "bus"
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert sum(p.numel() for p in model.parameters()) == 1872157
    assert next(model.parameters()).dtype == torch.float32 and not model.training


class _Payload:
    """Pickles as a call to os.system: what a booby-trapped checkpoint looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "epoch": 1}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(evil)
    assert not marker.exists()


def test_malicious_payload_inside_allowlisted_module(tmp_path: Path) -> None:
    """A payload hidden in the state of an allowlisted class name is still refused."""
    marker = tmp_path / "pwned2"
    evil = tmp_path / "evil2.pt"

    class Model:  # pickles under a foreign name; the REDUCE to os.system is what must be refused
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    Model.__module__, Model.__qualname__ = "models.yolo", "Model"
    torch.save({"model": Model()}, evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()


def test_plain_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned3"
    evil = tmp_path / "evil3.pt"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("hello, I am text")
    with pytest.raises(CheckpointError, match="notes.pt: not a PyTorch checkpoint"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path / "missing.pt")


def test_our_format_round_trip_weights_only(tmp_path: Path) -> None:
    model = DetectionModel("yolov5n.yaml", nc=2).eval()
    model.names = ["cat", "dog"]
    path = save_checkpoint(tmp_path / "w" / "last.pt", model, epoch=7, recipe="modifiers: []")
    raw = torch.load(path, weights_only=True)  # plain tensors and metadata only
    assert raw["format"] == "yolov5-sparse" and raw["epoch"] == 7 and raw["names"] == ["cat", "dog"]
    loaded = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model(x)[0], loaded(x)[0])
    assert not list(path.parent.glob("*.tmp")), "temp files must be renamed away"


def test_other_architecture_is_named(tmp_path: Path) -> None:
    model = DetectionModel("yolov5n.yaml")
    path = save_checkpoint(tmp_path / "n.pt", model)
    ckpt = load_checkpoint(path)
    ckpt["yaml"] = DetectionModel("yolov5s.yaml").yaml  # weights of n, yaml of s
    torch.save(ckpt, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(tmp_path / "mixed.pt")


def test_truncated_checkpoint(tmp_path: Path, yolov5n_pt: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(yolov5n_pt.read_bytes()[:100000])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_model(cut)
