"""One entry point for every one-shot method (val.py sweeps, export.py): prune, then optionally re-calibrate BN.

Method specs: 'layerwise' (Ultralytics prune() baseline), 'global' (BN-folded magnitude threshold), 'obc'
(layer-wise OBS reconstruction with sensitivity-aware allocation); a '+recal' suffix re-estimates BatchNorm
statistics on the calibration images afterwards.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import as_float
from .measure import all_param_sparsity, global_sparsity
from .oneshot import bn_recalibrate, prune_oneshot
from .sweep import sparsity_header

LOGGER = logging.getLogger("yolov5-sparse")
METHODS = ("layerwise", "global", "obc")
METHOD_CHOICES = (*METHODS, *(f"{m}+recal" for m in METHODS))


@dataclass
class OneShot:
    """A parsed method spec plus what it needs: calibration images and, for obc, the sensitivity table."""

    method: str
    recal: bool = False
    block4: bool = False
    calibration: Sequence[torch.Tensor] = ()
    table: Mapping[str, Mapping[float, float]] | None = None
    exclude: Sequence[str] | None = None
    recal_batches: int = 0  # 0: every calibration batch
    extra: dict = field(default_factory=dict)  # ObcConfig overrides

    @classmethod
    def parse(cls, spec: str, **kwargs) -> "OneShot":
        """'global+recal' -> OneShot('global', recal=True); unknown names get one clear message."""
        name, _, suffix = spec.partition("+")
        if name not in METHODS or suffix not in ("", "recal"):
            raise ValueError(f"unknown one-shot method {spec!r}; choose one of {', '.join(METHOD_CHOICES)}")
        return cls(name, recal=suffix == "recal", **kwargs)

    @property
    def label(self) -> str:
        return self.method + ("[1,4]" if self.block4 else "") + ("+recal" if self.recal else "")

    def needs_calibration(self) -> bool:
        return self.method == "obc" or self.recal

    def __call__(self, model: nn.Module, sparsity: float) -> nn.Module:
        """Prune `model` in place to `sparsity` (fraction of zeros over prunable weights)."""
        self.prune_only(model, sparsity)
        if self.recal and sparsity > 0:
            self.recalibrate(model)
        return model

    def prune_only(self, model: nn.Module, sparsity: float) -> nn.Module:
        """The pruning step alone (no BN re-calibration), so a sweep can share it between X and X+recal."""
        if self.needs_calibration() and not self.calibration:
            raise ValueError(f"one-shot '{self.label}' needs calibration images; pass a dataset yaml with images")
        if self.block4 and self.method != "obc":
            raise ValueError("[1,4] blocks (--mask-type block4) are only implemented for --prune-method obc")
        if sparsity <= 0:
            return model
        if self.method == "obc":
            self._obc(model, sparsity)
        else:
            prune_oneshot(model, sparsity, method=self.method, exclude=self.exclude)
        return model

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate BatchNorm statistics on the calibration images."""
        bn_recalibrate(model, self.calibration, self.recal_batches or len(self.calibration))
        return model

    def _obc(self, model: nn.Module, sparsity: float) -> None:
        from .allocation import sensitivity_allocation
        from .obc import ObcConfig, obc_prune

        if self.table is None:
            self.table = sensitivity_table(model, self.calibration, self.exclude)
        table = self.table
        alloc: Callable = lambda m, included, k: sensitivity_allocation(included, k, table)  # noqa: E731
        obc_prune(model, sparsity, self.calibration, self.exclude, alloc, ObcConfig(block4=self.block4, **self.extra))


def sensitivity_table(model: nn.Module, calibration: Sequence[torch.Tensor], exclude: Sequence[str] | None = None,
                      images: int = 16, probe: float | None = 0.7, imgsz: int = 320) -> dict[str, dict[float, float]]:
    """OBS sensitivity of the dense model on the first `images` calibration images (computed once per model).

    probe: measure the output at this level only and scale by each layer's own error curve (5x fewer model runs).
    imgsz: larger calibration images are shrunk to this for the table (4x cheaper from 640).
    On yolov5n/COCO128 at 640, obc at 50% scored 0.297 / 0.302 mAP50-95 with tables from 640 / 320 px images, and
    a probed table allocated as well as one measured at every level (0.256 vs 0.250 at 320).
    """
    from .sensitivity import layer_sensitivity, table_from_rows

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


