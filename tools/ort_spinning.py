"""ONNX Runtime end to end with and without intra-op spinning: dense vs channel-pruned, batch 1, interleaved.

Exports its own random-init dense model and a channel-pruned copy ('uniform' allocation, as benchmark.py's cp50
rows), then for spinning on (1) and off (0) times both through the benchmark's pre/engine/post pipeline. The
sessions use the engine's settings (utils.engines.onnxruntime_engine.session_options) with only
`session.intra_op.allow_spinning` changed.

Usage:
    python tools/ort_spinning.py                      # yolov5s, 640, 50 calls per model and setting
    python tools/ort_spinning.py --cfg models/yolov5n.yaml --img 128 --runs 3 --warmup 1

The default reproduces docs/results/benchmark640/ort_spinning.txt's setup (then docs/results/benchmark640/
ort_spinning.py on the files of a benchmark run: 50 calls, the first 5 dropped).
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

SPINNING = "session.intra_op.allow_spinning"


def export_models(cfg: str, imgsz: int, fraction: float, allocation: str, save_dir: Path) -> dict[str, Path]:
    """Dense and channel-pruned ONNX files ('dense', 'cp50' for fraction 0.5) in save_dir."""
    base = random_model(cfg, imgsz)
    pruned, report = channel_pruned(base, fraction, allocation, imgsz)
    tag = f"cp{round(fraction * 100)}"
    LOGGER.info(f"{tag}: conv MACs left {report['macs_left']:.3f} ({allocation} allocation)")
    return {"dense": export_b1(base, save_dir / "dense.onnx", imgsz),
            tag: export_b1(pruned, save_dir / f"{tag}.onnx", imgsz)}


def spin_pipeline(file: Path, spin: bool, imgsz: int, threads: int | None) -> Pipeline:
    """The benchmark pipeline on an ORT session with the engine's options, spinning on or off."""
    engine = load_engine(str(file), "onnxruntime", batch_size=1, imgsz=imgsz, num_threads=threads,
                         session_config={SPINNING: "1" if spin else "0"})
    return Pipeline(engine, (imgsz, imgsz))


def run(cfg: str = DEFAULT_CFG, imgsz: int = 640, fraction: float = 0.5, allocation: str = "uniform", runs: int = 45,
        warmup: int = 5, threads: int | None = None, source: str = DEFAULT_SOURCE,
        save_dir: str = "runs/ort_spinning") -> dict[str, dict]:
    """{'spin=1': ..., 'spin=0': ...}: per model e2e/pre/engine/post medians (ms), and 'ratio' dense/pruned e2e."""
    files = export_models(cfg, imgsz, fraction, allocation, Path(save_dir))
    images = sample_batch(source)
    results = {}
    for spin in (True, False):
        key = f"spin={int(spin)}"
        pipes = {name: spin_pipeline(f, spin, imgsz, threads) for name, f in files.items()}
        res = time_interleaved(pipes, images, runs, warmup)
        for name, r in res.items():
            LOGGER.info(f"{key} {name}: e2e median {r['e2e_ms']:.1f} ms, parts pre/inf/post {parts_text(r)}")
        dense, pruned = (res[n]["e2e_ms"] for n in files)
        res["ratio"] = dense / pruned
        LOGGER.info(f"{key} ratio {' / '.join(files)} = {res['ratio']:.2f}")
        results[key] = res
    return results


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(p, runs=45, save_dir='runs/ort_spinning')
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform", help="channel allocation of the pruned copy")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict[str, dict]:
    """Run with the parsed options."""
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    main(parse_opt())
