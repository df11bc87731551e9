"""benchmark.py: harness counts, pipeline stages, variants, outputs and machine report (no timing assertions)."""
from __future__ import annotations

import copy
import csv
import json
import threading

import numpy as np
import pytest
import torch

import benchmark
from models.yolo import DetectionModel
from utils.benchmark import machine, report, variants
from utils.export import onnx_precision
from utils.sparsity import blocks
from utils.benchmark.pipeline import Pipeline, fill_batch, load_images, random_images
from utils.benchmark.runner import measure_async, measure_pipelined, measure_sync, run_pipelined
from utils.benchmark.streams import NoAsync, load_stream_engine
from utils.engines import load_engine
from utils.sparsity.measure import global_sparsity, prunable_parameters

IMG = (64, 64)


class CountingStep:
    """Stands in for a pipeline: counts calls, returns fixed stage times."""

    def __init__(self) -> None:
        self.calls, self.lock = 0, threading.Lock()

    def __call__(self, images):
        with self.lock:
            self.calls += 1
        return None, (1.0, 2.0, 3.0)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return variants.calibrate_bn(DetectionModel("models/yolov5n.yaml"), size=64)


def test_sync_warmup_excluded_exactly_n_measured():
    step = CountingStep()
    m = measure_sync(step, [np.zeros((8, 8, 3), np.uint8)] * 2, warmup=3, iterations=7)
    assert step.calls == 10 and m.iterations == 7 and m.warmup == 3
    s = m.summary()
    assert s["ms_mean"] == pytest.approx(6.0) and s["pre_ms"] == 1.0 and s["engine_ms"] == 2.0 and s["post_ms"] == 3.0
    assert {"items_per_sec", "ms_median", "ms_p90", "ms_p99", "ms_std", "foreign_load"} <= s.keys()
    assert 0.0 <= s["foreign_load"] <= 1.0


def test_async_streams_share_exactly_n_measured():
    step = CountingStep()
    m = measure_async(step, [np.zeros((8, 8, 3), np.uint8)], streams=3, warmup=4, iterations=10)
    assert step.calls == 14 and m.iterations == 10 and m.streams == 3


