"""benchmark.py's argument checks, variant assembly and printed method, kept out of the thin script."""
from __future__ import annotations

from pathlib import Path

from models.yolo import DetectionModel
from utils.assets import asset
from utils.checkpoint import load_model
from utils.engines import engine_name
from utils.sparsity.blocks import parse_block
from utils.export.int8 import calibration_images

from .accuracy import AccuracyProbe
from .suite import Settings
from .variants import (
    Variant,
    calibrate_bn,
    channel_variants,
    data_recalibration,
    file_variant,
    find_int8_exporter,
    int8_variants,
    pruned_models,
)

SCENARIOS = ("sync", "async", "pipelined")
DEFAULT_WEIGHTS = "weights/yolov5n.pt"
NO_INT8 = ("INT8 rows skipped: no INT8 exporter could be imported (utils.sparsity.ptq needs sparseml; "
           "see utils.benchmark.variants.register_int8_exporter); to time an existing INT8 model pass its .onnx "
           "with --weights")


def validate(engines: list[str], batch_sizes: list[int], sparsity: list[float] | None, scenarios: list[str],
             warmup: int, iterations: int, time_s: float | None) -> tuple[list[str], list[str]]:
    """Canonical engine and scenario names; ValueError with the fix for anything out of range."""
    names = list(dict.fromkeys(engine_name("x", e) for e in engines))  # unknown names raise with the valid list
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        raise ValueError(f"--scenario {bad}: choose from {', '.join(SCENARIOS)}")
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"--batch-size {list(batch_sizes)}: batch sizes must be >= 1")
    if sparsity and any(not 0 <= s < 1 for s in sparsity):
        raise ValueError(f"--sparsity {sparsity}: each level must be in [0, 1), e.g. --sparsity 0 0.5 0.8")
    if warmup < 0 or (time_s is None and iterations < 1) or (time_s is not None and time_s <= 0):
        raise ValueError("--warmup must be >= 0 and --iterations >= 1 (or --time > 0)")
    return names, list(dict.fromkeys(scenarios))


def _base_models(weights: list[str] | None, cfg: str | None, sparsity: list[float] | None, calib_size: int):
    """(group, model, source) to prune, plus user files timed as they are."""

    if not weights and not cfg:
        weights = [str(asset(DEFAULT_WEIGHTS))]
    bases, files = [], []
    if cfg:
        if not Path(cfg).is_file():
            raise FileNotFoundError(f"--cfg {cfg}: model yaml not found; e.g. --cfg models/yolov5s.yaml")
        model = calibrate_bn(DetectionModel(cfg), calib_size)
        bases.append((Path(cfg).stem, model, f"{cfg} (random init, BN calibrated)"))
    for w in weights or []:
        p = Path(w)
        if not p.exists():
            raise FileNotFoundError(f"--weights {w}: file not found")
        if sparsity and p.suffix in (".pt", ".pth"):
            bases.append((p.stem, load_model(str(p)), str(p)))
        else:
            files.append(p)
    return bases, files


def build_variants(weights: list[str] | None, cfg: str | None, sparsity: list[float] | None, method: str,
                   block: list[str], quantize: bool, opset: int, imgsz: int = 640,
                   channel_prune: list[float] | None = None, channel_allocation: str = "uniform",
                   probe: AccuracyProbe | None = None, head: str = "decoded",
                   pixels: str | None = None) -> tuple[list[Variant], list[str]]:
    """Dense/pruned FP32 copies of each base model (and of its channel-pruned copies), user files as given, INT8
    twins when an exporter exists (calibrated on --data train images when given)."""
    calib_size = imgsz  # built models get their detection head calibrated at the benchmark's size
    bases, files = _base_models(weights, cfg, sparsity or channel_prune, calib_size)
    calib = calibration_images(probe.data_dict, 128) if probe else None  # the images export.py --int8 takes
    calibrate = data_recalibration(calib, calib_size) if calib else None  # trained heads stay as trained
    blocks = list(dict.fromkeys(parse_block(b) for b in block))
    levels = sorted(set(sparsity or [0.0]))
    variants: list[Variant] = []
    for group, model, source in bases:
        variants += pruned_models(model, group, levels, blocks, method, opset, source, calib_size, calibrate)
        if channel_prune:
            variants += channel_variants(model, group, channel_prune, channel_allocation, sorted(set(levels) | {0.0}),
                                         blocks, method, opset, source, calib_size, calibrate)
    variants += [file_variant(p, opset) for p in files]
    notes = []
    if quantize:
        exporter = find_int8_exporter(calib)
        if exporter is None:
            notes.append(NO_INT8)
        else:
            variants += int8_variants(variants, exporter)
    unique_names(variants)
    for v in variants:
        v.head, v.pixels = head, pixels
    if any(b > 1 for b in blocks) and not bases:
        notes.append("--block applies to models pruned here (--cfg, or .pt with --sparsity); files are timed as given")
    return variants, notes


