"""The pruning flags val.py and export.py used to own, kept as thin aliases of prune.py for now.

Each use prints one line naming the prune.py command, then runs the same library call prune.py makes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from torch import nn

from utils.checkpoint import save_checkpoint
from utils.data_config import check_dataset
from utils.export.pipeline import output_path
from utils.files import increment_path
from utils.logger import LOGGER

from .channel import ALLOCATIONS, IMPORTANCE
from .methods import METHOD_CHOICES
from .tasks import ShotSpec, prune_checkpoint, prune_in_place, run_sensitivity, run_sweep

VAL_FLAGS = ("sparsity", "prune_method", "calib_batches", "calib_images", "mask_type", "sensitivity",
             "sensitivity_levels", "sensitivity_images", "sensitivity_table", "recipe_sparsity", "channel_prune",
             "channel_importance", "channel_allocation")
EXPORT_FLAGS = ("sparsity", "prune_method", "mask_type", "channel_prune", "channel_importance", "channel_allocation")
_HIDE = "deprecated: see prune.py"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(",", " ").split()]


def add_channel_args(p: argparse.ArgumentParser) -> None:
    """--channel-prune/--channel-importance/--channel-allocation (val.py and export.py aliases)."""
    p.add_argument("--channel-prune", type=float, default=0.0, help=f"{_HIDE} --method channel --sparsity F")
    p.add_argument("--channel-importance", choices=IMPORTANCE, default="bn", help=_HIDE)
    p.add_argument("--channel-allocation", choices=ALLOCATIONS, default="global", help=_HIDE)


def add_val_args(p: argparse.ArgumentParser) -> None:
    """val.py's old pruning flags."""
    p.add_argument("--sparsity", type=_floats, default=None, help=f"{_HIDE} --sweep LEVELS")
    p.add_argument("--prune-method", nargs="+", choices=METHOD_CHOICES, default=["global"], help=f"{_HIDE} --method")
    p.add_argument("--calib-batches", type=int, default=0, help=_HIDE)
    p.add_argument("--calib-images", type=int, default=128, help=_HIDE)
    p.add_argument("--mask-type", choices=["unstructured", "block4"], default="unstructured", help=_HIDE)
    p.add_argument("--sensitivity", action="store_true", help=f"{_HIDE} --sensitivity")
    p.add_argument("--sensitivity-levels", type=_floats, default=None, help=_HIDE)
    p.add_argument("--sensitivity-images", type=int, default=16, help=_HIDE)
    p.add_argument("--sensitivity-table", type=str, default=None, help=_HIDE)
    p.add_argument("--recipe-sparsity", type=float, nargs="+", default=None, help=_HIDE)
    add_channel_args(p)


def add_export_args(p: argparse.ArgumentParser) -> None:
    """export.py's old one-shot flags."""
    p.add_argument("--sparsity", type=float, default=0.0, help=f"{_HIDE} --sparsity (then export the new .pt)")
    p.add_argument("--prune-method", choices=METHOD_CHOICES, default="obc", help=f"{_HIDE} --method")
    p.add_argument("--mask-type", choices=["unstructured", "block4"], default="unstructured", help=_HIDE)
    add_channel_args(p)


def _say(old: str, new: str) -> None:
    LOGGER.warning(f"WARNING ⚠️ {old} is deprecated and will be removed; use: python prune.py {new}")


