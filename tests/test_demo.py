"""make demo's pipeline at toy scale: dense training, pruning recipe, one-shot comparison, export, detect."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import yaml

import demo


@pytest.mark.slow
def test_demo_pipeline_toy_scale(tmp_path: Path) -> None:
    s = demo.run(out=str(tmp_path / "demo"), dataset=str(tmp_path / "shapes"), imgsz=64, epochs=1, prune_epochs=2,
                 sparsity=0.5, oneshot_levels=(0.5,), n_train=32, n_val=8, batch_size=16, speed=False)
    out = Path(s["out"])
    stages = [r["stage"] for r in s["rows"]]
    assert stages == ["dense yolov5n", "one-shot 50%", "GMP 50% + fine-tune"]
    dense, shot, pruned = s["rows"]
    assert dense["sparsity"] < 0.01 and abs(shot["sparsity"] - 0.5) < 0.01
    assert (dense["epochs"], shot["epochs"], pruned["epochs"]) == (1, 1, 3)
    assert abs(pruned["sparsity"] - 0.5) < 0.01  # measured on the saved best.pt of the recipe run
    assert (out / "prune" / "weights" / "best.pt").is_file() and (out / "train" / "results.csv").is_file()
    with open(out / "prune" / "results.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 2  # the recipe's epochs, not --epochs
    assert abs(s["export"]["onnx_sparsity"] - 0.5) < 0.02 and Path(s["export"]["onnx"]).is_file()
    assert len(list(Path(s["export"]["detect_dir"]).glob("*.jpg"))) == 4
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["stage"] for r in table] == stages and set(table[0]) == set(demo.SUMMARY_FIELDS)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["total"]["wall_s"] > 0 and saved["total"]["cpu_s"] > 0


def test_cli_defaults_and_bad_values() -> None:
    opt = demo.parse_opt([])
    assert (opt.imgsz, opt.epochs, opt.prune_epochs, opt.sparsity) == (128, 6, 4, 0.7)
    assert (opt.oneshot_levels, opt.export, opt.speed) == ([0.3, 0.5, 0.7], True, True)
    opt = demo.parse_opt(["--img", "96", "--oneshot", "--no-export", "--prune-epochs", "3"])
    assert (opt.imgsz, opt.oneshot_levels, opt.export, opt.prune_epochs) == (96, [], False, 3)
    for bad in (["--sparsity", "1.5"], ["--prune-epochs", "1"], ["--epochs", "0"]):
        with pytest.raises(SystemExit):
            demo.parse_opt(bad)


def test_demo_hyp_has_every_trainer_key() -> None:
    """hyp.demo.yaml changes values of hyp.scratch-low.yaml, never its key set (the trainer reads every key)."""
    hyps = demo.HYP.parent
    demo_hyp = yaml.safe_load(demo.HYP.read_text())
    assert set(demo_hyp) == set(yaml.safe_load((hyps / "hyp.scratch-low.yaml").read_text()))
    assert all(isinstance(v, (int, float)) for v in demo_hyp.values())


def test_summary_files_and_table(tmp_path: Path) -> None:
    rows = [demo.row("dense yolov5n", 6, tmp_path / "a.pt", 0.0, {"map50": 0.95, "map": 0.7}, 10.0),
            demo.row("GMP 60% + fine-tune", 10, tmp_path / "b.pt", 0.6001, {"map50": 0.93, "map": 0.66}, 5.0)]
    s = {"out": str(tmp_path), "rows": rows, "seconds": {"dense": 10.0},
         "total": {"wall_s": 90.0, "cpu_s": 150.0, "load_start": [1.0, 1, 1], "load_end": [2.0, 2, 2]}}
    demo.save_summary(s, tmp_path)
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["stage"], float(r["sparsity"]), float(r["map50"])) for r in table] == [
        ("dense yolov5n", 0.0, 0.95), ("GMP 60% + fine-tune", 0.6001, 0.93)]
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    level = demo.LOGGER.level
    demo.LOGGER.addHandler(handler)
    demo.LOGGER.setLevel(logging.INFO)
    try:
        demo.print_summary(s)
    finally:
        demo.LOGGER.removeHandler(handler)
        demo.LOGGER.setLevel(level)
    text = "\n".join(lines)
    assert "GMP 60% + fine-tune 10 0.600 0.930 0.660 5.0" in " ".join(text.split())
    assert "1.5 min wall, 2.5 min CPU" in text


@pytest.mark.slow
@pytest.mark.native_engines
def test_demo_speed_step_int8_map_and_table(tmp_path: Path) -> None:
    """Step 6: FP32 + QDQ INT8 per model, mAP50 of each, batch-1 end-to-end ms on ORT and OpenVINO, a conclusion."""
    from models.yolo import DetectionModel
    from utils import synthetic
    from utils.checkpoint import save_checkpoint

    data = synthetic.run(out=tmp_path / "shapes", n_train=16, n_val=8, imgsz=64, seed=0)
    names = yaml.safe_load(data.read_text())["names"]
    weights = save_checkpoint(tmp_path / "w.pt", DetectionModel("models/yolov5n.yaml", nc=len(names)), names=names)
    sp = demo.int8_and_speed({"dense": (weights, 0.5)}, data, tmp_path, 64, speed_imgsz=96)
    assert [r["model"] for r in sp["rows"]] == ["dense FP32", "dense INT8"]
    assert all(r["onnxruntime"] > 0 and r["openvino"] > 0 for r in sp["rows"])
    assert sp["rows"][0]["map50"] == 0.5 and 0 <= sp["rows"][1]["map50"] <= 1  # FP32 from training, INT8 measured
    text = demo.speed_text(sp)
    assert "dense INT8" in text and "x)" in text and "onnxruntime ms" in text and "batch 1, 96 px" in text
