"""mAP against global sparsity: the sweep's header line, console table, CSV and plot (pipeline.sweep_methods runs it)."""
from __future__ import annotations

import csv
from pathlib import Path

import torch.nn as nn

from .measure import all_param_sparsity, global_sparsity

COLUMNS = ("target", "sparsity", "sparsity_all_params", "precision", "recall", "map50", "map", "rel_map50", "prune_s")


def sparsity_header(model: nn.Module) -> str:
    """The line val.py prints before its table: which fraction is which matters when comparing with Ultralytics."""
    return (f"Global sparsity: {global_sparsity(model):.3f} of prunable conv/linear weights, "
            f"{all_param_sparsity(model):.3f} of all parameters")


def format_table(rows: list[dict]) -> str:
    """Fixed-width table for the console and the README."""
    head = "%10s %10s %10s %10s %10s %10s %12s" % ("target", "sparsity", "P", "R", "mAP50", "mAP50-95", "rel mAP50")
    lines = [head] + ["%10.2f %10.3f %10.3f %10.3f %10.3f %10.3f %12.3f" % (
        r["target"], r["sparsity"], r["precision"], r["recall"], r["map50"], r["map"], r["rel_map50"]) for r in rows]
    return "\n".join(lines)


def write_csv(results: dict[str, list[dict]], file: Path) -> Path:
    """sparsity_map.csv: one row per (method, level); rewritten after every row during a sweep."""
    with open(file, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", *COLUMNS])
        w.writeheader()
        for method, rows in results.items():
            w.writerows({"method": method, **{k: round(r.get(k, float("nan")), 5) for k in COLUMNS}} for r in rows)
    return file


def plot_sweep(results: dict[str, list[dict]], file: Path, title: str = "one-shot pruning",
               targets: dict[float, float] | None = None) -> Path:
    """mAP@0.5:0.95 (left) and mAP@0.5 (right) against measured sparsity: one colour per method, dashed = +recal.

    targets: {sparsity: mAP@0.5:0.95} drawn as crosses on the left panel (e.g. issue targets).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), tight_layout=True)
    colours: dict[str, str] = {}
    for label, rows in results.items():
        base = label.removesuffix("+recal")
        colour = colours.setdefault(base, f"C{len(colours)}")
        style = "--" if label.endswith("+recal") else "-"
        xs = [r["sparsity"] for r in rows]
        for ax, key in zip(axes, ("map", "map50")):
            name = label + (" (Ultralytics prune())" if label == "layerwise" else "")
            ax.plot(xs, [r[key] for r in rows], style, color=colour, marker=".", label=name)
    if targets:
        axes[0].plot(list(targets), list(targets.values()), "kx", markersize=9, label="target")
    for ax, name in zip(axes, ("mAP@0.5:0.95", "mAP@0.5")):
        ax.set(xlabel="global sparsity of prunable weights", ylabel=name, title=f"{title}: {name}", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(file, dpi=150)
    plt.close(fig)
    return Path(file)


def save_sweep(results: dict[str, list[dict]], save_dir: Path) -> tuple[Path, Path]:
    """sparsity_map.csv and sparsity_map.png in save_dir."""
    return write_csv(results, save_dir / "sparsity_map.csv"), plot_sweep(results, save_dir / "sparsity_map.png")


def read_csv(file: Path) -> dict[str, list[dict]]:
    """sparsity_map.csv back into {method: rows} (for merging sweeps run in separate processes)."""
    results: dict[str, list[dict]] = {}
    if not Path(file).is_file():
        raise FileNotFoundError(f"{file} not found; pass sparsity_map.csv files written by val.py --sparsity")
    with open(file, newline="") as f:
        for r in csv.DictReader(f):
            results.setdefault(r["method"], []).append({k: float(r[k]) for k in COLUMNS if r.get(k) not in (None, "")})
    if not results:
        raise ValueError(f"{file} holds no sweep rows; pass a sparsity_map.csv written by val.py --sparsity")
    return results


def merge(files: list[Path], out_dir: Path, title: str = "one-shot pruning",
          targets: dict[float, float] | None = None) -> tuple[Path, Path]:
    """One CSV and one plot from several sweeps (e.g. one process per method or per range of levels).

    Rows of one method from several files are joined and sorted by level (a repeated level keeps the later file's
    row); a method run without level 0 gets the dense row of another (it is the same unpruned model), and
    rel_map50 is recomputed against it so split runs compare like one run.
    """
    results: dict[str, dict[float, dict]] = {}
    for f in files:
        for method, rows in read_csv(Path(f)).items():
            results.setdefault(method, {}).update({r["target"]: r for r in rows})
    dense = next((by_level[0.0] for by_level in results.values() if 0.0 in by_level), None)
    for by_level in results.values():  # level 0 is the same unpruned model for every method
        if dense is not None:
            by_level.setdefault(0.0, dict(dense))
    merged = {m: [by_level[t] for t in sorted(by_level)] for m, by_level in results.items()}
    for rows in merged.values():
        for r in rows:
            r["rel_map50"] = r["map50"] / dense["map50"] if dense and dense["map50"] else float("nan")
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_sweep(merged, out_dir / "sparsity_map.png", title, targets)
    return write_csv(merged, out_dir / "sparsity_map.csv"), png


if __name__ == "__main__":  # python -m utils.sparsity.sweep a/sparsity_map.csv b/sparsity_map.csv --out docs/results/x
    import argparse

    p = argparse.ArgumentParser(description="merge val.py --sparsity sweeps into one CSV and plot")
    p.add_argument("csv", nargs="+", type=Path, help="sparsity_map.csv files")
    p.add_argument("--out", type=Path, required=True, help="folder for the merged sparsity_map.csv/png")
    p.add_argument("--title", default="one-shot pruning", help="plot title")
    p.add_argument("--targets", default="", help="sparsity:mAP50-95 pairs drawn as crosses, e.g. 0.3:0.317,0.5:0.264")
    opt = p.parse_args()
    from utils.cli import exit_on_user_error

    with exit_on_user_error():  # missing or empty CSV, bad --targets: one line
        marks = dict(tuple(float(v) for v in pair.split(":")) for pair in opt.targets.split(",") if pair)
        print(*merge(opt.csv, opt.out, opt.title, marks), sep="\n")
