"""Dense vs channel-pruned copies ('uniform' and 'latency' allocation) of one random-init model, ONNX Runtime end to
end at batch 1: the copies are built as benchmark.py builds them (calibrated BN and head), then timed interleaved in
one process and the medians reported.

Usage:
    python tools/channel_allocations.py                      # yolov5s, 640, 50% of conv MACs removed, 60 calls
    python tools/channel_allocations.py --cfg models/yolov5n.yaml --img 128 --runs 3 --warmup 1

The default reproduces docs/results/channel640/allocations.txt's setup (then docs/results/channel640/allocations.py
60: 60 calls, the first 5 dropped). ONNX files go to --save-dir.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.common import (DEFAULT_CFG, DEFAULT_SOURCE, add_timing_args, channel_pruned, export_b1, parts_text,  # noqa: E402
                          random_model, sample_batch, time_interleaved)
from utils.benchmark.pipeline import Pipeline  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.logger import LOGGER, setup_logging  # noqa: E402
from utils.sparsity.channel import ALLOCATIONS  # noqa: E402

GROUPS = ("model.0", "model.1", "model.2.cv1", "model.3")  # the first channel groups, printed as widths


def build(cfg: str, imgsz: int, fraction: float, allocations: list[str], save_dir: Path) -> dict[str, dict]:
    """Export the dense model and one channel-pruned copy per allocation; file, MACs left and widths per name."""
    base = random_model(cfg, imgsz)
    out = {"dense": {"file": export_b1(base, save_dir / "dense.onnx", imgsz), "macs_left": 1.0}}
    for name in allocations:
        model, report = channel_pruned(base, fraction, name, imgsz)
        widths = {k: model.get_submodule(k).conv.out_channels for k in GROUPS}
        LOGGER.info(f"{name}: conv MACs left {report['macs_left']:.3f}, widths of the first groups {widths}")
        out[name] = {"file": export_b1(model, save_dir / f"{name}.onnx", imgsz), "macs_left": report["macs_left"],
                     "widths": widths}
    return out


def run(cfg: str = DEFAULT_CFG, imgsz: int = 640, fraction: float = 0.5, allocations: list[str] | tuple = ("uniform",
        "latency"), runs: int = 55, warmup: int = 5, threads: int | None = None, source: str = DEFAULT_SOURCE,
        save_dir: str = "runs/channel640") -> dict[str, dict]:
    """Per model ('dense' and each allocation): macs_left, e2e/pre/engine/post medians (ms) and speedup over dense."""
    models = build(cfg, imgsz, fraction, list(allocations), Path(save_dir))
    pipes = {n: Pipeline(load_engine(str(m["file"]), "onnxruntime", batch_size=1, imgsz=imgsz, num_threads=threads),
                         (imgsz, imgsz)) for n, m in models.items()}
    times = time_interleaved(pipes, sample_batch(source), runs, warmup)
    for name, m in models.items():
        m.update(times[name], speedup=times["dense"]["e2e_ms"] / times[name]["e2e_ms"])
        LOGGER.info(f"{name}: end to end {m['e2e_ms']:.1f} ms (pre/engine/post {parts_text(m)}), "
                    f"{m['speedup']:.2f}x dense")
    return models


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(p, runs=55, save_dir='runs/channel640')
    p.add_argument("--allocations", nargs="+", choices=ALLOCATIONS, default=["uniform", "latency"],
                   help="channel allocations to compare")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict[str, dict]:
    """Run with the parsed options."""
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    main(parse_opt())
