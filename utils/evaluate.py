"""Validation loop shared by val.py and the trainer: Ultralytics v7.0 matching rules, any engine or nn.Module."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy
from utils.dataloaders import create_dataloader
from utils.metrics import ConfusionMatrix, ap_per_class, box_match
from utils.nms import non_max_suppression
from utils.raw_head import RawPrediction

if TYPE_CHECKING:  # matplotlib is imported only when plotting
    from utils.plots import BackgroundPlots

HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4
IOUV = torch.linspace(0.5, 0.95, 10)


@dataclass
class EvalState:
    """Accumulates per-image matches, losses and timings over batches."""

    nc: int
    stats: list = field(default_factory=list)
    loss: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    dt: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    seen: int = 0
    confusion: ConfusionMatrix | None = None
    predictions: list = field(default_factory=list)  # (path, predn in original pixels) for json/txt


def _forward(model: Any, imgs: torch.Tensor, targets: torch.Tensor, compute_loss: Callable | None, st: EvalState):
    """Decoded predictions (B, N, no); for nn.Modules also accumulates the val loss the trainer logs."""
    if isinstance(model, nn.Module):
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(imgs.to(device))
        out = (out[0].cpu(), out[1]) if isinstance(out, (tuple, list)) else out.cpu()
        pred, raw = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        if compute_loss is not None and raw is not None:
            st.loss += compute_loss(raw, targets.to(device))[1].cpu()
        return pred
    out = model(imgs.numpy())
    return out if isinstance(out, RawPrediction) else torch.from_numpy(out)  # raw-head files: NMS decodes survivors


def _match_image(pred: torch.Tensor, labels: torch.Tensor, img_shape, shape0, ratio_pad, st: EvalState,
                 single_cls: bool) -> torch.Tensor:
    """Record one image's TP matrix at 10 IoUs in original-image pixels; returns predictions in those pixels."""
    nl = len(labels)
    if single_cls:
        pred[:, 5] = 0
    predn = pred.clone()
    scale_boxes(img_shape, predn[:, :4], shape0, ratio_pad)
    correct = torch.zeros(len(pred), len(IOUV), dtype=torch.bool)
    if nl and len(pred):
        tbox = scale_boxes(img_shape, xywh2xyxy(labels[:, 1:5]), shape0, ratio_pad)
        labelsn = torch.cat((labels[:, 0:1], tbox), 1)
        correct = box_match(predn, labelsn, IOUV)
        if st.confusion is not None:
            st.confusion.process_batch(predn, labelsn)
    elif nl and st.confusion is not None:
        st.confusion.process_batch(None, labels)
    st.stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
    return predn


def _run_batch(model, batch, st: EvalState, compute_loss, conf_thres, iou_thres, max_det, single_cls, keep) -> None:
    """Normalize, forward, NMS and match one dataloader batch."""
    imgs, targets, paths, shapes = batch
    t0 = time.perf_counter()
    imgs = imgs.float() / 255
    _, _, h, w = imgs.shape
    t1 = time.perf_counter()
    pred = _forward(model, imgs, targets, compute_loss, st)
    t2 = time.perf_counter()
    targets = targets.clone()
    targets[:, 2:] *= torch.tensor((w, h, w, h))
    preds = non_max_suppression(pred, conf_thres, iou_thres, multi_label=True, agnostic=single_cls, max_det=max_det)
    st.dt = [st.dt[0] + t1 - t0, st.dt[1] + t2 - t1, st.dt[2] + time.perf_counter() - t2]
    for si, p in enumerate(preds):
        st.seen += 1
        predn = _match_image(p, targets[targets[:, 0] == si, 1:], imgs[si].shape[1:], shapes[si][0], shapes[si][1],
                             st, single_cls)
        if keep:
            st.predictions.append((paths[si], shapes[si][0], predn))


def _curves(plots: bool, save_dir: Path | None) -> Callable | None:
    """The curve plotter for ap_per_class when plotting (matplotlib is imported only then)."""
    if not plots:
        return None
    from utils.plots_metrics import curve_plotter  # matplotlib only when plotting

    return curve_plotter(save_dir or Path("."))


