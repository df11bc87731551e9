"""benchmark.py --data: every row's mAP is val.py's on the very file that row timed; frontier and Table 1 follow."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import benchmark
import val
from models.yolo import DetectionModel
from utils.benchmark.accuracy import add_accuracy_ratios, gzip_mb
from utils.benchmark.frontier import format_accuracy_markdown, pareto
from utils.benchmark.cli import unique_names
from utils.benchmark.variants import NotApplicable, Variant, checkpoint_variant, file_group
from utils.checkpoint import load_model
from utils.export import onnx_precision
from utils.sparsity.methods import METHODS, PruneContext
from utils.sparsity.ptq import calibration_batches, quantize_ptq

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_data_gives_val_py_map_for_each_timed_file(tmp_path: Path, yolov5n_pt: Path) -> None:
    data, img = str(ROOT / "data/coco128-local.yaml"), 160
    rep = benchmark.run(weights=[str(yolov5n_pt)], sparsity=[0, 0.5], data=data, imgsz=[img],
                        engines=["onnxruntime", "torch"], batch_size=[1, 2], warmup=1, iterations=2, workers=0,
                        project=str(tmp_path), name="b")
    save = Path(rep["save_dir"])
    rows = {(r["variant"], r["engine"], r["batch_size"]): r for r in rep["rows"]}
    assert all(r["status"] == "ok" and r["map50"] is not None for r in rows.values())
    for variant, file in (("yolov5n dense FP32", "yolov5n_dense_fp32_b1"),
                          ("yolov5n pruned50 FP32", "yolov5n_pruned50_fp32_b1")):
        onnx = next((save / "models").glob(f"{file}_*.onnx"))
        ref = val.run(data=data, weights=str(onnx), engine="onnxruntime", imgsz=img, batch_size=1, rect=False,
                      workers=0, plots=False, project=str(tmp_path), name="v")
        row = rows[variant, "onnxruntime", 1]
        assert (row["map50"], row["map50_95"]) == pytest.approx((ref["map50"], ref["map"]),
                                                                abs=1e-9)
        assert rows[variant, "onnxruntime", 2]["map50"] == row["map50"]  # the batch-2 row reuses the batch-1 mAP
        assert row["size_gzip_mb"] == pytest.approx(gzip_mb(onnx))
    ref = val.run(data=data, weights=str(yolov5n_pt), engine="torch", imgsz=img, batch_size=1, rect=False,
                  workers=0, plots=False, project=str(tmp_path), name="t")
    assert rows["yolov5n dense FP32", "torch", 1]["map50"] == pytest.approx(ref["map50"], abs=1e-6)
    dense, pruned = rows["yolov5n dense FP32", "onnxruntime", 1], rows["yolov5n pruned50 FP32", "onnxruntime", 1]
    assert dense["map50_kept"] == 1.0 and pruned["map50_kept"] == pytest.approx(pruned["map50"] / dense["map50"])
    assert pruned["sparsity"] > 0.45 and 0 < pruned["size_gzip_mb"] < dense["size_gzip_mb"]  # zeros compress
    md = (save / "results.md").read_text()
    assert "% of dense mAP50" in md and "| yolov5n pruned50 FP32 | onnxruntime | " in md
    assert (save / "frontier.png").stat().st_size > 10_000
    assert "map50_kept" in (save / "results.csv").read_text().splitlines()[0]


def _row(variant: str, engine: str, ms: float, map50: float, note: str = "") -> dict:
    return {"variant": variant, "engine": engine, "model": variant.split()[0], "batch_size": 1, "scenario": "sync",
            "status": "ok", "ms_mean": ms, "map50": map50, "map50_95": map50 / 2, "sparsity": 0.0,
            "precision": "FP32", "note": note}


def test_pareto_front_and_loaded_rows_stay_off_it() -> None:
    rows = [_row("a dense FP32", "onnxruntime", 10, 0.80), _row("b pruned60 FP32", "onnxruntime", 6, 0.78),
            _row("c pruned60 INT8", "openvino", 3, 0.70), _row("d slow", "torch", 20, 0.79),
            _row("e lucky", "torch", 2, 0.6, note="foreign CPU load 40% > 5%: timing unreliable")]
    add_accuracy_ratios(rows, "onnxruntime", "dense FP32")
    front = ["c pruned60 INT8", "b pruned60 FP32", "a dense FP32"]  # d is slower and worse than a
    assert [r["variant"] for r in pareto(rows)] == ["e lucky", *front]  # pareto() takes what it is given
    md = format_accuracy_markdown(rows, "onnxruntime:dense")
    assert "c pruned60 INT8 on openvino (3.0 ms, mAP50 0.700) -> b pruned60 FP32 on onnxruntime" in md
    assert "e lucky" not in md.split("Pareto front")[1] and "2.0 (loaded)" in md
    assert rows[1]["map50_kept"] == pytest.approx(0.78 / 0.80)
    ship = md.split("Which variant to ship")[1].split("Pareto front")[0]
    assert "- onnxruntime: b pruned60 FP32 (6.0 ms" in ship  # 97.5% kept and faster than dense
    assert "- openvino: no variant keeps 95%" in ship and "lucky" not in ship  # 87.5%; loaded rows left out


def test_training_run_files_are_named_after_their_run(tmp_path: Path) -> None:
    w = tmp_path / "runs/train/pistols_pruned/weights"
    w.mkdir(parents=True)
    for n in ("best.pt", "last.pt", "other.pt"):
        (w / n).write_bytes(b"x")
    assert [file_group(w / n) for n in ("best.pt", "last.pt", "other.pt")] == ["pistols_pruned",
                                                                               "pistols_pruned-last", "other"]


def test_qat_checkpoint_is_an_int8_variant_exported_per_engine(tmp_path: Path, yolov5n_pt: Path) -> None:
    """A QAT .pt times as INT8 with its own scales: QDQ for ONNX Runtime, ConvInteger for DeepSparse, no torch row."""
    qat = quantize_ptq(load_model(str(yolov5n_pt)), calibration_batches((64, 64)))  # FakeQuantize, as QAT leaves it
    v = checkpoint_variant(qat, "pq", 13, "pq.pt")
    assert (v.precision, v.name) == ("INT8", "pq dense INT8")
    qdq = v.weights_for("onnxruntime", 1, (64, 64), tmp_path)
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert "QuantizeLinear" in ops and "ConvInteger" not in ops and onnx_precision(qdq) == "INT8"
    ci = v.weights_for("deepsparse", 1, (64, 64), tmp_path)
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(ci)).graph.node}
    with pytest.raises(NotApplicable):
        v.weights_for("torch", 1, (64, 64), tmp_path)


def test_two_files_with_one_name_stay_apart() -> None:
    """Rows, exported files and cached accuracies are keyed by variant name: repeats are numbered."""
    vs = [Variant("exp dense FP32", "exp", 0.0), Variant("exp dense FP32", "exp", 0.0), Variant("x INT8", "x", 0.0)]
    unique_names(vs)
    assert [v.name for v in vs] == ["exp dense FP32", "exp dense FP32 #2", "x INT8"]


def test_channel_pruned_checkpoint_is_not_a_dense_baseline() -> None:
    """A channel-pruned .pt is named by the MACs it removed, so ratios and '% of dense' use the real dense model."""
    model = DetectionModel("models/yolov5n.yaml").eval()
    METHODS["channel"].prune(model, 0.5, PruneContext(imgsz=64, options={"importance": "l1"}))
    v = checkpoint_variant(model, "d_cp", 13, "test")
    tag = v.name.split()[1]
    assert v.name == f"d_cp {tag} FP32" and 45 <= int(tag[2:]) <= 55, v.name
    assert checkpoint_variant(DetectionModel("models/yolov5n.yaml").eval(), "a", 13, "t").name == "a dense FP32"
    rows = [_row("a dense FP32", "onnxruntime", 10, 0.80), _row(v.name, "onnxruntime", 5, 0.72)]
    add_accuracy_ratios(rows, "onnxruntime", "dense FP32")
    assert rows[1]["map50_kept"] == pytest.approx(0.9)
