"""Per-layer pruning sensitivity: prune one layer alone to several levels and measure how much the output degrades.

The default measure needs no labels: the distortion of the Detect head's sigmoid outputs against the dense model on
calibration images (objectness everywhere, boxes and classes weighted by the dense objectness). Only the layers
after the pruned one are re-run, from cached activations. A labelled metric (e.g. mAP50 through utils.evaluate)
can be passed instead; it re-runs the whole model.
"""
from __future__ import annotations

import copy
import csv
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.logger import LOGGER

from .activations import StageRunner, _stage_input, _State
from .calibration import as_float
from .obc import (
    LayerStats,
    _layer_modules,
    inverse_cholesky,
    prune_layer,
    prune_layer_magnitude,
    supports_reconstruction,
)
from .oneshot import bn_output_scale, following_batchnorms, split_targets

DEFAULT_LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9)
COLUMNS = ("layer", "numel", "level", "score", "delta", "local")  # score: metric (distortion); local: layer error


def _head_outputs(out: Any) -> list[torch.Tensor]:
    """Sigmoid head maps from a Detect eval output (pred, raw list); any other output is used as is."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (list, tuple)):
        return [r.float().sigmoid() for r in out[1]]
    if isinstance(out, (tuple, list)):
        return [o.float() for o in out]
    return [out.float()]


def head_distortion(dense: list[torch.Tensor], pruned: list[torch.Tensor]) -> float:
    """Objectness MSE over all anchors + box/class MSE weighted by dense objectness (what detections are made of)."""
    if dense[0].dim() != 5:  # not a Detect head: relative MSE
        num = sum(float(((p - d) ** 2).sum()) for d, p in zip(dense, pruned))
        return num / max(sum(float((d**2).sum()) for d in dense), 1e-12)
    obj_err = sum(float(((p[..., 4] - d[..., 4]) ** 2).sum()) for d, p in zip(dense, pruned))
    n = sum(d[..., 4].numel() for d in dense)
    w = [d[..., 4] for d in dense]
    rest = sum(float((wi * ((p[..., :4] - d[..., :4]) ** 2).mean(-1)).sum() + (wi * ((p[..., 5:] - d[..., 5:]) ** 2)
                     .mean(-1)).sum()) for wi, d, p in zip(w, dense, pruned))
    return obj_err / n + rest / max(sum(float(wi.sum()) for wi in w), 1e-12)


class SuffixScorer:
    """Distortion of the model output when only stages >= i changed: re-runs the suffix from cached inputs."""

    def __init__(self, model: nn.Module, calibration: Sequence[torch.Tensor]) -> None:
        self.runner = StageRunner(model, calibration)
        self.inputs: list[list[_State]] = []
        for i in range(len(self.runner.stages)):
            self.inputs.append([_State(st.x, dict(st.saved)) for st in self.runner.states])
            self.runner.advance(i)
        self.dense = [_head_outputs(st.x) for st in self.runner.states]

    @torch.no_grad()
    def __call__(self, first_stage: int) -> float:
        total = 0.0
        for b, st0 in enumerate(self.inputs[first_stage]):
            st = _State(st0.x, dict(st0.saved))
            for stage in self.runner.stages[first_stage:]:
                st.x = stage(_stage_input(stage, st))
                if getattr(stage, "i", None) in self.runner.save:
                    st.saved[stage.i] = st.x
            total += head_distortion(self.dense[b], _head_outputs(st.x))
        return total / len(self.inputs[first_stage])


def _stage_of(runner: StageRunner, layers: Mapping[str, nn.Module]) -> dict[str, int]:
    """Index of the stage holding each layer."""
    where = {}
    for i, stage in enumerate(runner.stages):
        inside = {id(m) for m in stage.modules()}
        where.update({n: i for n, m in layers.items() if id(m) in inside and n not in where})
    return where


def _dense_hessians(runner: StageRunner, layers: Mapping[str, nn.Module], where: dict[str, int]) -> dict:
    """H of every reconstructable layer on dense activations (one pass), for OBS-pruned sensitivity."""
    stats = {n: LayerStats(m.weight[0].numel()) for n, m in layers.items() if supports_reconstruction(m)}
    for i in range(len(runner.stages)):
        mine = {n: layers[n] for n in stats if where.get(n) == i}
        if mine:
            runner.capture(i, mine, None, lambda n, x, xd: stats[n].add(layers[n], x))
        runner.advance(i)
    return {n: s.mean()[0] for n, s in stats.items()}


def local_error(before: torch.Tensor, after: torch.Tensor, H: torch.Tensor, scale: torch.Tensor | None) -> float:
    """The layer's own output error relative to its output energy, rows weighted by their BN gain^2."""
    W0, dW = before.reshape(len(before), -1).float(), (after - before).reshape(len(before), -1).float()
    Hf = H.float()
    err, energy = ((dW @ Hf) * dW).sum(1), ((W0 @ Hf) * W0).sum(1)
    w = scale.float() ** 2 if scale is not None else torch.ones_like(err)
    return float((w * err).sum() / (w * energy).sum().clamp_min(1e-12))


