"""One entry point for every one-shot method (val.py sweeps, export.py): prune, then optionally re-calibrate BN.

Method specs: 'layerwise' (Ultralytics prune() baseline), 'global' (BN-folded magnitude threshold), 'obc'
(layer-wise OBS reconstruction with sensitivity-aware allocation); a '+recal' suffix re-estimates BatchNorm
statistics on the calibration images afterwards.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import as_float
from .measure import all_param_sparsity, global_sparsity
from .oneshot import bn_recalibrate, prune_oneshot

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
        if self.recal:
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

    subset = torch.cat(list(calibration))[:images]  # one batch: fewer, larger forwards for the many re-runs
    if subset.shape[-1] > imgsz:
        subset = F.interpolate(as_float(subset), size=(imgsz, imgsz), mode="area")
    LOGGER.info(f"obc: measuring per-layer sensitivity on {len(subset)} calibration images (reused for every level)")
    return table_from_rows(layer_sensitivity(copy.deepcopy(model), [subset], exclude=exclude, probe=probe))


def sweep(model: nn.Module, levels: Sequence[float], validate: Callable[[nn.Module], dict], prune: OneShot) -> list:
    """One row per level with the columns of utils.sparsity.sweep (so its table, CSV and plot apply unchanged)."""
    from .sweep import sparsity_header

    rows = []
    for level in levels:
        m = prune(copy.deepcopy(model), level)
        LOGGER.info(f"\nPruning {prune.label}: target {level:.2f} -> {sparsity_header(m)}")
        r = validate(m.eval())
        rows.append({"target": level, "sparsity": global_sparsity(m), "sparsity_all_params": all_param_sparsity(m),
                     "precision": r["precision"], "recall": r["recall"], "map50": r["map50"], "map": r["map"]})
    base = rows[0]["map50"] or 1.0
    for row in rows:
        row["rel_map50"] = row["map50"] / base
    return rows


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
