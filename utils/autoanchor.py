"""AutoAnchor: measure how well the Detect anchors fit a dataset's boxes and re-fit them when they do not."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.yolo import check_anchor_order
from utils.torch_utils import de_parallel

PREFIX = "AutoAnchor: "
MIN_BPR = 0.98  # below this best possible recall the anchors are re-fitted


def _stride(detect: Any) -> torch.Tensor:
    """Detect strides as a (nl, 1, 1) tensor matching the anchors' device and dtype."""
    s = torch.as_tensor(detect.stride)
    return s.to(device=detect.anchors.device, dtype=detect.anchors.dtype).view(-1, 1, 1)


def anchor_metrics(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, anchors above threshold per target): a target counts if some anchor's w and h ratios are < thr."""
    x = _worst_side_ratio(wh, anchors)
    best = x.max(1)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def _label_wh(dataset: Any, img_size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Box sizes in pixels at the training size, optionally jittered by +/-10% like the scale augmentation."""
    shapes = np.asarray(dataset.shapes, dtype=np.float64)[:, ::-1]  # datasets store (h, w); labels are (w, h)
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    scale = rng.uniform(0.9, 1.1, size=(len(shapes), 1)) if rng is not None else np.ones((len(shapes), 1))
    wh = [np.asarray(l, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, l in zip(shapes * scale, dataset.labels)]
    return np.concatenate(wh, 0) if wh else np.zeros((0, 2))


def check_anchors(dataset: Any, model: Any, thr: float = 4.0, imgsz: int = 640) -> float:
    """Report anchor fit (BPR) before training and swap in k-means anchors only if they fit better; returns final BPR."""
    detect = de_parallel(model).model[-1]
    wh = _label_wh(dataset, imgsz, np.random.default_rng(0))
    if not len(wh):
        print(f"{PREFIX}no labels found, skipping anchor check")
        return 0.0
    stride = _stride(detect)
    anchors = (detect.anchors.detach() * stride).cpu().view(-1, 2).numpy().astype(np.float64)
    bpr, aat = anchor_metrics(wh, anchors, thr)
    msg = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > MIN_BPR:
        print(msg + "Current anchors are a good fit to dataset")
        return bpr
    print(msg + "Anchors are a poor fit to dataset, attempting to improve...")
    na = detect.anchors.numel() // 2
    new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False)
    new_bpr, _ = anchor_metrics(wh, new, thr)
    if new_bpr <= bpr:
        print(f"{PREFIX}Done (original anchors better than new anchors, proceeding with original anchors)")
        return bpr
    new_t = torch.tensor(new, device=detect.anchors.device, dtype=detect.anchors.dtype)
    detect.anchors[:] = new_t.view_as(detect.anchors) / stride
    if check_anchor_order(detect):
        print(f"{PREFIX}Reversing anchor order")
    print(f"{PREFIX}Done, new BPR {new_bpr:.3f} (optional: update the model *.yaml to use these anchors in the future)")
    return new_bpr


def _worst_side_ratio(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, na) min(r, 1/r) of the worse side per target/anchor pair; flat ufuncs instead of a reduction over a
    length-2 axis (the evolution calls this 1000 times), same values."""
    rw, rh = wh[:, None, 0] / anchors[None, :, 0], wh[:, None, 1] / anchors[None, :, 1]
    return np.minimum(np.minimum(rw, 1 / rw), np.minimum(rh, 1 / rh))


def _fitness(k: np.ndarray, wh: np.ndarray, thr: float) -> float:
    """Mean best-anchor ratio over targets that pass the threshold: what the evolution maximises."""
    best = _worst_side_ratio(wh, k).max(1)
    return float((best * (best > 1 / thr)).mean())


def _kmeans_init(wh: np.ndarray, n: int, img_size: int, rng: np.random.Generator) -> np.ndarray:
    """Whitened k-means centroids; random sizes when there are too few distinct boxes for n clusters."""
    from scipy.cluster.vq import kmeans

    if n <= len(wh):
        s = wh.std(0)
        s[s == 0] = 1.0  # identical widths or heights: nothing to whiten
        k = kmeans(wh / s, n, iter=30, rng=rng)[0] * s
        if len(k) == n:
            return k
    print(f"{PREFIX}switching strategies from kmeans to random init")
    return np.sort(rng.random(n * 2)).reshape(n, 2) * img_size


def _evolve(k: np.ndarray, wh: np.ndarray, thr: float, gen: int, rng: np.random.Generator) -> np.ndarray:
    """Genetic refinement: mutate anchor sizes multiplicatively and keep a mutation only if fitness improves."""
    f, mp, sigma = _fitness(k, wh, thr), 0.9, 0.1  # fitness, mutation probability, mutation sigma
    for _ in range(gen):
        v = np.ones(k.shape)
        while (v == 1).all():  # a no-op mutation would waste the generation
            v = ((rng.random(k.shape) < mp) * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = _fitness(kg, wh, thr)
        if fg > f:
            f, k = fg, kg
    return k


def kmean_anchors(dataset: Any, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True, seed: int = 0) -> np.ndarray:
    """Anchors (n, 2) in pixels, sorted by area, fitted to the dataset's boxes by k-means then evolution (seeded)."""
    rng = np.random.default_rng(seed)
    wh0 = _label_wh(dataset, img_size)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        print(f"{PREFIX}WARNING: extremely small objects found: {tiny} of {len(wh0)} labels are < 3 pixels in size")
    wh = wh0[(wh0 >= 2.0).any(1)]  # sub-2-pixel boxes carry no shape information
    if not len(wh):
        raise ValueError(f"{PREFIX}no boxes of at least 2 pixels in the dataset labels: check the label files")
    k = _kmeans_init(wh, n, img_size, rng)
    k = _evolve(k, wh, thr, gen, rng)
    k = k[np.argsort(k.prod(1))]
    if verbose:
        bpr, aat = anchor_metrics(wh0, k, thr)
        sizes = ", ".join(f"{round(a)},{round(b)}" for a, b in k)
        print(f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr, n={n}, "
              f"img_size={img_size}, anchors: {sizes}")
    return k