def val_alias(kw: dict[str, Any], old: dict[str, Any]) -> tuple[bool, Any]:
    """(True, result) when an old val.py pruning flag did the whole job; (False, None) to validate kw as usual."""
    if not (old["sparsity"] or old["sensitivity"] or old["channel_prune"]):
        return False, None
    w, d, size = kw["weights"], kw["data"], kw["imgsz"]
    data = check_dataset(d, allow_code=kw.get("allow_download_code", False))
    spec = dict(data=data, imgsz=size, calib_images=old["calib_images"], mask_type=old["mask_type"],
                calib_batches=old["calib_batches"], importance=old["channel_importance"],
                allocation=old["channel_allocation"], sensitivity_table=old["sensitivity_table"])
    save_dir = increment_path(Path(kw["project"]) / kw["name"], exist_ok=kw["exist_ok"], mkdir=True)
    if old["sensitivity"]:
        _say("val.py --sensitivity", f"--weights {w} --data {d} --sensitivity")
        return True, run_sensitivity(w, spec["data"], size, save_dir, old["sensitivity_levels"],
                                     old["sensitivity_images"], old["recipe_sparsity"], old["mask_type"])
    if old["sparsity"]:
        methods = old["prune_method"] or ["global"]
        _say("val.py --sparsity", f"--weights {w} --data {d} --sweep {','.join(map(str, old['sparsity']))} "
                                  f"--method {' '.join(methods)}")
        return True, run_sweep(w, spec["data"], old["sparsity"], [ShotSpec(m, **spec) for m in methods], save_dir,
                               kw["batch_size"], kw["workers"], conf_thres=kw["conf_thres"],
                               iou_thres=kw["iou_thres"], max_det=kw["max_det"], single_cls=kw["single_cls"])
    _say("val.py --channel-prune", f"--weights {w} --data {d} --method channel --sparsity {old['channel_prune']}")
    kw["weights"] = str(prune_checkpoint(w, old["channel_prune"], ShotSpec("channel", **spec), save_dir))
    kw["exist_ok"], kw["project"], kw["name"] = True, str(save_dir.parent), save_dir.name
    return False, None


def export_alias(old: dict[str, Any], weights: str, imgsz: int, data: str | None = None,
                 calib_images: int = 128) -> Callable[[nn.Module], str] | None:
    """export.py --sparsity/--channel-prune: a step that prunes the loaded model (channel first) and names the file;
    a channel-pruned model is also saved as <stem>_cpNN.pt beside the export."""
    if not (old["sparsity"] or old["channel_prune"]):
        return None
    spec = dict(data=check_dataset(data) if data else None, imgsz=imgsz, calib_images=calib_images,
                mask_type=old["mask_type"], importance=old["channel_importance"],
                allocation=old["channel_allocation"])
    if old["sparsity"] and not 0.0 < old["sparsity"] < 1.0:
        raise ValueError(f"--sparsity must be in (0, 1) for a one-shot export, got {old['sparsity']}")
    if old["channel_prune"] and not 0.0 < old["channel_prune"] < 1.0:
        raise ValueError(f"--channel-prune is the fraction of conv FLOPs to remove, in (0, 1); got "
                         f"{old['channel_prune']}")
    steps = []
    if old["channel_prune"]:
        _say("export.py --channel-prune", f"--weights {weights} --method channel --sparsity {old['channel_prune']}")
        steps.append((ShotSpec("channel", **spec), old["channel_prune"]))
    if old["sparsity"]:
        _say("export.py --sparsity", f"--weights {weights} --method {old['prune_method']} --sparsity {old['sparsity']}")
        steps.append((ShotSpec(old["prune_method"], **spec), old["sparsity"]))

    def step(model: nn.Module) -> str:
        tags = ""
        for s, level in steps:
            tags += prune_in_place(model, level, s)
            if s.method == "channel":
                save_structured(model, weights, tags)
        return tags

    return step


def save_structured(model: nn.Module, weights: str, tag: str) -> Path:
    """export.py --channel-prune also writes the smaller network as a checkpoint (fine-tune it with train.py)."""
    weights_path = Path(weights)
    pt = output_path(weights_path.with_name(f"{weights_path.stem}{tag}.pt"), suffix=".pt", log=LOGGER.info)
    meta = {k: v for k, v in (getattr(model, "checkpoint_meta", None) or {}).items() if k in ("names", "epoch")}
    save_checkpoint(pt, model, **meta)
    LOGGER.info(f"export: channel-pruned checkpoint {pt} (fine-tune it with train.py --weights {pt})")
    return pt
