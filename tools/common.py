"""What the timing tools share: random-weight models built as benchmark.py builds them, channel-pruned copies,
batch-1 ONNX export and interleaved end-to-end timing through the benchmark's pre/engine/post pipeline."""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.yolo import DetectionModel
from utils.assets import assets_dir
from utils.benchmark.pipeline import Pipeline, fill_batch, load_images
from utils.benchmark.variants import calibrate_bn
from utils.export import export_onnx, prepare_model
from utils.sparsity.methods import METHODS, PruneContext

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFG = str(ROOT / "models/yolov5s.yaml")
DEFAULT_SOURCE = str(assets_dir() / "images")
PARTS = ("pre_ms", "engine_ms", "post_ms")


def random_model(cfg: str, imgsz: int, seed: int = 0) -> nn.Module:
    """Seeded random weights from a model yaml, BN statistics and head calibrated (as benchmark.py builds them)."""
    torch.manual_seed(seed)
    return calibrate_bn(DetectionModel(cfg).eval(), imgsz)


def channel_pruned(base: nn.Module, fraction: float, allocation: str, imgsz: int) -> tuple[nn.Module, dict]:
    """A copy with `fraction` of conv MACs removed by l1-ranked channels, BN re-calibrated, and the prune report."""
    model = copy.deepcopy(base).eval()
    ctx = PruneContext(imgsz=imgsz, options={"importance": "l1", "allocation": allocation})
    report = METHODS["channel"].prune(model, fraction, ctx)
    return calibrate_bn(model, imgsz), report


def export_b1(model: nn.Module, file: str | Path, imgsz: int) -> Path:
    """Batch-1 FP32 ONNX with BN folded, written atomically to file."""
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(prepare_model(model), file, imgsz, 1)


def sample_batch(source: str) -> list[np.ndarray]:
    """The first image of source as a batch of one."""
    return fill_batch(load_images(source), 1)


def time_interleaved(pipes: dict[str, Pipeline], images: Sequence[np.ndarray], runs: int, warmup: int) -> dict:
    """Call the pipelines in turn warmup + runs times; medians (ms) of the last `runs` calls per pipeline."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    rows: dict[str, list[tuple[float, ...]]] = {n: [] for n in pipes}
    for _ in range(warmup + runs):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            _, parts = pipe(list(images))
            rows[name].append(((time.perf_counter() - t0) * 1e3, *parts))
    return {name: medians(r[warmup:]) for name, r in rows.items()}


def medians(rows: Sequence[tuple[float, ...]]) -> dict[str, float]:
    """Median end-to-end and pre/engine/post milliseconds of (e2e, pre, engine, post) rows."""
    cols = list(zip(*rows))
    return {key: statistics.median(col) for key, col in zip(("e2e_ms", *PARTS), cols)}


def parts_text(summary: dict[str, float]) -> str:
    """'[pre, engine, post]' rounded to 0.1 ms."""
    return str([round(summary[k], 1) for k in PARTS])


def add_timing_args(p: argparse.ArgumentParser, runs: int, save_dir: str) -> None:
    """The flags both timing tools share: model, size, cut, timed/untimed calls, threads, image, output folder."""
    p.add_argument("--cfg", default=DEFAULT_CFG, help="model yaml (random weights, calibrated BN and head)")
    p.add_argument("--imgsz", "--img", type=int, default=640, help="square input size")
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of conv MACs removed by channels")
    p.add_argument("--runs", type=int, default=runs, help="timed calls per model (and setting), after --warmup")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per model (and setting) first")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="image file or folder; its first image is timed")
    p.add_argument("--save-dir", default=save_dir, help="where the ONNX files go")