def _row(level: float, m: nn.Module, r: dict, seconds: float) -> dict:
    """One sweep row with the columns of utils.sparsity.sweep; prune_s is the one-shot step's wall time."""
    return {"target": level, "sparsity": global_sparsity(m), "sparsity_all_params": all_param_sparsity(m),
            "precision": r["precision"], "recall": r["recall"], "map50": r["map50"], "map": r["map"],
            "prune_s": seconds}


def _variants(model: nn.Module, level: float, shots: Sequence[OneShot]):
    """Yield (shot, pruned model, seconds) for shots sharing one method: prune once, re-calibrate for +recal last.

    'obc' and 'obc+recal' differ only in the BN step, so the (slow) reconstruction runs once per level.
    """
    m, t0 = copy.deepcopy(model), time.perf_counter()
    shots[0].prune_only(m, level)
    seconds = time.perf_counter() - t0
    for shot in sorted(shots, key=lambda s: s.recal):
        if shot.recal:
            t1 = time.perf_counter()
            shot.recalibrate(m)
            seconds += time.perf_counter() - t1
        LOGGER.info(f"\nPruning {shot.label}: target {level:.2f} -> {sparsity_header(m)} ({seconds:.1f}s)")
        yield shot, m.eval(), seconds


def _fused(m: nn.Module) -> nn.Module:
    """A BN-folded copy to validate (like val.py's dense path); the pruned model itself stays unfused."""
    fuse = getattr(m, "fuse", None)
    return copy.deepcopy(m).fuse().eval() if callable(fuse) else m


def sweep_methods(model: nn.Module, levels: Sequence[float], validate: Callable[[nn.Module], dict],
                  shots: Sequence[OneShot], on_row: Callable[[dict], None] | None = None) -> dict[str, list[dict]]:
    """{label: rows}, one row per level; the dense model is validated once and each method pruned once per level.

    on_row(results) is called after every new row (val.py rewrites its CSV so a long sweep leaves partial results).
    """
    results: dict[str, list[dict]] = {s.label: [] for s in shots}
    groups: dict[tuple, list[OneShot]] = {}
    for s in shots:
        groups.setdefault((s.method, s.block4), []).append(s)
    dense_row = None
    for group in groups.values():
        for level in levels:
            if level <= 0:
                if dense_row is None:
                    m = copy.deepcopy(model).eval()
                    dense_row = _row(0.0, m, validate(_fused(m)), 0.0)
                for s in group:
                    results[s.label].append(dict(dense_row, target=level))
            else:
                for s, m, seconds in _variants(model, level, group):
                    results[s.label].append(_row(level, m, validate(_fused(m)), seconds))
            if on_row:
                on_row(results)
    for rows in results.values():
        base = rows[0]["map50"] or 1.0 if rows else 1.0
        for row in rows:
            row["rel_map50"] = row["map50"] / base
    return results


def sweep(model: nn.Module, levels: Sequence[float], validate: Callable[[nn.Module], dict], prune: OneShot) -> list:
    """Rows of one method (see sweep_methods)."""
    return sweep_methods(model, levels, validate, [prune])[prune.label]


def calibration_for(data: dict | str, imgsz: int, images: int = 128, batch_size: int = 8) -> list[torch.Tensor]:
    """Unlabeled calibration batches from the dataset yaml's train images (val when it has none)."""
    from .calibration import calibration_batches, calibration_files

    batches = calibration_batches(calibration_files(data), imgsz, batch_size, images)
    LOGGER.info(f"calibration: {sum(len(b) for b in batches)} unlabeled images at {imgsz}x{imgsz}")
    return batches


def export_step(sparsity: float, spec: str, data: str | None, imgsz: int, images: int = 128,
                mask_type: str = "unstructured") -> Callable[[nn.Module], str]:
    """export.py --sparsity: a function that prunes the loaded model and returns a file-name tag ('_obc50')."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"--sparsity must be in (0, 1) for a one-shot export, got {sparsity}")
    prune = OneShot.parse(spec, block4=mask_type == "block4")

    def step(model: nn.Module) -> str:
        if prune.needs_calibration():
            if not data:
                raise ValueError(f"--prune-method {spec} needs calibration images: pass --data your_dataset.yaml")
            prune.calibration = calibration_for(data, imgsz, images)
        prune(model, sparsity)
        LOGGER.info(f"export: one-shot {prune.label} pruning to {global_sparsity(model):.3f} global sparsity")
        return f"_{prune.method}{round(sparsity * 100)}" + ("_block4" if prune.block4 else "") + \
            ("_recal" if prune.recal else "")

    return step