def summarize(st: EvalState, names: list[str], plots: bool, save_dir: Path | None) -> dict:
    """mAP50, mAP50-95, mean P and R and per-class APs from accumulated matches (Ultralytics ap_per_class)."""
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*st.stats)] if st.stats else [np.zeros((0, 10))] * 4
    nt = np.bincount(stats[3].astype(int), minlength=st.nc) if len(stats[3]) else np.zeros(st.nc, int)
    res = {"precision": 0.0, "recall": 0.0, "map50": 0.0, "map": 0.0, "maps": np.zeros(st.nc), "per_class": [],
           "images": st.seen, "instances": int(nt.sum())}
    if len(stats[0]) and stats[0].any():
        tp, fp, p, r, f1, ap, ap_class = ap_per_class(*stats, names=names, on_curves=_curves(plots, save_dir))
        ap50, ap = ap[:, 0], ap.mean(1)
        res.update(precision=float(p.mean()), recall=float(r.mean()), map50=float(ap50.mean()), map=float(ap.mean()))
        res["maps"] = np.full(st.nc, res["map"])
        for i, c in enumerate(ap_class):
            res["maps"][c] = ap[i]
            res["per_class"].append((names[c], int(nt[c]), float(p[i]), float(r[i]), float(ap50[i]), float(ap[i])))
    res["instances_per_class"] = nt
    return res


def _start_curve_plots(st: EvalState, names: list[str], save_dir: Path | None) -> BackgroundPlots:
    """PR/F1/P/R curves drawn in another process while this one draws the confusion matrix."""
    from utils.plots import BackgroundPlots  # matplotlib only when plotting

    curves = BackgroundPlots()
    curves.run(summarize, st, names, True, save_dir)
    return curves


def evaluate(model: Any, dataloader, names: list[str], conf_thres: float = 0.001, iou_thres: float = 0.6,
             max_det: int = 300, compute_loss: Callable | None = None, plots: bool = False,
             save_dir: str | Path | None = None, single_cls: bool = False, keep_predictions: bool = False,
             verbose: bool = False, prefix: str = "") -> dict:
    """Validate an nn.Module (eval mode) or an Engine on a YOLO dataloader; returns metrics, loss, speed."""
    st = EvalState(nc=1 if single_cls else len(names))
    st.confusion = ConfusionMatrix(nc=st.nc) if plots else None
    for batch in tqdm(dataloader, desc=prefix + HEADER, bar_format="{l_bar}{bar:10}{r_bar}", leave=True):
        _run_batch(model, batch, st, compute_loss, conf_thres, iou_thres, max_det, single_cls, keep_predictions)
    curves = _start_curve_plots(st, names, Path(save_dir) if save_dir else None) if plots else None
    res = summarize(st, names, False, Path(save_dir) if save_dir else None)
    print(ROW % ("all", st.seen, res["instances"], res["precision"], res["recall"], res["map50"], res["map"]))
    if verbose and st.nc > 1:
        for name, n, p, r, ap50, ap in res["per_class"]:
            print(ROW % (name, st.seen, n, p, r, ap50, ap))
    if plots and st.confusion is not None and save_dir:
        from utils.plots_metrics import plot_confusion  # matplotlib only when plotting

        plot_confusion(st.confusion, save_dir, names)
    if curves is not None:
        curves.join()
    res["speed"] = tuple(x / max(st.seen, 1) * 1e3 for x in st.dt)
    res["loss"] = (st.loss / max(len(dataloader), 1)).tolist()
    res["predictions"] = st.predictions
    return res


def val_dataloader(data: dict, task: str, imgsz: int, batch_size: int, stride: int, rect: bool, workers: int,
                   single_cls: bool):
    """Ultralytics val loader: rectangular batches (pad 0.5) for dynamic engines, square for fixed-shape ones."""
    split = task if task in ("train", "val", "test") else "val"
    if split not in data:
        raise ValueError(f"dataset has no '{split}' split; add '{split}:' to the data yaml or use --task val")
    pad = 0.0 if task == "speed" else 0.5
    return create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect and task != "speed",
                             workers=workers, prefix=f"{split}: ", nc=len(data["names"]))