def unique_names(variants: list[Variant]) -> None:
    """Two files may name the same (runs/a/exp/weights/best.pt and runs/b/exp/weights/best.pt): number the repeats,
    since rows, exported files and cached accuracies are keyed by name."""
    seen: dict[str, int] = {}
    for v in variants:
        seen[v.name] = seen.get(v.name, 0) + 1
        if seen[v.name] > 1:
            v.name = f"{v.name} #{seen[v.name]}"


def method_text(s: Settings, scenarios: list[str]) -> str:
    """The measurement method, printed before the table and stored in results.json."""
    h, w = s.imgsz
    measured = f"{s.time_s:g} s of measured batches" if s.time_s else f"{s.iterations} measured batches"
    return "\n".join([
        "Method: end to end per batch; each stage timed separately (perf_counter), plus their total:",
        f"  pre-process : letterbox every image to {h}x{w} (no rect shrink), "
        + (f"uint8 {s.pixels} (files built here take pixels: the graph does the rest; given files as they take)"
           if s.pixels else "BGR->RGB, HWC->CHW, /255 float32"),
        "  engine      : one engine call on the whole batch (static engines compiled for this batch size)",
        f"  post-process: NMS (conf {s.conf_thres}, IoU {s.iou_thres}) + rescale boxes to each original image",
        "  Detect's decode: " + ("on the host, only for cells whose objectness passes conf (--head raw: the ONNX files "
                                 "built here end at Detect's convs; PyTorch and given files decode in the model)"
                                 if s.head == "raw" else "inside the model (--head decoded)"),
        f"  {s.warmup} warm-up batches (not recorded), then {measured}; items/sec = images / measured wall time;",
        "  ms/batch mean, median, p90, p99, std over the measured batches; batch 1 = latency, 64 = throughput.",
        f"  scenario {'/'.join(scenarios)}: sync = one request at a time; async = several streams in parallel "
        "(DeepSparse multi_stream, OpenVINO THROUGHPUT hint; n/a for PyTorch and ONNX Runtime); pipelined = one",
        "  engine call at a time on its own thread while pre-processing of the next batch and post-processing of the",
        "  previous one run on the caller's (items/sec counts; the stage times overlap).",
        f"  threads per engine: {s.num_cores or 'engine default'}; rows run one after another in this process.",
        "  foreign CPU load = (busy time of all CPUs from /proc/stat - this process's CPU time) / (wall x CPUs),",
        "  during the measured window; rows above 5% are flagged because other work distorts CPU timings.",
        "Speed does not depend on trained weight values, only on layer shapes, sparsity pattern and precision: a",
        "one-shot pruned copy times like a trained sparse model (NMS time does depend on how many boxes pass conf).",
        "  Models built here (--cfg, --sparsity, --channel-prune) get BN statistics re-estimated on the sample images",
        "  (random-init or one-shot pruned weights otherwise shrink or blow up activations), and their detection head",
        "  calibrated so ~100 boxes per image pass the confidence threshold, as with a trained model (NMS cost).",
    ])
