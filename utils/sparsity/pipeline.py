"""One-shot pruning as the scripts run it (prune.py, sweeps, export.py): a registered method, then optionally BN
re-calibration ('+recal' suffix), and mAP-against-level sweeps that prune each method once per level.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from utils.logger import LOGGER

from .calibration import calibration_batches, calibration_files
from .measure import all_param_sparsity, global_sparsity
from .methods import METHOD_CHOICES, RECAL, PruneContext, get_method
from .oneshot import bn_recalibrate
from .sweep import sparsity_header


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
    options: dict = field(default_factory=dict)  # other method options (block size, channel importance...)

    @classmethod
    def parse(cls, spec: str, **kwargs) -> "OneShot":
        """'global+recal' -> OneShot('global', recal=True); unknown names get one clear message."""
        if spec not in METHOD_CHOICES:
            raise ValueError(f"unknown one-shot method {spec!r}; choose one of {', '.join(METHOD_CHOICES)}")
        return cls(spec.removesuffix(RECAL), recal=spec.endswith(RECAL), **kwargs)

    @property
    def label(self) -> str:
        return self.method + ("[1,4]" if self.block4 else "") + (RECAL if self.recal else "")

    def needs_calibration(self) -> bool:
        return get_method(self.method).needs_calibration or self.recal

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
        ctx = PruneContext(self.calibration, self.exclude, options={"table": self.table, "block4": self.block4,
                                                                    "obc": self.extra, **self.options})
        get_method(self.method).prune(model, sparsity, ctx)
        self.table = ctx.options.get("table")  # obc measures it once; later levels of a sweep reuse it
        return model

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate BatchNorm statistics on the calibration images."""
        bn_recalibrate(model, self.calibration, self.recal_batches or len(self.calibration))
        return model


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
    batches = calibration_batches(calibration_files(data), imgsz, batch_size, images)
    LOGGER.info(f"calibration: {sum(len(b) for b in batches)} unlabeled images at {imgsz}x{imgsz}")
    return batches
