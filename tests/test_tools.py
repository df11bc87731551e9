"""Smoke tests of the experiment scripts in tools/: each run() at tiny settings returns sensible numbers."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT
from tests.test_val import coco128_yaml
from tools import channel_allocations, head_stem, input_layout, ort_spinning, qdq_layouts, time_oneshot

YOLOV5N = str(ROOT / "models/yolov5n.yaml")
TIMES = ("e2e_ms", "pre_ms", "engine_ms", "post_ms")


def assert_times(summary: dict) -> None:
    """Every median is a positive number of milliseconds, end to end at least the engine call."""
    assert all(summary[k] > 0 for k in TIMES), summary
    assert summary["e2e_ms"] >= summary["engine_ms"]


def test_ort_spinning_times_dense_and_pruned_with_and_without_spinning(tmp_path: Path, bus_jpg: Path) -> None:
    res = ort_spinning.run(cfg=YOLOV5N, imgsz=96, runs=2, warmup=1, threads=1, source=str(bus_jpg),
                           save_dir=str(tmp_path))
    assert set(res) == {"spin=1", "spin=0"}
    for r in res.values():
        assert set(r) == {"dense", "cp50", "ratio"}
        assert_times(r["dense"])
        assert_times(r["cp50"])
        assert r["ratio"] == r["dense"]["e2e_ms"] / r["cp50"]["e2e_ms"]
    assert (tmp_path / "dense.onnx").is_file() and (tmp_path / "cp50.onnx").is_file()


def test_ort_spinning_sessions_differ_from_the_engine_only_in_spinning(tmp_path: Path) -> None:
    from tools.common import export_b1, random_model

    file = export_b1(random_model(YOLOV5N, 64), tmp_path / "m.onnx", 64)
    for spin, value in ((True, "1"), (False, "0")):
        opts = ort_spinning.spin_pipeline(file, spin, 64, threads=1).engine.session.get_session_options()
        assert opts.get_session_config_entry(ort_spinning.SPINNING) == value
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


def test_channel_allocations_prunes_and_times_each_allocation(tmp_path: Path, bus_jpg: Path) -> None:
    res = channel_allocations.run(cfg=YOLOV5N, imgsz=96, runs=2, warmup=1, threads=1, source=str(bus_jpg),
                                  save_dir=str(tmp_path))
    assert list(res) == ["dense", "uniform", "latency"]
    assert res["dense"]["macs_left"] == 1.0 and res["dense"]["speedup"] == 1.0
    for name in ("uniform", "latency"):
        r = res[name]
        assert 0.3 < r["macs_left"] < 0.75, r["macs_left"]  # 50% asked; channel steps round the uniform widths
        assert set(r["widths"]) == set(channel_allocations.GROUPS) and r["widths"]["model.0"] <= 16
        assert r["speedup"] == res["dense"]["e2e_ms"] / r["e2e_ms"]
        assert Path(r["file"]).is_file()
    for r in res.values():
        assert_times(r)


def test_time_oneshot_obc_phases(tmp_path: Path, coco128_dir: Path) -> None:
    data = coco128_yaml(tmp_path, coco128_dir, n=4)
    out = time_oneshot.run(weights=YOLOV5N, data=str(data), imgsz=64, calib_images=4, sparsity=0.5, method="obc")
    for key in ("calibration_s", "sensitivity_s", "prune_s", "total_s", "cpu_s"):
        assert out[key] > 0, (key, out[key])
    assert abs(out["total_s"] - out["calibration_s"] - out["sensitivity_s"] - out["prune_s"]) < 1e-6
    assert abs(out["reached"] - 0.5) < 0.02
    assert len(out["load_before"]) == 3 and out["method"] == "obc"


def test_parse_opt_defaults_reproduce_the_recorded_runs() -> None:
    """yolov5s at 640 with the old scripts' call counts (50 and 60 calls, the first 5 dropped)."""
    for tool, calls in ((ort_spinning, 50), (channel_allocations, 60)):
        opt = tool.parse_opt([])
        assert Path(opt.cfg).name == "yolov5s.yaml" and opt.imgsz == 640 and opt.fraction == 0.5
        assert opt.runs + opt.warmup == calls and opt.warmup == 5
    opt = time_oneshot.parse_opt(["--cfg", YOLOV5N, "--img", "128"])
    assert opt.weights == YOLOV5N and opt.imgsz == 128 and opt.method == "obc" and opt.calib_images == 128


def test_head_stem_raw_head_and_space_to_depth_keep_outputs(tmp_path: Path, yolov5n_pt: Path) -> None:
    """Both layouts give the same results as the originals (the timings are what the tool is for)."""
    rows = head_stem.run(weights=[str(yolov5n_pt)], cfg=[], imgsz=128, runs=2, warmup=1, threads=1,
                         save_dir=str(tmp_path))
    (r,) = rows
    assert r["same_detections"] and r["decoded_dense_equal"] and r["stem_max_abs_diff"] < 1e-3
    assert_times(r["head"]["decoded"])
    assert_times(r["head"]["raw"])
    assert r["stem_ms"]["raw"] > 0 and (tmp_path / "results.json").is_file()


def test_input_layout_times_three_layouts_with_the_same_detections(tmp_path: Path, yolov5n_pt: Path) -> None:
    """decoded, raw and raw + NHWC frames of a trained model and its INT8 twin agree (timings are the tool's job)."""
    rows = input_layout.run(weights=[str(yolov5n_pt)], quantize=True, imgsz=128, runs=2, warmup=1, threads=1,
                            save_dir=str(tmp_path))
    assert [r["variant"] for r in rows] == ["yolov5n dense FP32", "yolov5n dense INT8"]
    for r in rows:
        assert all(r["same_detections"].values()), r["same_detections"]
        for layout in input_layout.LAYOUTS:
            assert_times(r["times"][layout])
    assert (tmp_path / "results.json").is_file()


def test_qdq_layouts_writes_each_placement_and_reads_the_fused_kernels(tmp_path: Path, yolov5n_pt: Path) -> None:
    """ONNX Runtime fuses QLinearConv for Q/DQ on every activation, none for conv inputs only (the tool's point)."""
    (row,) = qdq_layouts.run(weights=str(yolov5n_pt), layouts=("all", "inputs+head"), engines=("onnxruntime",),
                             imgsz=128, calib_images=2, runs=1, warmup=0, save_dir=str(tmp_path))
    assert set(row["ms"]) == {"fp32", "all", "inputs+head"} and all(v > 0 for v in row["ms"].values())
    assert row["int8_kernels"]["all"].startswith("57/60") and row["int8_kernels"]["inputs+head"].startswith("0/60")
    assert (tmp_path / "results.json").is_file()
