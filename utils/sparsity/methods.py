"""The one registry of one-shot pruning methods: every script's choices and every prune go through METHODS.

Adding a method: write its pruning function in its own module, then add one `PruneMethod` row to METHODS
(prune.py, val.py's sweep, export.py and benchmark.py take their choices from here).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .blocks import prune_blocks
from .channel import channel_prune
from .obc import ObcConfig, obc_prune
from .oneshot import prune_oneshot
from .weight_allocation import sensitivity_allocation
from .weight_sensitivity import sensitivity_table


@dataclass
class PruneContext:
    """What a method may use besides the model and the level: calibration images and method options."""

    calibration: Sequence[torch.Tensor] = ()  # unlabeled float batches (utils.sparsity.pipeline.calibration_for)
    exclude: Sequence[str] | None = None  # parameter-name regexes kept dense (default: stem conv + Detect outputs)
    imgsz: int = 640
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (block, importance, allocation, table...)


@dataclass(frozen=True)
class PruneMethod:
    """One pruning method: how it prunes (in place) and what it needs."""

    name: str
    prune: Callable[[nn.Module, float, PruneContext], dict | None]  # in place; may return a report
    needs_calibration: bool  # refuses to run without calibration images
    structured: bool  # removes whole channels (the level is a fraction of conv FLOPs, not of weights)
    help: str


def _global(model: nn.Module, level: float, ctx: PruneContext) -> None:
    prune_oneshot(model, level, method="global", exclude=ctx.exclude)


def _layerwise(model: nn.Module, level: float, ctx: PruneContext) -> None:
    prune_oneshot(model, level, method="layerwise", exclude=ctx.exclude)


def _blocks(model: nn.Module, level: float, ctx: PruneContext) -> None:
    prune_blocks(model, level, int(ctx.options.get("block", 4)), exclude=ctx.exclude)


def _obc(model: nn.Module, level: float, ctx: PruneContext) -> None:
    o = ctx.options
    if o.get("table") is None:  # measured once per model; a sweep passes it back in for the next level
        o["table"] = sensitivity_table(model, ctx.calibration, ctx.exclude)
    table = o["table"]
    alloc: Callable = lambda m, included, k: sensitivity_allocation(included, k, table)  # noqa: E731
    obc_prune(model, level, ctx.calibration, ctx.exclude, alloc, ObcConfig(block4=o.get("block4", False),
                                                                              **o.get("obc", {})))


def _channel(model: nn.Module, level: float, ctx: PruneContext) -> dict:
    o = ctx.options
    return channel_prune(model, flops_target=level, importance=o.get("importance", "bn"),
                  allocation=o.get("allocation", "global"), images=list(ctx.calibration) or None,
                  labelled=o.get("labelled"), loss_fn=o.get("loss_fn"), imgsz=ctx.imgsz)


METHODS: dict[str, PruneMethod] = {m.name: m for m in (
    PruneMethod("global", _global, False, False, "BN-folded magnitude, one threshold over all layers"),
    PruneMethod("layerwise", _layerwise, False, False, "same fraction per layer (Ultralytics prune() baseline)"),
    PruneMethod("obc", _obc, True, False, "OBS reconstruction per layer with sensitivity allocation (needs --data)"),
    PruneMethod("blocks", _blocks, False, False, "1xN blocks along input channels by mean |w| (N=4 suits VNNI)"),
    PruneMethod("channel", _channel, False, True, "whole channels, level = fraction of conv FLOPs; --data refits"),
)}
RECAL = "+recal"  # suffix: re-estimate BatchNorm statistics on the calibration images after pruning
METHOD_CHOICES = (*METHODS, *(n + RECAL for n, m in METHODS.items() if not m.structured))
DATA_FREE = tuple(n for n, m in METHODS.items() if not m.structured and not m.needs_calibration)  # benchmark.py


def get_method(name: str) -> PruneMethod:
    """The registered method, or one line listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {', '.join(METHOD_CHOICES)}")
    return METHODS[name]


def methods_help() -> str:
    """'name: what it does' for every method, for the scripts' --help."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
