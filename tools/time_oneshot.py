"""Time the one-shot pruning step alone: calibration images, sensitivity table (obc), pruning/reconstruction.

A .yaml builds the model with seeded random weights (the work done does not depend on the weight values). Returns
and prints the load average right before, the wall seconds of each phase and the CPU seconds of all of them.

Usage:
    python tools/time_oneshot.py --weights models/yolov5s.yaml --sparsity 0.5 --method obc --calib-images 64
    python tools/time_oneshot.py --cfg models/yolov5n.yaml --img 128 --calib-images 8

The README's 201 s for yolov5s at 640 was measured with the first command (then docs/results/sweep640/time_oneshot.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils.sparsity.rebuild  # noqa: E402,F401  (sparse/QAT/channel checkpoints load like the scripts load them)
from models.yolo import DetectionModel  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.logger import setup_logging  # noqa: E402
from utils.sparsity.measure import global_sparsity  # noqa: E402
from utils.sparsity.methods import METHOD_CHOICES  # noqa: E402
from utils.sparsity.pipeline import OneShot, calibration_for  # noqa: E402
from utils.sparsity.weight_sensitivity import sensitivity_table  # noqa: E402


def load(weights: str) -> nn.Module:
    """A checkpoint, or a model yaml with seeded random weights."""
    if weights.endswith((".yaml", ".yml")):
        torch.manual_seed(0)
        return DetectionModel(weights).eval()
    return load_model(weights)


def run(weights: str = str(ROOT / "models/yolov5s.yaml"), data: str = str(ROOT / "data/coco128-local.yaml"),
        imgsz: int = 640, calib_images: int = 128, sparsity: float = 0.5, method: str = "obc") -> dict:
    """Prune once; the settings, load averages, calibration_s/sensitivity_s/prune_s/total_s/cpu_s and reached."""
    model = load(weights)
    out = {"weights": weights, "imgsz": imgsz, "images": calib_images, "sparsity": sparsity, "method": method,
           "load_before": os.getloadavg(), "threads": torch.get_num_threads()}
    c0, t0 = time.process_time(), time.perf_counter()
    calib = calibration_for(data, imgsz, calib_images)
    t1 = time.perf_counter()
    shot = OneShot.parse(method, calibration=calib)
    if shot.method == "obc":
        shot.table = sensitivity_table(model, calib)
    t2 = time.perf_counter()
    shot(model, sparsity)
    t3 = time.perf_counter()
    out.update(calibration_s=t1 - t0, sensitivity_s=t2 - t1, prune_s=t3 - t2, total_s=t3 - t0,
               cpu_s=time.process_time() - c0,  # CPU seconds of this process: what the step costs without contention
               reached=global_sparsity(model), load_after=os.getloadavg())
    return out


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", "--cfg", default=str(ROOT / "models/yolov5s.yaml"), help="checkpoint or model yaml")
    p.add_argument("--data", default=str(ROOT / "data/coco128-local.yaml"), help="dataset yaml: calibration images")
    p.add_argument("--imgsz", "--img", type=int, default=640, help="calibration image size")
    p.add_argument("--calib-images", type=int, default=128, help="calibration images")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of prunable weights zeroed")
    p.add_argument("--method", choices=METHOD_CHOICES, default="obc", help="one-shot method")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict:
    """Run with the parsed options and print the result as JSON."""
    setup_logging()
    out = run(**vars(opt))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(parse_opt())
