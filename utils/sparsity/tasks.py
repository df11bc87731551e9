"""prune.py's jobs as library calls: one-shot prune a checkpoint to a new .pt, sweep mAP against the level, and
measure per-layer sensitivity (with recipes). export.py's and val.py's old pruning flags call the same functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from utils.checkpoint import load_model, save_checkpoint
from utils.data_config import check_dataset
from utils.dataloaders import create_dataloader
from utils.evaluate import evaluate, val_dataloader
from utils.logger import LOGGER
from utils.loss import ComputeLoss
from utils.trainer import load_hyp

from .channel import ALLOCATIONS, IMPORTANCE
from .measure import prunable_parameters
from .methods import get_method
from .oneshot import split_targets, zeros_to_reach
from .pipeline import OneShot, calibration_for, sweep_methods
from .recipe_writer import write_recipe
from .sweep import format_table, save_sweep, sparsity_header, write_csv
from .weight_allocation import sensitivity_allocation
from .weight_sensitivity import (
    DEFAULT_LEVELS,
    layer_sensitivity,
    plot_sensitivity,
    read_table,
    save_table,
    table_from_rows,
)

HYP = Path(__file__).resolve().parents[2] / "data/hyps/hyp.scratch-low.yaml"


@dataclass
class ShotSpec:
    """How the user asked to prune: method spec and the options each method reads."""

    method: str = "global"  # a utils.sparsity.methods name, '+recal' allowed for unstructured ones
    data: dict | str | None = None
    imgsz: int = 640
    calib_images: int = 128
    calib_batches: int = 0  # >0: BN re-calibration on this many batches after every method
    mask_type: str = "unstructured"  # obc: unstructured or block4 ([1,4] VNNI blocks)
    block: int = 4  # blocks: N of 1xN
    importance: str = "bn"  # channel: bn, l1 or taylor
    allocation: str = "global"  # channel: global, uniform, sensitivity or latency
    sensitivity_table: str | None = None  # obc: a sensitivity.csv to allocate with instead of measuring


def check_spec(spec: ShotSpec) -> None:
    """One line for options that cannot work, before any model or image is loaded."""
    method = get_method(spec.method.removesuffix("+recal"))
    if method.structured and spec.importance not in IMPORTANCE:
        raise ValueError(f"--channel-importance must be one of {', '.join(IMPORTANCE)}; got {spec.importance!r}")
    if method.structured and spec.allocation not in ALLOCATIONS:
        raise ValueError(f"--channel-allocation must be one of {', '.join(ALLOCATIONS)}; got {spec.allocation!r}")
    needs_data = (method.needs_calibration or spec.method.endswith("+recal") or spec.calib_batches
                  or (method.structured and spec.importance in ("taylor",)) or spec.allocation == "sensitivity")
    if needs_data and not spec.data:
        raise ValueError(f"--method {spec.method} with these options needs images: pass --data your_dataset.yaml")


def make_shot(model: nn.Module, spec: ShotSpec) -> OneShot:
    """A OneShot with its calibration images (and, for Taylor channel ranking, labelled batches) loaded."""
    check_spec(spec)
    method = get_method(spec.method.removesuffix("+recal"))
    options: dict[str, Any] = {"block": spec.block, "importance": spec.importance, "allocation": spec.allocation}
    table = table_from_rows(read_table(spec.sensitivity_table)) if spec.sensitivity_table else None
    shot = OneShot.parse(spec.method, block4=spec.mask_type == "block4" and method.name == "obc", table=table,
                         options=options)
    if spec.calib_batches:
        shot.recal, shot.recal_batches = True, spec.calib_batches
    if spec.data:
        shot.calibration = calibration_for(spec.data, spec.imgsz, spec.calib_images)
    elif method.structured:
        LOGGER.warning("WARNING ⚠️ channel pruning without --data: no least-squares refit of the pruned layers; "
                       "one-shot accuracy will be far lower (pass --data your.yaml to calibrate)")
    if method.structured and spec.importance == "taylor":
        options["labelled"], options["loss_fn"] = labelled_batches(model, spec.data, spec.imgsz, spec.calib_images)
    return shot


def labelled_batches(model: nn.Module, data: dict | str, imgsz: int, n: int) -> tuple[list, Callable]:
    """Labelled train batches and the training loss (default hyperparameters) for Taylor channel importance."""
    d = data if isinstance(data, dict) else check_dataset(str(data))
    loader, _ = create_dataloader(d["train"], imgsz, 8, 32, workers=0, prefix="taylor: ", nc=len(d["names"]))
    batches = []
    for imgs, targets, _, _ in loader:
        batches.append((imgs.float() / 255, targets))
        if len(batches) * 8 >= n:
            break
    if not getattr(model, "hyp", None):
        model.hyp = load_hyp(HYP)
    return batches, ComputeLoss(model)


def file_tag(shot: OneShot, level: float) -> str:
    """'_global50', '_obc50_block4', '_cp50': a pruned file never overwrites the dense one."""
    if get_method(shot.method).structured:
        return f"_cp{round(level * 100)}"
    return f"_{shot.method}{round(level * 100)}" + ("_block4" if shot.block4 else "") + ("_recal" if shot.recal else "")


def prune_in_place(model: nn.Module, level: float, spec: ShotSpec) -> str:
    """Prune an unfused model with the spec's method; returns the file-name tag and logs what was removed."""
    shot = make_shot(model, spec)
    shot(model, level)
    LOGGER.info(f"one-shot {shot.label} at {level:.2f}: {sparsity_header(model)}")
    return file_tag(shot, level)