def _prune_alone(module: nn.Module, saved: torch.Tensor, level: float, H: torch.Tensor | None, U, scale) -> None:
    """Put back the dense weights, then prune this layer to `level` (OBS when H is known, else magnitude)."""
    module.weight.data.copy_(saved)
    k = int(round(level * saved.numel()))
    if H is not None:
        prune_layer(module, H, k, scale, U=U)
    else:
        prune_layer_magnitude(module, k, scale)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, calibration: Sequence[torch.Tensor], levels: Sequence[float] = DEFAULT_LEVELS,
                      exclude: Sequence[str] | None = None, method: str = "obs",
                      metric: Callable[[nn.Module], float] | None = None, probe: float | None = None) -> list[dict]:
    """One row per (layer, level): the score with only that layer pruned and its increase over the dense model.

    method: 'obs' (SparseGPT reconstruction on dense activations, what obc_prune does) or 'magnitude'.
    metric: loss-like callable(model) -> float (higher is worse); None -> head distortion on `calibration`.
    probe: measure the output only at this level and scale it to the other levels by the layer's own OBS error
    curve ('local' column): one model run per layer instead of one per level (obs only).
    """
    t0 = time.perf_counter()
    model.eval()
    included, _ = split_targets(model, exclude)
    layers = _layer_modules(model, list(included))
    scorer = SuffixScorer(model, calibration)
    where = _stage_of(scorer.runner, layers)
    hessians = _dense_hessians(StageRunner(model, calibration), layers, where) if method == "obs" else {}
    bns = following_batchnorms(model)
    base = metric(model) if metric else 0.0

    def measure(name: str) -> float:  # increase of the loss-like score over the dense model
        return (metric(model) if metric else scorer(where[name])) - base

    rows = []
    for name, module in layers.items():
        rows += _layer_rows(name, module, levels, hessians.get(name), bns.get(name), measure, probe)
    for r in rows:
        r["score"] = base + r["delta"]
    LOGGER.info(f"sensitivity: {len(layers)} layers x {len(levels)} levels in {time.perf_counter() - t0:.1f}s"
                + (f" (output measured at {probe:.2f} only)" if probe else ""))
    return rows


def _layer_rows(name: str, module: nn.Module, levels: Sequence[float], H: torch.Tensor | None, bn, measure,
                probe: float | None) -> list[dict]:
    """Prune one layer alone to each level; rows with the measured (or probe-scaled) output increase."""
    saved = module.weight.data.clone()
    scale = bn_output_scale(bn).double() if bn is not None else None
    U = inverse_cholesky(H) if H is not None else None
    rows, local = [], {}
    for level in sorted(set(levels) | ({probe} if probe and H is not None else set())):
        _prune_alone(module, saved, level, H, U, scale)
        local[level] = local_error(saved, module.weight.data, H, scale) if H is not None else float("nan")
        if level in levels and (probe is None or H is None):
            rows.append({"layer": name, "numel": saved.numel(), "level": level, "delta": measure(name),
                         "local": local[level]})
        if probe is not None and level == probe and H is not None:
            at_probe = measure(name)
    module.weight.data.copy_(saved)
    if probe is not None and H is not None:
        ratio = at_probe / max(local[probe], 1e-12)
        rows = [{"layer": name, "numel": saved.numel(), "level": lv, "delta": ratio * local[lv], "local": local[lv]}
                for lv in levels]
    LOGGER.debug(f"sensitivity: {name} " + " ".join(f"{r['delta']:.4f}" for r in rows))
    return rows


def table_from_rows(rows: Sequence[Mapping]) -> dict[str, dict[float, float]]:
    """{layer: {level: delta}}: the form allocation.sensitivity_allocation takes."""
    table: dict[str, dict[float, float]] = {}
    for r in rows:
        table.setdefault(str(r["layer"]), {})[float(r["level"])] = float(r["delta"])
    return table


