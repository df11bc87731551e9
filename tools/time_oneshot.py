"""Time the one-shot step alone (calibration images + sensitivity/allocation + OBC reconstruction) on this machine.

Usage (from the repository root):
    python docs/results/sweep640/time_oneshot.py --weights yolov5s.yaml --sparsity 0.5 --method obc
A .yaml builds the model with random weights (no yolov5s.pt offline here): the work done does not depend on the
weight values. Prints the load average taken right before, the wall seconds of each phase and the CPU seconds in all.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils.sparsity.measure import global_sparsity  # noqa: E402
from utils.sparsity.pipeline import OneShot, calibration_for, sensitivity_table  # noqa: E402


def load(weights: str) -> torch.nn.Module:
    """A checkpoint, or a model yaml with seeded random weights."""
    if weights.endswith(".yaml"):
        from models.yolo import DetectionModel

        torch.manual_seed(0)
        return DetectionModel(weights).eval()
    from utils.checkpoint import load_model

    return load_model(weights)


def run(weights: str, data: str, imgsz: int, images: int, sparsity: float, method: str) -> dict:
    model = load(weights)
    out = {"weights": weights, "imgsz": imgsz, "images": images, "sparsity": sparsity, "method": method,
           "load_before": os.getloadavg(), "threads": torch.get_num_threads()}
    c0, t0 = time.process_time(), time.perf_counter()
    calib = calibration_for(data, imgsz, images)
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


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="yolov5s.yaml")
    p.add_argument("--data", default=str(ROOT / "data/coco128-local.yaml"))
    p.add_argument("--imgsz", "--img", type=int, default=640)
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--method", default="obc")
    opt = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(run(opt.weights, opt.data, opt.imgsz, opt.calib_images, opt.sparsity, opt.method), indent=1))
