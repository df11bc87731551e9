"""Drawing and charts: box annotation, crops, training curves, label statistics and batch mosaics."""
from __future__ import annotations

import math
import multiprocessing
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Fixed palette so a class keeps its colour across images, runs and scripts (Ultralytics hex values).
_PALETTE_HEX = (
    "FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
    "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7",
)
_PALETTE_RGB = tuple(tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in _PALETTE_HEX)


from utils.logger import LOGGER


class BackgroundPlots:
    """Plots drawn in forked processes while the caller goes on (matplotlib is single-threaded Python, so a
    second core only helps from another process); join() waits for them. Without fork they run inline."""

    def __init__(self) -> None:
        self.procs: list = []

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not sys.platform.startswith("linux"):  # macOS/Windows: fork is unsafe or missing
            _plot_safely(fn, args, kwargs)
            return
        proc = multiprocessing.get_context("fork").Process(target=_plot_safely, args=(fn, args, kwargs))
        proc.start()
        self.procs.append(proc)

    def join(self) -> None:
        for proc in self.procs:
            proc.join()
        self.procs = []


def _plot_safely(fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """A failed plot is a warning, never a failed run."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        LOGGER.warning(f"WARNING ⚠️ {getattr(fn, '__name__', 'plot')} failed: {e}")


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class i from the 20-colour palette; bgr=True for OpenCV images."""
    c = _PALETTE_RGB[int(i) % len(_PALETTE_RGB)]
    return (c[2], c[1], c[0]) if bgr else c


def _to_numpy(x: Any) -> np.ndarray:
    """Tensor or array-like -> numpy, without importing torch here (plots must stay light)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _figure(nrows: int, ncols: int, size: tuple[float, float], tight: bool = True) -> tuple[Figure, np.ndarray]:
    """Figure on the Agg canvas (no pyplot global state, no display needed); tight=False for fixed margins."""
    fig = Figure(figsize=size, layout="tight" if tight else None)  # tight_layout=False would still mean tight
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


class Annotator:
    """Draws labelled boxes onto an image with OpenCV only (no font files to download)."""

    def __init__(self, im: np.ndarray, line_width: int | None = None, font_size: float | None = None,
                 pil: bool = False, example: str = "") -> None:
        im = np.asarray(im)  # accepts PIL images too; pil=True is kept for Ultralytics call compatibility
        # OpenCV draws in place only on contiguous writable arrays; otherwise work on a copy (read it via result())
        self.im = im if im.flags.c_contiguous and im.flags.writeable else np.ascontiguousarray(im).copy()
        self.lw = line_width or max(round(sum(self.im.shape[:2]) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # font thickness
        self.fs = font_size / 30 if font_size else self.lw / 3  # cv2 font scale; font_size given in pixels

    def box_label(self, box: Sequence[float], label: str = "", color: tuple[int, int, int] = (128, 128, 128),
                  txt_color: tuple[int, int, int] = (255, 255, 255)) -> None:
        """Rectangle for xyxy box plus a filled tag with the label, placed inside the image when near the top."""
        p1 = (int(box[0]), int(box[1]))
        p2 = (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if not label:
            return
        w, h = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, self.fs, self.tf)[0]
        outside = p1[1] - h - 3 >= 0  # tag above the box unless that leaves the image
        p2 = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(self.im, p1, p2, color, -1, cv2.LINE_AA)
        org = (p1[0], p1[1] - 2 if outside else p1[1] + h + 2)
        cv2.putText(self.im, label, org, cv2.FONT_HERSHEY_SIMPLEX, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def rectangle(self, xy: Sequence[float], fill: tuple[int, int, int] | None = None,
                  outline: tuple[int, int, int] | None = None, width: int = 1) -> None:
        """Plain rectangle (filled when fill is given)."""
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, fill, -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, outline, width)

    def text(self, xy: Sequence[float], text: str, txt_color: tuple[int, int, int] = (255, 255, 255)) -> None:
        """Text with its top-left corner at xy."""
        h = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, self.fs, self.tf)[0][1]
        org = (int(xy[0]), int(xy[1]) + h)
        cv2.putText(self.im, text, org, cv2.FONT_HERSHEY_SIMPLEX, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated image as a numpy array."""
        return np.asarray(self.im)


def _unique_path(path: Path) -> Path:
    """path, or path with 2, 3, ... appended to the stem so crops never overwrite each other."""
    if not path.exists():
        return path
    for n in range(2, 100000):
        candidate = path.with_name(f"{path.stem}{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"too many files named like {path}")


def save_one_box(xyxy: Any, im: np.ndarray, file: str | Path = Path("im.jpg"), gain: float = 1.02,
                 pad: int = 10, square: bool = False, BGR: bool = False, save: bool = True) -> np.ndarray:
    """Crop a detection (grown by gain and pad so the object is not cut) from a BGR image, for --save-crop."""
    b = _to_numpy(xyxy).astype(np.float64).reshape(-1, 4)
    wh = b[:, 2:] - b[:, :2]
    center = (b[:, :2] + b[:, 2:]) / 2
    if square:
        wh = wh.max(1, keepdims=True).repeat(2, axis=1)
    wh = wh * gain + pad
    x1, y1 = (center - wh / 2)[0]
    x2, y2 = (center + wh / 2)[0]
    h, w = im.shape[:2]
    x1, x2 = int(np.clip(x1, 0, w)), int(np.clip(x2, 0, w))
    y1, y2 = int(np.clip(y1, 0, h)), int(np.clip(y2, 0, h))
    crop = im[y1:y2, x1:x2, ::(1 if BGR else -1)]
    if save:
        file = Path(file).with_suffix(".jpg")
        file.parent.mkdir(parents=True, exist_ok=True)
        bgr = crop if BGR else crop[..., ::-1]
        cv2.imwrite(str(_unique_path(file)), np.ascontiguousarray(bgr))
    return crop


def plot_results(file: str | Path = "results.csv", dir: str | Path = "") -> Path:
    """results.png beside results.csv: one panel per numeric column against epoch (extra columns included)."""
    import pandas as pd  # heavy, only for results.png

    file = Path(file) if file else Path(dir) / "results.csv"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: pass the results.csv written by train.py")
    data = pd.read_csv(file)
    data.columns = [c.strip() for c in data.columns]  # Ultralytics pads headers with spaces
    x = data["epoch"].to_numpy() if "epoch" in data.columns else np.arange(len(data))
    cols = [c for c in data.columns if c != "epoch" and pd.api.types.is_numeric_dtype(data[c])]
    ncols = 5 if len(cols) > 4 else max(len(cols), 1)
    nrows = max(math.ceil(len(cols) / ncols), 1)
    fig, axes = _figure(nrows, ncols, (3 * ncols, 2.5 * nrows), tight=False)
    # fixed margins: tight_layout measured every tick label and took ~45% of this plot's time
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1 / nrows, top=1 - 0.1 / nrows, wspace=0.35, hspace=0.5)
    for ax, col in zip(axes.ravel(), cols):
        y = data[col].to_numpy(dtype=float)
        ax.plot(x, y, marker=".", label="results", linewidth=2, markersize=6)
        if len(y) > 2:
            ax.plot(x, _smooth(y), ":", label="smooth", linewidth=2)
        ax.set_title(col, fontsize=10)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    out = file.with_name("results.png")
    fig.savefig(out, dpi=200)
    return out


def _smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter smoothing with a window of ~f of the series length (trend line for noisy losses)."""
    nf = 2 * round(len(y) * f) + 1  # odd window keeps the output aligned with x
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def plot_labels(labels: Any, names: Sequence[str] | dict = (), save_dir: str | Path = Path("")) -> Path:
    """labels.jpg: class histogram, box outlines, centre and size distributions of a training set."""
    labels = _to_numpy(labels).reshape(-1, 5)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = int(c.max() + 1) if len(c) else max(len(names), 1)
    names = list(names.values()) if isinstance(names, dict) else list(names)
    fig, axes = _figure(2, 2, (8, 8))
    ax = axes.ravel()
    counts = np.bincount(c, minlength=nc)
    ax[0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    if 0 < len(names) <= 30:
        ax[0].set_xticks(range(len(names)))
        ax[0].set_xticklabels(names, rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")
    ax[1].imshow(_box_outlines(c, b))
    ax[1].axis("off")
    ax[2].hist2d(b[:, 0], b[:, 1], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
    ax[2].set_xlabel("x")
    ax[2].set_ylabel("y")
    ax[3].scatter(b[:, 2], b[:, 3], s=2, alpha=0.3)
    ax[3].set_xlim(0, 1)
    ax[3].set_ylim(0, 1)
    ax[3].set_xlabel("width")
    ax[3].set_ylabel("height")
    out = Path(save_dir) / "labels.jpg"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=200)
    return out


def _box_outlines(c: np.ndarray, b: np.ndarray, size: int = 1000, limit: int = 1000) -> np.ndarray:
    """Up to `limit` boxes drawn centred on a white canvas: shows the spread of box shapes."""
    canvas = np.full((size, size, 3), 255, np.uint8)
    for cls, (_, _, w, h) in zip(c[:limit], b[:limit]):
        x1, y1 = int((0.5 - w / 2) * size), int((0.5 - h / 2) * size)
        x2, y2 = int((0.5 + w / 2) * size), int((0.5 + h / 2) * size)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colors(cls), 1)
    return canvas


def plot_images(images: Any, targets: Any, paths: Sequence[str] | None = None, fname: str | Path = "images.jpg",
                names: Sequence[str] | dict | None = None, max_size: int = 1920, max_subplots: int = 16,
                conf_thres: float = 0.25) -> Path:
    """Mosaic of a batch with its boxes; targets rows are [batch_idx, cls, cx, cy, w, h(, conf)]."""
    images = _to_numpy(images)
    targets = _to_numpy(targets)
    targets = targets.reshape(-1, targets.shape[-1] if targets.size else 6)
    if images.dtype != np.uint8:
        images = images * 255 if images.max() <= 1.0 else images  # de-normalise float batches
        images = images.clip(0, 255).astype(np.uint8)
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # tiles per side
    scale = min(max_size / ns / max(h, w), 1.0)
    hs, ws = math.ceil(scale * h), math.ceil(scale * w)
    mosaic = np.full((ns * hs, ns * ws, 3), 255, np.uint8)
    for i in range(bs):
        x0, y0 = ws * (i % ns), hs * (i // ns)
        tile = images[i].transpose(1, 2, 0)
        mosaic[y0:y0 + hs, x0:x0 + ws] = cv2.resize(tile, (ws, hs)) if scale < 1 else tile
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else (names or {})
    annotator = Annotator(mosaic, line_width=max(round(ws / 200), 1), font_size=max(hs / 20, 12))
    for i in range(bs):
        x0, y0 = ws * (i % ns), hs * (i // ns)
        annotator.rectangle((x0, y0, x0 + ws, y0 + hs), outline=(255, 255, 255), width=2)
        if paths is not None and i < len(paths):
            annotator.text((x0 + 5, y0 + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        _draw_targets(annotator, targets[targets[:, 0] == i], (x0, y0), (w, h), scale, names, conf_thres)
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), cv2.cvtColor(annotator.result(), cv2.COLOR_RGB2BGR))
    return fname


def _draw_targets(annotator: Annotator, t: np.ndarray, offset: tuple[int, int], size: tuple[int, int],
                  scale: float, names: dict, conf_thres: float) -> None:
    """Boxes of one tile: normalised or pixel xywh, labels alone or predictions with a confidence column."""
    if not len(t):
        return
    boxes = t[:, 2:6].astype(np.float64).copy()
    is_pred = t.shape[1] > 6
    if boxes.max() <= 1.01:  # normalised coordinates
        boxes *= (size[0], size[1], size[0], size[1])
    boxes *= scale
    xyxy = np.concatenate((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)
    xyxy += (offset[0], offset[1], offset[0], offset[1])
    for j, box in enumerate(xyxy):
        cls = int(t[j, 1])
        conf = float(t[j, 6]) if is_pred else None
        if conf is not None and conf < conf_thres:
            continue
        name = names.get(cls, str(cls))
        label = name if conf is None else f"{name} {conf:.1f}"
        annotator.box_label(box, label, color=colors(cls))


def plot_xy(x: Sequence[float], ys: Sequence[Sequence[float]], labels: Sequence[str] | None = None,
            xlabel: str = "", ylabel: str = "", file: str | Path = "plot.png", title: str = "") -> Path:
    """One chart with a line per series (e.g. mAP against sparsity for several recipes)."""
    fig, axes = _figure(1, 1, (6, 4))
    ax = axes[0, 0]
    ys = [ys] if len(ys) and np.ndim(ys[0]) == 0 else ys  # a single series is allowed
    labels = labels or [None] * len(ys)
    for y, label in zip(ys, labels):
        ax.plot(x, y, marker="o", linewidth=2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if any(labels):
        ax.legend()
    ax.grid(alpha=0.3)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=150)
    return file
