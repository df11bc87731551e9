"""--threads reaches every engine (torch, ONNX Runtime intra-op, OpenVINO, DeepSparse cores) from every script."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import benchmark
import detect
import train
import val
from utils.benchmark.machine import format_machine, machine_report
from utils.engines import load_engine

INT8_ONNX = "reference_onnx/yolov5n_pistols1cls_qat_int8_416.onnx"


class Stop(Exception):
    """Raised by the spy once it has seen the engine arguments: the rest of the run is not under test."""


@pytest.fixture()
def torch_threads():
    """Scripts set torch's process-wide thread count; put it back for the other tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_onnxruntime_engine_honours_num_threads(assets: Path) -> None:
    eng = load_engine(assets / INT8_ONNX, "onnxruntime", imgsz=416, num_threads=1)
    assert eng.threads() == 1 and eng.info()["threads"] == 1
    assert eng.session.get_session_options().intra_op_num_threads == 1


def test_torch_engine_honours_num_threads(yolov5n_pt: Path, torch_threads) -> None:
    assert load_engine(yolov5n_pt, "torch", imgsz=320, num_threads=1).threads() == 1 == torch.get_num_threads()


@pytest.mark.parametrize("script", [detect, val])
def test_threads_flag_reaches_load_engine(script, monkeypatch, yolov5n_pt: Path, tmp_path: Path) -> None:
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(script, "load_engine", spy)
    with pytest.raises(Stop):
        script.main(script.parse_opt(["--weights", str(yolov5n_pt), "--threads", "1", "--project", str(tmp_path),
                                      "--data", "data/coco128-local.yaml"]))
    assert seen["num_threads"] == 1


def test_threads_flag_in_benchmark_and_its_machine_section() -> None:
    opt = benchmark.parse_opt(["--threads", "1"])
    assert opt.num_cores == 1 and benchmark.parse_opt(["--num-cores", "2"]).num_cores == 2  # old name still works
    assert format_machine(machine_report(opt.num_cores)).split("; ")[1].startswith("1 cores used")


def test_train_threads_sets_torch(monkeypatch, yolov5n_pt: Path, tmp_path: Path, torch_threads) -> None:
    class FakeTrainer:
        def __init__(self, *args) -> None:
            pass

        def setup(self) -> "FakeTrainer":
            return self

        def fit(self) -> dict:
            return {"threads": torch.get_num_threads()}

    monkeypatch.setattr(train, "Trainer", FakeTrainer)
    opt = train.parse_opt(False, ["--weights", str(yolov5n_pt), "--data", "coco128-local.yaml", "--threads", "1",
                                  "--project", str(tmp_path)])
    assert train.main(opt) == {"threads": 1}


@pytest.mark.parametrize("script", [detect, val])
def test_bad_threads_is_one_line(script, yolov5n_pt: Path) -> None:
    with pytest.raises(ValueError, match=r"--threads 0: must be at least 1"):
        script.main(script.parse_opt(["--weights", str(yolov5n_pt), "--threads", "0"]))