def prune_checkpoint(weights: str | Path, level: float, spec: ShotSpec, save_dir: Path) -> Path:
    """prune.py: the checkpoint, pruned one-shot, saved as <stem>_<tag>.pt (ready for val, export or train.py)."""
    model = load_model(str(weights))  # unfused: BN stays separate so it can be re-calibrated after pruning
    tag = prune_in_place(model, level, spec)
    meta = {k: v for k, v in (getattr(model, "checkpoint_meta", None) or {}).items() if k in ("names", "epoch")}
    out = save_checkpoint(save_dir / f"{Path(weights).stem}{tag}.pt", model, **meta)
    LOGGER.info(f"prune: wrote {out} (validate: python val.py --weights {out} --data <data.yaml>; sparse transfer "
                f"learning: python train.py --weights {out} --recipe recipes/yolov5.transfer_learn_pruned.yaml)")
    return out


def run_sweep(weights: str | Path, data: dict, levels: list[float], specs: list[ShotSpec], save_dir: Path,
              batch_size: int = 32, workers: int = 8, **eval_kw: Any) -> dict:
    """--sweep: mAP against the level for each method; sparsity_map.csv (rewritten per row) and .png."""
    model = load_model(str(weights))
    imgsz = specs[0].imgsz
    loader, _ = val_dataloader(data, "val", imgsz, batch_size, int(model.stride.max()), True, workers,
                               eval_kw.get("single_cls", False))
    shots = [make_shot(model, s) for s in specs]
    table = next((s.table for s in shots if s.table is not None), None)
    for shot in shots:  # one calibration set and one obc table for the whole sweep
        shot.calibration, shot.table = shots[0].calibration or shot.calibration, shot.table or table
    names = data["names"]
    results = sweep_methods(model, levels, lambda m: evaluate(m, loader, names, plots=False, **eval_kw), shots,
                            on_row=lambda res: write_csv(res, save_dir / "sparsity_map.csv"))
    for label, rows in results.items():
        LOGGER.info(f"\nmAP against global sparsity, one-shot '{label}'\n" + format_table(rows))
    csv_file, png = save_sweep(results, save_dir)
    LOGGER.info(f"\nSweep saved to {csv_file} and {png}")
    return results


def run_sensitivity(weights: str | Path, data: dict, imgsz: int, save_dir: Path, levels: list[float] | None = None,
                    images: int = 16, recipe_sparsity: list[float] | None = None,
                    mask_type: str = "unstructured") -> list[dict]:
    """--sensitivity: sensitivity.csv/png, a per-layer summary, and recipe_sparsityNN.yaml per --recipe-sparsity."""
    model = load_model(str(weights))
    calibration = [torch.cat(calibration_for(data, imgsz, images))]  # one batch: fewer, larger forwards
    rows = layer_sensitivity(model, calibration, tuple(levels or DEFAULT_LEVELS))
    csv_file, png = save_table(rows, save_dir / "sensitivity.csv"), plot_sensitivity(rows, save_dir / "sensitivity.png")
    LOGGER.info(format_sensitivity(rows))
    for s in recipe_sparsity or []:
        recipe = write_sensitivity_recipe(model, rows, s, save_dir, mask_type, str(weights))
        LOGGER.info(f"Recipe for {s:.2f} global sparsity: {recipe}")
    LOGGER.info(f"Sensitivity saved to {csv_file} and {png}")
    return rows


def format_sensitivity(rows: list[dict]) -> str:
    """Per-layer line: size, then the head-distortion increase at each level."""
    table = table_from_rows(rows)
    levels = sorted({lv for t in table.values() for lv in t})
    sizes = {r["layer"]: r["numel"] for r in rows}
    head = "%-28s %9s" % ("layer", "weights") + "".join("%10s" % f"@{lv:.2f}" for lv in levels)
    lines = [head] + ["%-28s %9d" % (n.removesuffix(".weight"), sizes[n]) +
                      "".join("%10.5f" % t.get(lv, float("nan")) for lv in levels) for n, t in table.items()]
    return "\nPer-layer sensitivity (output distortion when only this layer is pruned)\n" + "\n".join(lines)


def write_sensitivity_recipe(model: nn.Module, rows: list[dict], sparsity: float, save_dir: Path, mask_type: str,
                             weights: str) -> Path:
    """Knapsack allocation of the global target over the measured table, written as per-layer GMP modifiers."""
    included, excluded = split_targets(model, None)
    counts = sensitivity_allocation(included, zeros_to_reach(included, excluded, sparsity), table_from_rows(rows))
    fractions = {n: counts[n] / included[n].numel() for n in included}
    sizes = {n: p.numel() for n, p in prunable_parameters(model).items()}
    return write_recipe(save_dir / f"recipe_sparsity{round(sparsity * 100)}.yaml", fractions, sizes,
                        mask_type=mask_type, source="knapsack over sensitivity.csv", weights=Path(weights).name)
