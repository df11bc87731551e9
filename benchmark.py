"""End-to-end CPU benchmark: DeepSparse vs ONNX Runtime vs PyTorch vs OpenVINO, dense vs pruned vs pruned-INT8.

Usage:
    python benchmark.py --weights a.pt b.onnx --engines deepsparse onnxruntime torch openvino --batch-size 1 64
    python benchmark.py --cfg models/yolov5s.yaml --sparsity 0 0.8 --quantize          # builds the variants itself
    python benchmark.py --weights yolov5n.pt --sparsity 0 0.5 0.8 --block none 1x4      # unstructured and 1x4 blocks
    python benchmark.py --cfg models/yolov5s.yaml --sparsity 0 0.8 --channel-prune 0.5  # + a half-FLOPs model
    python benchmark.py --weights yolov5n.onnx --engines deepsparse openvino --scenario async --batch-size 64
    python benchmark.py --cfg models/yolov5n.yaml --random --time 10 --num-cores 2
    python benchmark.py --weights yolov5n.onnx --batch-size 64 --scenario sync pipelined  # overlap pre/post
    python benchmark.py --weights dense.pt pruned.pt pq_int8.onnx --data pistols.yaml --img 416 --batch-size 1 64
                                                            # + mAP of each timed file: frontier.png, Table 1

Each row: pre-process (letterbox, normalize, NCHW) + engine + post-process (NMS, rescale), timed separately, after
warm-up; results in runs/benchmark/exp*/ (results.csv, results.json, benchmark.png) with the ratio to a baseline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils.assets import assets_dir  # noqa: E402
from utils.augmentations import check_img_size  # noqa: E402
from utils.engines import BENCHMARKED, ENGINES  # noqa: E402
from utils.sparsity.methods import DATA_FREE  # noqa: E402
from utils.benchmark.cli import build_variants, method_text, validate  # noqa: E402
from utils.benchmark.machine import format_machine, machine_report  # noqa: E402
from utils.benchmark.pipeline import load_images, random_images  # noqa: E402
from utils.benchmark.accuracy import AccuracyProbe, add_accuracy_ratios  # noqa: E402
from utils.benchmark.report import add_ratios, collect_warnings, parse_baseline, write_outputs  # noqa: E402
from utils.benchmark.suite import Settings, run_grid  # noqa: E402
from utils.cli import check_options, exit_on_user_error  # noqa: E402
from utils.export import DEFAULT_OPSET  # noqa: E402
from utils.export.head import HEADS  # noqa: E402
from utils.export.pixels import pixel_layout  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, setup_logging  # noqa: E402


def run(weights: list[str] | None = None, cfg: str | None = None, engines: list[str] | None = None,
        batch_size: list[int] = (1,), imgsz: list[int] = (640,), sparsity: list[float] | None = None,
        method: str = "global", block: list[str] = ("none",), quantize: bool = False, source: str | None = None,
        random: bool = False, warmup: int = 25, iterations: int = 80, time_s: float | None = None,
        num_cores: int | None = None, scenario: list[str] = ("sync",), num_streams: int | None = None,
        baseline: str = "onnxruntime:dense", conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000,
        openvino_precision: str = "f32", opset: int = DEFAULT_OPSET, device: str = "cpu",
        project: str = "runs/benchmark", name: str = "exp", exist_ok: bool = False,
        channel_prune: list[float] | None = None, channel_allocation: str = "uniform", data: str | None = None,
        workers: int = 2, allow_download_code: bool = False, head: str = "raw", uint8_input: bool = True,
        nhwc: bool = False) -> dict[str, Any]:
    """Time every (batch size, variant, engine, scenario); returns the report dict (also saved as results.json)."""
    check_options(threads=num_cores)
    engines, scenario = validate(engines or BENCHMARKED, batch_size, sparsity, scenario, warmup, iterations, time_s)
    hw = check_img_size([imgsz[0], imgsz[-1]] if isinstance(imgsz, (list, tuple)) else [imgsz, imgsz], s=32)
    settings = Settings(tuple(hw), warmup, iterations, time_s, num_cores, num_streams, conf_thres, iou_thres,
                        max_det, openvino_precision, device, head, pixel_layout(uint8_input and not nhwc, nhwc))
    machine = machine_report(num_cores)
    LOGGER.info(format_machine(machine))
    LOGGER.info(method_text(settings, scenario))
    probe = AccuracyProbe(data, settings.imgsz, workers, allow_download_code) if data else None
    source = source or str(assets_dir() / "images")
    images = random_images(2, settings.imgsz) if random else load_images(source)
    if channel_prune and any(not 0 < f < 1 for f in channel_prune):
        raise ValueError(f"--channel-prune {channel_prune}: fractions of conv FLOPs to remove, each in (0, 1)")
    variants, notes = build_variants(weights, cfg, sparsity, method, block, quantize, opset, max(settings.imgsz),
                                     channel_prune, channel_allocation, probe, head, settings.pixels)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)  # only once the inputs are good
    inputs = "random noise" if random else f"{len(images)} images from {source}"
    LOGGER.info(f"Variants: {', '.join(v.name for v in variants)}; engines: {', '.join(engines)}; "
                f"batch sizes: {', '.join(map(str, batch_size))}; inputs: {inputs}")
    rows = run_grid(variants, engines, list(batch_size), scenario, images, settings, save_dir / "models",
                    machine["cores_used"] or 1, LOGGER.info, probe)
    notes += [n for n in [add_ratios(rows, baseline)] if n]
    if probe is not None:
        notes += [n for n in [add_accuracy_ratios(rows, *parse_baseline(baseline))] if n]
    warnings = collect_warnings(rows, machine)
    report = {"machine": machine, "method": method_text(settings, scenario), "settings": vars(settings),
              "baseline": baseline, "rows": rows, "warnings": warnings, "notes": notes, "save_dir": str(save_dir)}
    write_outputs(report, save_dir, LOGGER.info)
    return report


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=None,
                   help=".pt / .onnx / OpenVINO IR files (default: shared yolov5n.pt unless --cfg is given)")
    p.add_argument("--cfg", type=str, default=None, help="model yaml to build variants from (random weights)")
    p.add_argument("--engines", "--engine", nargs="+", default=list(BENCHMARKED),
                   help=f"any of {' '.join(ENGINES)} (default: {' '.join(BENCHMARKED)})")
    p.add_argument("--batch-size", nargs="+", type=int, default=[1], help="batch sizes: 1 = latency, 64 = throughput")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h [w]")
    p.add_argument("--sparsity", nargs="+", type=float, default=None,
                   help="one-shot prune each .pt / --cfg model to these global sparsities (0 = dense)")
    p.add_argument("--method", choices=DATA_FREE, default="global",
                   help="one-shot pruning method for --sparsity (utils.sparsity.methods; --block picks 1xN blocks)")
    p.add_argument("--block", nargs="+", default=["none"], help="sparsity patterns: none (unstructured) and/or 1x4")
    p.add_argument("--channel-prune", nargs="+", type=float, default=None,
                   help="also time channel-pruned copies with these fractions of conv FLOPs removed (e.g. 0.5), "
                        "each with the --sparsity levels on top")
    p.add_argument("--channel-allocation", choices=["uniform", "global", "latency"], default="uniform",
                   help="channels removed: same fraction per layer, one global L1 threshold, or the uniform fraction "
                        "scaled by each layer's ONNX Runtime time per MAC (profiled on the dense model)")
    p.add_argument("--quantize", action="store_true", help="add INT8 twins of the built variants (needs an exporter)")
    p.add_argument("--head", choices=HEADS, default="raw",
                   help="files built here: raw = end at Detect's convs, the host decodes only cells that pass "
                   "objectness (faster); decoded = Detect's decode inside the graph, as export.py writes by default")
    p.add_argument("--uint8-input", action=argparse.BooleanOptionalAction, default=True,
                   help="files built here take uint8 NCHW RGB pixels (export.py --uint8-input; INT8 files: the pixels "
                   "are their quantized input); --no-uint8-input feeds float32 as export.py writes by default")
    p.add_argument("--nhwc", action="store_true",
                   help="files built here take uint8 NHWC BGR frames (export.py --nhwc): the host only letterboxes, "
                   "the engine does layout and /255")
    p.add_argument("--source", type=str, default=None, help="image file/folder (default: shared demo images)")
    p.add_argument("--data", type=str, default=None,
                   help="dataset yaml: also validate every timed file on its val split (mAP50, %% of dense, "
                        "frontier.png), and calibrate --quantize twins on its train images")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers for --data validation")
    p.add_argument("--allow-download-code", action="store_true",
                   help="let --data's Python 'download:' snippet run if the dataset is missing (else refused)")
    p.add_argument("--random", action="store_true", help="random-noise images instead of --source")
    p.add_argument("--warmup", type=int, default=25, help="warm-up batches per row (not measured)")
    p.add_argument("--iterations", type=int, default=80, help="measured batches per row")
    p.add_argument("--time", dest="time_s", type=float, default=None, help="measure for S seconds instead")
    p.add_argument("--threads", "--num-cores", dest="num_cores", type=int, default=None,
                   help="threads/cores per engine (default: engine's own); the machine section reports it")
    p.add_argument("--scenario", nargs="+", default=["sync"], help="sync, async (multi-stream engines) and/or pipelined "
                   "(pre/post of neighbouring batches overlap the engine on a second thread)")
    p.add_argument("--num-streams", type=int, default=None, help="async streams (default: engine's choice)")
    p.add_argument("--baseline", default="onnxruntime:dense", help="ratio reference: engine[:variant]")
    p.add_argument("--conf-thres", type=float, default=0.25, help="NMS confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--openvino-precision", choices=["f32", "bf16", "f16"], default="f32",
                   help="OpenVINO inference precision hint (its own default on bf16 CPUs is bf16)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset for built variants")
    p.add_argument("--device", default="cpu", help="cpu (all engines here are CPU engines)")
    p.add_argument("--project", default="runs/benchmark", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict[str, Any]:
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
