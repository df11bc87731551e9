"""mAP against global sparsity: prune a fresh copy of the model one-shot to each level and validate it."""
from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Callable

import torch.nn as nn

from .measure import all_param_sparsity, global_sparsity
from .oneshot import bn_recalibrate, prune_oneshot

COLUMNS = ("target", "sparsity", "sparsity_all_params", "precision", "recall", "map50", "map", "rel_map50")


def sparsity_header(model: nn.Module) -> str:
    """The line val.py prints before its table: which fraction is which matters when comparing with Ultralytics."""
    return (f"Global sparsity: {global_sparsity(model):.3f} of prunable conv/linear weights, "
            f"{all_param_sparsity(model):.3f} of all parameters")


def sweep(model: nn.Module, levels: list[float], validate: Callable[[nn.Module], dict], method: str = "global",
          calibration=None, calib_batches: int = 0) -> list[dict]:
    """One row per level: target, measured sparsity, P, R, mAP50, mAP50-95 and mAP50 relative to the first row."""
    rows = []
    for level in levels:
        m = copy.deepcopy(model)
        if level > 0:
            prune_oneshot(m, level, method=method)
            if calibration is not None and calib_batches:
                bn_recalibrate(m, calibration, calib_batches)
        print(f"\nPruning {method}: target {level:.2f} -> {sparsity_header(m)}")
        r = validate(m.eval())
        rows.append({"target": level, "sparsity": global_sparsity(m), "sparsity_all_params": all_param_sparsity(m),
                     "precision": r["precision"], "recall": r["recall"], "map50": r["map50"], "map": r["map"]})
    base = rows[0]["map50"] or 1.0
    for row in rows:
        row["rel_map50"] = row["map50"] / base
    return rows


def format_table(rows: list[dict]) -> str:
    """Fixed-width table for the console and the README."""
    head = "%10s %10s %10s %10s %10s %10s %12s" % ("target", "sparsity", "P", "R", "mAP50", "mAP50-95", "rel mAP50")
    lines = [head] + ["%10.2f %10.3f %10.3f %10.3f %10.3f %10.3f %12.3f" % (
        r["target"], r["sparsity"], r["precision"], r["recall"], r["map50"], r["map"], r["rel_map50"]) for r in rows]
    return "\n".join(lines)


def save_sweep(results: dict[str, list[dict]], save_dir: Path) -> tuple[Path, Path]:
    """sparsity_map.csv and sparsity_map.png: mAP@0.5 and mAP@0.5:0.95 against measured sparsity, per method."""
    from utils.plots import plot_xy

    csv_file = save_dir / "sparsity_map.csv"
    with open(csv_file, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", *COLUMNS])
        w.writeheader()
        for method, rows in results.items():
            w.writerows({"method": method, **{k: round(r[k], 5) for k in COLUMNS}} for r in rows)
    series, labels = [], []
    for method, rows in results.items():
        series += [[r["map50"] for r in rows], [r["map"] for r in rows]]
        labels += [f"{method} mAP@0.5", f"{method} mAP@0.5:0.95"]
    xs = [r["target"] for r in next(iter(results.values()))]
    png = plot_xy(xs, series, labels=labels, xlabel="global sparsity of prunable weights", ylabel="mAP",
                  file=save_dir / "sparsity_map.png", title="one-shot pruning: mAP against sparsity")
    return csv_file, png
