"""One-shot channel pruning: analyse, score, allocate, remove; returns a report of what changed."""
from __future__ import annotations

import copy
import re
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from utils.logger import LOGGER

from .allocate import Budget, allocate, plan_cost, plan_from_keep, target_left
from .graph import ChannelGraph
from .importance import group_scores, taylor_scores
from .latency import group_weights, profile_layers, weighted_keep
from .reconstruct import reconstruct
from .sensitivity import greedy_keep, group_curves
from .surgery import Plan, kept_outputs, remove_channels

SENSITIVITY_IMAGES = 16


def _matches(pattern: str, name: str) -> bool:
    """SparseML's convention: 're:<regex>' matches from the start, anything else is an exact module name."""
    return bool(re.match(pattern[3:], name)) if pattern.startswith("re:") else pattern == name


def _ignored(graph: ChannelGraph, ignore: Sequence[str]) -> None:
    """Freeze groups any of whose source Conv blocks is named in ignore (e.g. 'model.0' keeps the stem whole)."""
    for g in graph.prunable():
        if any(_matches(p, s) for p in ignore for s in g.sources):
            g.frozen = True


def plan_channels(model: nn.Module, budget: Budget, importance: str = "bn", allocation: str = "global",
                  ignore: Sequence[str] = (), taylor: dict[str, torch.Tensor] | None = None,
                  graph: ChannelGraph | None = None, keep_removed: Plan | None = None,
                  images: Sequence[torch.Tensor] | None = None, layer_ms: dict[str, float] | None = None) -> Plan:
    """Which channels to remove for the budget; channels in keep_removed stay removed (gradual pruning).

    images: calibration batches, needed by allocation='sensitivity' (the first 16 images are used).
    layer_ms: {'model.N': ms} engine profile of the dense model, needed by allocation='latency'.
    """
    graph = graph or ChannelGraph(model)
    _ignored(graph, ignore)
    scores = group_scores(model, graph, importance, taylor)
    for key, chans in (keep_removed or {}).items():  # already pruned: rank them below everything
        g = graph.by_key.get(key)
        if g is not None and g.id in scores and chans:
            scores[g.id][torch.as_tensor(chans, dtype=torch.long)] = -1.0
    if allocation == "latency":
        if not layer_ms:
            raise ValueError("allocation 'latency' needs a per-layer profile of the dense model (layer_ms)")
        weights = group_weights(graph, layer_ms)
        return plan_from_keep(graph, scores, weighted_keep(graph, scores, budget, target_left(budget), weights))
    if allocation != "sensitivity":
        return allocate(graph, scores, budget, allocation)
    if not images:
        raise ValueError("allocation 'sensitivity' needs calibration images: pass --data (or images=...)")
    subset = [torch.cat(list(images))[:SENSITIVITY_IMAGES]]
    curves = group_curves(model, graph, scores, subset, budget)
    return plan_from_keep(graph, scores, greedy_keep(graph, curves, budget, target_left(budget)))


def channel_prune(model: nn.Module, flops_target: float | None = None, channel_ratio: float | None = None,
                  importance: str = "bn", allocation: str = "global", compensate: bool = True,
                  ignore: Sequence[str] = (), images: Sequence[torch.Tensor] | None = None,
                  labelled: Iterable | None = None, loss_fn: Callable | None = None,
                  layer_ms: dict[str, float] | None = None, imgsz: int = 640, **limits) -> dict:
    """Remove channels in place for a FLOPs (fraction of conv MACs) or channel-ratio target.

    images: unlabeled calibration batches; when given, every conv is refit by least squares to the dense outputs
    (utils.sparsity.channel.reconstruct), which one-shot pruning needs to keep accuracy.
    labelled/loss_fn: batches (imgs, targets) and a loss (utils.loss.ComputeLoss) for importance='taylor'.
    allocation='latency' weighs groups by ONNX Runtime's time per MAC: layer_ms, else profiled here at imgsz.
    limits: round_to, min_channels, max_ratio (see Budget). Returns a report dict (plan, MACs/params before/after).
    """
    if any(not hasattr(m, "bn") for m in model.modules() if type(m).__name__ == "Conv"):
        raise ValueError("channel pruning needs the unfused model (BatchNorm kept): prune before model.fuse()")
    budget = Budget(flops_target=flops_target, channel_ratio=channel_ratio, **limits)
    graph = ChannelGraph(model)
    taylor = None
    if importance == "taylor":
        if labelled is None or loss_fn is None:
            raise ValueError("importance 'taylor' needs labelled calibration batches: pass --data with labels")
        taylor = taylor_scores(model, graph, labelled, loss_fn)
    if allocation == "latency" and not layer_ms:
        layer_ms = profile_layers(model, imgsz)
    params0, macs0 = sum(p.numel() for p in model.parameters()), graph.macs()
    plan = plan_channels(model, budget, importance, allocation, ignore, taylor, graph, images=images,
                         layer_ms=layer_ms)
    left = plan_cost(graph, plan)
    dense = copy.deepcopy(model) if images else None
    keep, blocks = kept_outputs(model, graph, plan)
    remove_channels(model, plan, compensate=compensate, graph=graph)
    refit = reconstruct(model, dense, images, keep, blocks) if images else 0
    report = {"plan": plan, "macs_left": left, "params_before": params0, "refit_convs": refit,
              "params_after": sum(p.numel() for p in model.parameters()), "conv_macs_before": macs0,
              "groups": len(graph.groups), "groups_pruned": sum(1 for v in plan.values() if v),
              "channels_removed": sum(len(v) for v in plan.values()), "layer_ms": layer_ms}
    LOGGER.info(f"channel pruning ({importance}, {allocation}): removed {report['channels_removed']} channels in "
                f"{report['groups_pruned']}/{report['groups']} groups; conv MACs {1 - left:.1%} lower, parameters "
                f"{report['params_before']:,} -> {report['params_after']:,}"
                + (f"; {refit} convs refit on calibration images" if refit else ""))
    return report
