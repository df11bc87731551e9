"""Metric plots written by val (PR, F1, P, R curves and the confusion matrix), rendered off-screen with Agg."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.metrics import ConfusionMatrix, smooth

DPI = 250
LEGEND_MAX = 21  # per-class legends beyond this are unreadable; draw grey lines instead


def _new_axes(figsize: tuple[float, float] = (9, 6)) -> tuple[Figure, object]:
    """A pyplot-free figure, so plotting from worker threads or headless CI never touches global GUI state."""
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 1)


def _finish(fig: Figure, ax: object, title: str, xlabel: str, ylabel: str, path: Path) -> Path:
    """Shared axes styling and save, so every curve looks the same."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, path: Path, names: dict[int, str]) -> Path:
    """Precision vs recall at IoU 0.5 (py: one row per class), per class when few, with the class mean in bold."""
    fig, ax = _new_axes()
    py = py.T if len(py) else np.zeros((len(px), 1))
    if 0 < len(names) < LEGEND_MAX and py.shape[1] == len(names):
        for i, y in enumerate(py.T):
            ax.plot(px, y, linewidth=1, label=f"{names[i]} {ap[i, 0]:.3f}")
    else:
        ax.plot(px, py, linewidth=1, color="grey")
    mean_ap = ap[:, 0].mean() if len(ap) else 0.0
    ax.plot(px, py.mean(1), linewidth=3, color="blue", label=f"all classes {mean_ap:.3f} mAP@0.5")
    return _finish(fig, ax, "Precision-Recall Curve", "Recall", "Precision", path)


def plot_mc_curve(
    px: np.ndarray,
    py: np.ndarray,
    path: Path,
    names: dict[int, str],
    xlabel: str = "Confidence",
    ylabel: str = "Metric",
) -> Path:
    """Metric vs confidence threshold; the legend gives the best smoothed mean and where it is reached."""
    fig, ax = _new_axes()
    if 0 < len(names) < LEGEND_MAX and len(py) == len(names):
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f"{names[i]}")
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    y = smooth(py.mean(0), 0.05) if len(py) else np.zeros_like(px)
    ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    return _finish(fig, ax, f"{ylabel}-Confidence Curve", xlabel, ylabel, path)


def plot_metric_curves(
    px: np.ndarray,
    py: np.ndarray,
    ap: np.ndarray,
    p: np.ndarray,
    r: np.ndarray,
    f1: np.ndarray,
    save_dir: Path,
    names: dict[int, str],
    prefix: str = "",
) -> list[Path]:
    """The four files Ultralytics val writes: PR_curve, F1_curve, P_curve, R_curve (.png)."""
    return [
        plot_pr_curve(px, py, ap, save_dir / f"{prefix}PR_curve.png", names),
        plot_mc_curve(px, f1, save_dir / f"{prefix}F1_curve.png", names, ylabel="F1"),
        plot_mc_curve(px, p, save_dir / f"{prefix}P_curve.png", names, ylabel="Precision"),
        plot_mc_curve(px, r, save_dir / f"{prefix}R_curve.png", names, ylabel="Recall"),
    ]


def plot_confusion_matrix(matrix: np.ndarray, path: Path, names: Sequence[str], normalize: bool = True) -> Path:
    """Heatmap of the confusion matrix (columns normalised to sum to 1), annotated when classes are few."""
    nc = len(matrix) - 1
    array = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array = np.where(array < 0.005, np.nan, array)  # blank rather than a wall of 0.00
    fig, ax = _new_axes((12, 9))
    im = ax.imshow(array, cmap="Blues", vmin=0.0)
    fig.colorbar(im, ax=ax)
    ticks = list(names) + ["background"] if 0 < len(names) < 99 and len(names) == nc else None
    if ticks:
        ax.set_xticks(range(nc + 1), ticks, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), ticks, fontsize=8)
    if nc < 30:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for (i, j), v in np.ndenumerate(array):
                if not np.isnan(v):
                    color = "white" if v > 0.5 else "black"  # readable on dark cells
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_confusion(cm: ConfusionMatrix, save_dir: str | Path = "", names: Sequence[str] | dict = (),
                   normalize: bool = True) -> Path:
    """Write a ConfusionMatrix as confusion_matrix.png into save_dir; returns its path."""
    names = list(names.values()) if isinstance(names, dict) else list(names)
    return plot_confusion_matrix(cm.matrix, Path(save_dir) / "confusion_matrix.png", names, normalize)


def curve_plotter(save_dir: str | Path, prefix: str = "") -> Callable[..., None]:
    """The on_curves callback of utils.metrics.ap_per_class that writes the PR/F1/P/R curve PNGs into save_dir."""
    return lambda px, py, ap, p, r, f1, names: plot_metric_curves(px, py, ap, p, r, f1, Path(save_dir), names, prefix)