def save_table(rows: Sequence[Mapping], file: str | Path) -> Path:
    """sensitivity.csv: layer, numel, level, score (the metric), delta (its increase), local (the layer's own error)."""
    file = Path(file)
    with open(file, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({k: (round(r[k], 6) if isinstance(r[k], float) else r[k]) for k in COLUMNS} for r in rows)
    return file


def read_table(file: str | Path) -> list[dict]:
    """Rows back from sensitivity.csv, with a clear error when the file is not one."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"sensitivity table {file} not found; create it with `python val.py --sensitivity`")
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not set(COLUMNS[:5]) <= set(rows[0]):
        raise ValueError(f"{file} is not a sensitivity table (needs columns {', '.join(COLUMNS)}); rerun --sensitivity")
    return [{"layer": r["layer"], "numel": int(r["numel"]), "level": float(r["level"]), "score": float(r["score"]),
             "delta": float(r["delta"]), "local": float(r.get("local") or "nan")} for r in rows]


def plot_sensitivity(rows: Sequence[Mapping], file: str | Path) -> Path:
    """Heat map (layers x levels) of the metric increase: the layers to spare stand out as bright rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table_from_rows(rows)
    names, levels = list(table), sorted({lv for t in table.values() for lv in t})
    grid = np.array([[table[n].get(lv, np.nan) for lv in levels] for n in names])
    fig, ax = plt.subplots(figsize=(2 + 0.8 * len(levels), 1.5 + 0.18 * len(names)), tight_layout=True)
    im = ax.imshow(np.log10(np.clip(grid, 1e-6, None)), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(levels)), [f"{lv:.2f}" for lv in levels])
    ax.set_yticks(range(len(names)), [n.removesuffix(".weight") for n in names], fontsize=6)
    ax.set_xlabel("sparsity of this layer alone")
    ax.set_title("pruning sensitivity: log10 metric increase")
    fig.colorbar(im, ax=ax)
    fig.savefig(file, dpi=150)
    plt.close(fig)
    return Path(file)


def sensitivity_table(model: nn.Module, calibration: Sequence[torch.Tensor], exclude: Sequence[str] | None = None,
                      images: int = 16, probe: float | None = 0.7, imgsz: int = 320) -> dict[str, dict[float, float]]:
    """OBS sensitivity of the dense model on the first `images` calibration images (computed once per model).

    probe: measure the output at this level only and scale by each layer's own error curve (5x fewer model runs).
    imgsz: larger calibration images are shrunk to this for the table (4x cheaper from 640).
    On yolov5n/COCO128 at 640, obc at 50% scored 0.297 / 0.302 mAP50-95 with tables from 640 / 320 px images, and
    a probed table allocated as well as one measured at every level (0.256 vs 0.250 at 320).
    """
    subset = table_batches(calibration, images, imgsz)
    LOGGER.info(f"obc: measuring per-layer sensitivity on {sum(len(b) for b in subset)} calibration images "
                "(reused for every level)")
    return table_from_rows(layer_sensitivity(copy.deepcopy(model), subset, exclude=exclude, probe=probe))


def table_batches(calibration: Sequence[torch.Tensor], images: int, imgsz: int, stride: int = 32) -> list:
    """About `images` calibration images with their long side shrunk to imgsz, as few forwards as possible.

    Square batches: the first `images` as one batch. Rectangular ones (sorted by aspect ratio): whole batches spread
    over the set, so both landscape and portrait pictures are measured.
    """
    if len({tuple(b.shape[1:]) for b in calibration}) == 1:
        one = torch.cat(list(calibration))[:images]
        return [F.interpolate(as_float(one), size=(imgsz, imgsz), mode="area") if one.shape[-1] > imgsz else one]
    per = max(len(calibration[0]), 1)
    n = min(len(calibration), -(-images // per))
    picks = sorted({round(i * (len(calibration) - 1) / max(n - 1, 1)) for i in range(n)})
    out, left = [], images
    for i in picks:
        b = as_float(calibration[i][:left])
        r = imgsz / max(b.shape[-2:])
        if r < 1:  # multiples of the stride keep YOLOv5's Concat shapes aligned
            size = tuple(max(stride, round(x * r / stride) * stride) for x in b.shape[-2:])
            b = F.interpolate(b, size=size, mode="area")
        out.append(b)
        left -= len(b)
    return out
