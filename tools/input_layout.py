"""How the exported file's ends change end-to-end time (issue 21), interleaved call by call on every engine.

Four layouts of the same variant, built as benchmark.py builds it, each through the benchmark's own pipeline
(pre -> engine -> post), called in turn so machine noise hits all alike:
  decoded     : export.py's default: float NCHW RGB input, Detect's decode in the graph;
  raw         : `--head raw`: the file ends at Detect's convs, the host decodes only cells that pass objectness;
  raw_u8      : `--head raw --uint8-input`: also uint8 NCHW RGB pixels in (INT8: the pixels are the quantized input);
  raw_nhwc    : `--head raw --nhwc`: uint8 NHWC BGR frames in instead, the host only letterboxes.
Every layout's detections are checked against `decoded` on the sample images before timing.

Usage:
    python tools/input_layout.py --variants "yolov5s dense FP32" --engines onnxruntime openvino deepsparse
    python tools/input_layout.py --sparsity 0.8 --block 1x4 --channel-prune 0.5 --quantize \
        --variants "yolov5s_cp50 pruned80-1x4 INT8" --engines deepsparse --batch-size 1 64
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
from tools.common import DEFAULT_CFG, DEFAULT_SOURCE, time_interleaved  # noqa: E402
from utils.benchmark.cli import build_variants  # noqa: E402
from utils.benchmark.machine import ForeignLoadMeter  # noqa: E402
from utils.benchmark.pipeline import Pipeline, fill_batch, load_images  # noqa: E402
from utils.benchmark.variants import Variant  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.export.pixels import NCHW_RGB, NHWC_BGR  # noqa: E402

LAYOUTS = {"decoded": ("decoded", None), "raw": ("raw", None), "raw_u8": ("raw", NCHW_RGB),
           "raw_nhwc": ("raw", NHWC_BGR)}


def layout_copy(v: Variant, head: str, pixels: str | None) -> Variant:
    """The same in-memory model, exporting its files with another head/input layout (own file cache)."""
    c = copy.copy(v)
    c.head, c.pixels, c._files = head, pixels, {}
    return c


def same_detections(pipes: dict[str, Pipeline], images: list[np.ndarray]) -> dict[str, bool]:
    """Each layout's detections against decoded's, image by image (float rounding of pixel coordinates)."""
    ref = [pipes["decoded"]([im])[0][0] for im in images]
    out = {}
    for name, pipe in pipes.items():
        got = [pipe([im])[0][0] for im in images]
        out[name] = all(a.shape == b.shape and np.allclose(a, b, atol=1e-3) for a, b in zip(ref, got))
    return out


def measure(v: Variant, engine: str, batch_size: int, images: list[np.ndarray], imgsz: int, runs: int,
            warmup: int, threads: int | None, workdir: Path) -> dict:
    """One variant on one engine at one batch size: the layouts timed interleaved."""
    pipes = {}
    for name, (head, pixels) in LAYOUTS.items():
        f = layout_copy(v, head, pixels).weights_for(engine, batch_size, (imgsz, imgsz), workdir / name)
        pipes[name] = Pipeline(load_engine(f, engine, batch_size=batch_size, imgsz=imgsz, num_threads=threads),
                               (imgsz, imgsz))
    same = same_detections(pipes, images)
    with ForeignLoadMeter() as meter:
        t = time_interleaved(pipes, fill_batch(images, batch_size), runs, warmup)
    base = t["decoded"]["e2e_ms"]
    return {"variant": v.name, "engine": engine, "batch_size": batch_size, "times": t, "same_detections": same,
            "ratio_to_decoded": {k: t[k]["e2e_ms"] / base for k in t}, "foreign_load": round(meter.foreign, 3),
            "items_per_sec": {k: batch_size * 1e3 / t[k]["e2e_ms"] for k in t}}


def run(cfg: str = DEFAULT_CFG, weights: list[str] | None = None, variants: list[str] | None = None,
        sparsity: list[float] | None = None, block: list[str] = ("none",), channel_prune: list[float] | None = None,
        quantize: bool = False, engines: tuple[str, ...] = ("onnxruntime",), batch_size: tuple[int, ...] = (1,),
        imgsz: int = 640, runs: int = 30, warmup: int = 5, threads: int | None = None, source: str = DEFAULT_SOURCE,
        save_dir: str = "runs/input_layout") -> list[dict]:
    """Every chosen variant x engine x batch size; one line each, results.json in save_dir."""
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    built, _ = build_variants(weights, None if weights else cfg, sparsity, "global", list(block), quantize, 13,
                              imgsz, channel_prune)
    chosen = [v for v in built if not variants or v.name in variants]
    if not chosen:
        raise SystemExit(f"--variants {variants}: none of {[v.name for v in built]}")
    images, rows = load_images(source), []
    for v in chosen:
        for engine in engines:
            for bs in batch_size:
                r = measure(v, engine, bs, images, imgsz, runs, warmup, threads, out / "models")
                rows.append(r)
                t = r["times"]
                print(f"{v.name} | {engine} | b{bs}: " + ", ".join(
                    f"{k} {t[k]['e2e_ms']:.1f} ms [pre {t[k]['pre_ms']:.2f} post {t[k]['post_ms']:.2f}] "
                    f"{r['ratio_to_decoded'][k]:.3f}x" for k in t) + f"; same {r['same_detections']}; "
                    f"foreign load {r['foreign_load']:.1%}", flush=True)
                (out / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=DEFAULT_CFG, help="model yaml (random weights, as benchmark.py builds them)")
    p.add_argument("--weights", nargs="*", default=None, help="checkpoints instead of --cfg")
    p.add_argument("--variants", nargs="*", default=None, help="variant names to time (default: all built)")
    p.add_argument("--sparsity", nargs="+", type=float, default=None, help="as benchmark.py --sparsity")
    p.add_argument("--block", nargs="+", default=["none"], help="as benchmark.py --block")
    p.add_argument("--channel-prune", nargs="+", type=float, default=None, help="as benchmark.py --channel-prune")
    p.add_argument("--quantize", action="store_true", help="also INT8 twins (as benchmark.py --quantize)")
    p.add_argument("--engines", nargs="+", default=["onnxruntime"], help="onnxruntime, openvino, deepsparse")
    p.add_argument("--batch-size", nargs="+", type=int, default=[1], help="batch sizes")
    p.add_argument("--imgsz", "--img", type=int, default=640, help="square input size")
    p.add_argument("--runs", type=int, default=30, help="timed calls per layout, after --warmup")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per layout first")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: the engine's own)")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="image file or folder")
    p.add_argument("--save-dir", default="runs/input_layout", help="where the ONNX files and results.json go")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> list[dict]:
    return run(**vars(opt))


if __name__ == "__main__":
    main(parse_opt())