class SleepingStep(CountingStep):
    """A batch that takes at least `s` seconds of wall time."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def __call__(self, images):
        import time
        time.sleep(self.s)
        return super().__call__(images)


@pytest.mark.parametrize("streams", [0, 2])  # 0: measure_sync
def test_time_budget_measures_at_least_one_batch(streams):
    """time_s overrides iterations: 0.2 s of 20 ms batches is about 10 batches, not iterations=1 ..."""
    images = [np.zeros((8, 8, 3), np.uint8)]

    def measure(step, time_s):
        if streams:
            return measure_async(step, images, streams=streams, warmup=0, iterations=1, time_s=time_s)
        return measure_sync(step, images, warmup=0, iterations=1, time_s=time_s)

    step = SleepingStep(0.02)
    m = measure(step, 0.2)
    per_stream = m.iterations / max(streams, 1)
    # at least 2 batches per stream unless one 20 ms sleep overran 100 ms; at most 0.2/0.02 + 1 (each sleep >= 20 ms)
    assert 2 <= per_stream <= 11 and step.calls == m.iterations, (m.iterations, step.calls)
    assert m.wall_s >= 0.2
    # ... and a budget shorter than one batch still measures exactly one (per stream at most)
    step = SleepingStep(0.05)
    m = measure(step, 0.0)
    assert 1 <= m.iterations <= max(streams, 1) and step.calls == m.iterations


def test_pipeline_on_tiny_torch_model_counts_engine_calls(tiny_model, bus_jpg):
    eng = load_engine(variants.prepare_model(tiny_model), "torch", imgsz=IMG)
    calls = []

    class Counting:
        """The engine with every call recorded (dunder calls can't be patched on an instance)."""

        def __getattr__(self, name):
            return getattr(eng, name)

        def __call__(self, x):
            calls.append(x.shape)
            return eng(x)

    pipe = Pipeline(Counting(), IMG)
    batch = fill_batch(load_images(bus_jpg), 2)  # one real picture cycled into a batch of two
    m = measure_sync(pipe, batch, warmup=2, iterations=3)
    assert len(calls) == 5 and calls[0] == (2, 3, 64, 64)
    dets, times = pipe(batch)
    assert len(dets) == 2 and all(d.shape[1] == 6 for d in dets) and len(times) == 3
    assert m.summary()["items_per_sec"] > 0


def test_inputs_real_and_random(assets):
    ims = load_images(assets / "images")
    assert len(ims) >= 2 and all(im.ndim == 3 and im.dtype == np.uint8 for im in ims)
    rnd = random_images(2, IMG)
    assert rnd[0].shape == (64, 64, 3) and not np.array_equal(rnd[0], rnd[1])
    with pytest.raises(FileNotFoundError, match="--random"):
        load_images(assets / "no_such_folder")


def test_block_prune_makes_whole_1x4_blocks(tiny_model):
    m = blocks.prune_blocks(copy.deepcopy(tiny_model), 0.6, block=4)
    assert global_sparsity(m) == pytest.approx(0.6, abs=0.01)
    w = prunable_parameters(m)["model.4.cv1.conv.weight"]
    groups = w.detach().movedim(1, -1).reshape(-1, 4)
    per_block = (groups == 0).sum(1)
    assert set(per_block.tolist()) <= {0, 4} and (per_block == 4).any()
    assert blocks.parse_block("1x4") == 4 and blocks.parse_block("none") == 1
    with pytest.raises(ValueError, match="1xN"):
        blocks.parse_block("2x2")


def test_channel_variants_are_smaller_dense_models_in_the_same_group(tiny_model):
    """--channel-prune: a cp50 model with at least half the conv MACs gone (16-channel rounding), plus its 1x4-pruned copy, ratioed to dense."""
    from utils.sparsity.channel import ChannelGraph

    out = variants.channel_variants(tiny_model, "yolov5n", [0.5], "uniform", [0.0, 0.6], [4], "global", 13, "cfg", 64)
    assert [v.name for v in out] == ["yolov5n cp50 FP32", "yolov5n cp50 pruned60-1x4 FP32"]
    assert {v.group for v in out} == {"yolov5n"} and "cp50" in out[0].source
    left = ChannelGraph(out[0].model).macs() / ChannelGraph(tiny_model).macs()
    assert 0.3 <= left <= 0.6 and out[1].sparsity == pytest.approx(0.6, abs=0.01)
    assert report.parse_baseline("onnxruntime:dense")[1] not in out[0].name  # never taken for the baseline row


def test_built_models_send_a_trained_like_number_of_boxes_to_nms():
    """A random head passes no boxes (or thousands) to NMS; calibrated, the boxes counted here from the decoded
    output match calibrate_head's target per image (default 100; 30 when asked), to within one box."""
    x = variants.head_images(320)

    def passing(model) -> float:  # boxes per image whose best class score (obj * cls) clears conf 0.25
        with torch.no_grad():
            y = model.eval()(x)[0]
        return float(((y[..., 4:5] * y[..., 5:]).amax(-1) > 0.25).sum(1).float().mean())

    torch.manual_seed(1)
    raw = DetectionModel("models/yolov5n.yaml")
    assert abs(passing(raw) - 100) > 50  # the uncalibrated head is far off, so the match below means something
    model = variants.calibrate_bn(copy.deepcopy(raw), size=320)
    assert abs(passing(model) - 100) <= 1
    with torch.no_grad():  # and, as in a trained head, objectness decides: few cells pass it that fail the score
        y = model(x)[0]
    cells = y[y[..., 4] > 0.25]
    assert len(cells) <= 1.3 * 100 * len(x)  # official yolov5n on bus.jpg / zidane.jpg: 51 / 41 and 21 / 19
    best = cells[:, 5:].amax(-1)
    assert 0.9 < float(best.median()) < 0.99  # a confident best class (yolov5n: 0.96 / 0.98)...
    assert int((cells[:, 5:] == 1.0).sum(-1).ge(2).sum()) == 0  # ...never two saturated ones engines would tie-break
    assert abs(passing(variants.calibrate_head(copy.deepcopy(model), x, candidates=30)) - 30) <= 1


def test_onnxruntime_profile_sums_node_time_per_yolov5_layer(tiny_model, tmp_path):
    """python -m utils.engines.profile: per-layer ms from ORT's own profiler, warm-up runs excluded."""
    from utils.engines.profile import format_layers, layer_of, profile_onnxruntime

    onnx_file = variants.fp32_exporter(13)(copy.deepcopy(tiny_model), tmp_path / "t.onnx", IMG, 1)
    prof = profile_onnxruntime(onnx_file, runs=3)
    assert prof["total"] > 0 and {"model.0", "model.24"} <= prof.keys()
    assert prof["total"] == pytest.approx(sum(v for k, v in prof.items() if k != "total"))
    assert layer_of("/model/model.17/cv3/conv/Conv_output_0_nchwc_kernel_time") == "model.17"
    table = format_layers({"tiny": prof})
    assert table.splitlines()[-1].startswith("| total | ") and "| model.0 | " in table


def test_machine_report_fields(tmp_path):
    rep = machine.machine_report()
    assert rep["cpu"] and rep["cores"]["logical"] >= 1 and rep["cores_used"] >= 1
    assert set(rep["isa"]) == {"avx2", "avx512", "vnni", "amx", "bf16"}
    assert {"torch", "onnxruntime", "deepsparse", "openvino"} <= rep["versions"].keys()
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Test CPU\nflags\t\t: sse avx2 avx512f\n")
    name, flags = machine.read_cpuinfo(fake)
    isa = machine.isa_support(flags)
    assert name == "Test CPU" and isa["avx512"] and not isa["vnni"]
    assert "VNNI" in machine.int8_warning({"isa": isa})
    assert machine.int8_warning({"isa": {**isa, "vnni": True}}) is None


def _row(engine, variant, bs, ips, model="m", status="ok"):
    return {"model": model, "variant": variant, "engine": engine, "batch_size": bs, "scenario": "sync",
            "items_per_sec": ips, "status": status, "note": "", "precision": "FP32"}


def test_ratio_to_baseline_per_batch_size():
    rows = [_row("onnxruntime", "m dense FP32", 1, 10.0), _row("deepsparse", "m pruned80 FP32", 1, 25.0),
            _row("onnxruntime", "m dense FP32", 64, 20.0), _row("torch", "m dense FP32", 64, 10.0),
            _row("torch", "m dense FP32", 8, 5.0), _row("torch", "m INT8", 1, None, status="n/a")]
    note = report.add_ratios(rows, "onnxruntime:dense")
    assert [r["ratio"] for r in rows] == [1.0, 2.5, 1.0, 0.5, None, None]
    assert note and "batch" in note
    assert report.parse_baseline("torch") == ("torch", "dense FP32")


def test_end_to_end_run_writes_csv_json_png(tiny_model, tmp_path, monkeypatch):
    from utils.benchmark import cli

    monkeypatch.setattr(cli, "find_int8_exporter", lambda images=None: None)  # as if no INT8 exporter could be imported
    out = benchmark.run(cfg="models/yolov5n.yaml", engines=["torch", "ort"], batch_size=[1], imgsz=[64],
                        sparsity=[0, 0.5], block=["none"], quantize=True, random=True, warmup=1, iterations=2,
                        project=str(tmp_path), name="exp")
    save = tmp_path / "exp"
    rows = out["rows"]
    assert len(rows) == 4 and all(r["status"] == "ok" and r["iterations"] == 2 and r["warmup"] == 1 for r in rows)
    base = [r for r in rows if r["engine"] == "onnxruntime" and "dense" in r["variant"]]
    assert base[0]["ratio"] == 1.0 and all(r["ratio"] > 0 for r in rows)
    assert any("INT8 rows skipped" in n for n in out["notes"])
    with open(save / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    assert {"ratio", "items_per_sec", "ms_p99", "foreign_load", "pre_ms", "post_ms"} <= table[0].keys()
    js = json.loads((save / "results.json").read_text())
    assert {"cpu", "cores", "cores_used", "isa", "versions"} <= js["machine"].keys()
    assert "foreign CPU load" in js["method"] and "trained weight values" in js["method"]
    assert (save / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (save / "results.md").read_text().splitlines()  # the README tables: variant x engine per batch size
    assert md[0].startswith("Batch 1 (latency)") and md[2].startswith("| variant | ")
    assert sum(line.startswith("| yolov5n ") for line in md) == 2 and "(1.00x)" in md[4]
    pruned = [r for r in rows if "pruned50" in r["variant"]]
    assert len(pruned) == 2 and pruned[0]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_int8_exporter_plugs_in(tmp_path, monkeypatch):
    """A registered exporter turns --quantize into INT8 rows; PyTorch reports n/a for exported-only variants."""
    seen = []
    monkeypatch.setattr(variants, "_INT8_EXPORTERS", [])  # first: registering must not leak into later tests

    @variants.register_int8_exporter
    def fake_int8(model, file, imgsz, batch_size, fmt):  # stand-in: records the call, writes a placeholder
        seen.append((type(model).__name__, imgsz, batch_size, fmt))
        file.write_bytes(b"")
        return file

    assert variants._INT8_EXPORTERS == [fake_int8]
    vs, notes = benchmark.build_variants(None, "models/yolov5n.yaml", [0], "global", ["none"], True, 13, imgsz=64)
    assert [v.precision for v in vs] == ["FP32", "INT8"] and not notes
    assert vs[1].name == "yolov5n dense INT8"
    with pytest.raises(variants.NotApplicable):
        vs[1].weights_for("torch", 1, IMG, tmp_path)
    f = vs[1].weights_for("onnxruntime", 4, IMG, tmp_path)
    assert f.suffix == ".onnx" and seen == [("DetectionModel", IMG, 4, "qdq")]
    assert vs[1].weights_for("onnxruntime", 4, IMG, tmp_path) == f and len(seen) == 1  # one export per form
    ov = vs[1].weights_for("openvino", 4, IMG, tmp_path)  # OpenVINO: Q/DQ only where convs read (its fastest)
    assert ov != f and seen[-1] == ("DetectionModel", IMG, 4, "qdq-inputs")
    cv = vs[1].weights_for("opencv", 4, IMG, tmp_path)  # OpenCV builds INT8 layers from QOperator nodes only
    assert cv not in (f, ov) and seen[-1] == ("DetectionModel", IMG, 4, "qoperator")
    ds = vs[1].weights_for("deepsparse", 4, IMG, tmp_path)  # DeepSparse gets the form it compiles: ConvInteger
    assert ds not in (f, ov, cv) and seen[-1] == ("DetectionModel", IMG, 4, "convinteger")


def test_async_is_na_for_engines_without_streams(tmp_path):
    for name in ("onnxruntime", "torch"):
        with pytest.raises(NoAsync, match="multi-stream"):
            load_stream_engine(tmp_path / "m.onnx", name, 1, IMG, None, 2)


def test_onnx_precision_detects_int8(assets):
    assert onnx_precision(assets / "reference_onnx" / "yolov5n_pistols1cls_qat_int8_416.onnx") == "INT8"


def test_bad_input_one_clear_message(tmp_path):
    with pytest.raises(ValueError, match="sparsity"):
        benchmark.run(cfg="models/yolov5n.yaml", sparsity=[1.5], random=True, project=str(tmp_path))
    with pytest.raises(ValueError, match="unknown engine"):
        benchmark.run(cfg="models/yolov5n.yaml", engines=["tensorrt"], random=True, project=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--weights"):
        benchmark.run(weights=[str(tmp_path / "nope.pt")], random=True, engines=["torch"], project=str(tmp_path))
    assert not any(tmp_path.iterdir())  # bad input leaves no empty run folder behind


def test_parse_opt_aliases():
    opt = benchmark.parse_opt(["--img", "320", "--engine", "torch", "--time", "5", "--batch-size", "1", "64"])
    assert opt.imgsz == [320] and opt.engines == ["torch"] and opt.time_s == 5.0 and opt.batch_size == [1, 64]


@pytest.mark.slow
@pytest.mark.native_engines
def test_deepsparse_openvino_sync_and_async(tmp_path):
    out = benchmark.run(cfg="models/yolov5n.yaml", engines=["deepsparse", "openvino"], imgsz=[64],
                        sparsity=[0.5], block=["1x4"], random=True, warmup=1, iterations=2,
                        scenario=["sync", "async"], project=str(tmp_path))
    by = {(r["engine"], r["scenario"]): r for r in out["rows"]}
    assert by[("deepsparse", "sync")]["status"] == "ok" and by[("openvino", "async")]["status"] == "ok"
    assert by[("deepsparse", "async")]["streams"] >= 1 and by[("openvino", "async")]["streams"] >= 1
    assert all(r["iterations"] == 2 for r in out["rows"] if r["status"] == "ok")


def test_pipelined_scenario_returns_the_plain_loops_detections(tiny_model, bus_jpg, assets):
    """Issue 21: engine on its own thread, pre/post of neighbouring batches overlapping it: same detections in the
    same order as calling the pipeline batch by batch, and measure_pipelined counts exactly N batches."""
    eng = load_engine(variants.prepare_model(tiny_model), "torch", imgsz=IMG)
    pipe = Pipeline(eng, IMG, conf_thres=0.01)
    ims = load_images(assets / "images")
    batches = [fill_batch(ims[k:] + ims[:k], 3) for k in range(len(ims))] * 3  # differing neighbours
    plain = [pipe(b)[0] for b in batches]
    piped = list(run_pipelined(pipe, batches))
    assert len(piped) == len(batches) and sum(len(d) for dets in plain for d in dets) > 0
    for a, (b, times) in zip(plain, piped):
        assert len(times) == 3 and len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    m = measure_pipelined(pipe, batches[0], warmup=2, iterations=5)
    assert m.iterations == 5 and m.summary()["items_per_sec"] > 0


def test_pipelined_engine_error_reaches_the_caller(tiny_model, bus_jpg):
    eng = load_engine(variants.prepare_model(tiny_model), "torch", imgsz=IMG)
    pipe = Pipeline(eng, IMG)
    pipe.infer = lambda x: (_ for _ in ()).throw(RuntimeError("engine broke"))
    with pytest.raises(RuntimeError, match="engine broke"):
        list(run_pipelined(pipe, [load_images(bus_jpg)] * 3))
