"""Sensitivity-aware allocation: measure how much each group alone hurts the detections, then spend the budget
where it hurts least per FLOP saved.

For every prunable group and a few removal levels, the group's lowest-ranked channels are removed (constants folded,
no refit) on a copy of the model and the Detect outputs are compared with the dense ones on calibration images
(utils.sparsity.weight_sensitivity.head_distortion: objectness everywhere, boxes/classes where the dense model sees objects).
A greedy walk then takes, step by step, the group level with the smallest distortion increase per MAC saved until
the target is met (errors of different groups are assumed to add up).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from utils.logger import LOGGER

from ..calibration import as_float
from ..weight_sensitivity import head_distortion
from .allocate import Budget, _cost, _round_keep
from .graph import ChannelGraph
from .surgery import remove_channels

LEVELS = (0.25, 0.5, 0.75)
Curve = list[tuple[int, float]]  # (channels kept, distortion), from the whole group down


@torch.no_grad()
def _heads(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    return [r.float().sigmoid() for r in model.eval()(images)[1]]


@torch.no_grad()
def group_curves(model: nn.Module, graph: ChannelGraph, scores: dict[int, torch.Tensor], images: Sequence[torch.Tensor],
                 budget: Budget, levels: Sequence[float] = LEVELS) -> dict[int, Curve]:
    """Distortion of the detections with each group alone pruned to each level (lowest scores removed first)."""
    x = as_float(torch.cat(list(images)))
    dense = _heads(model, x)
    curves: dict[int, Curve] = {}
    for gid, s in scores.items():
        curve: Curve = [(len(s), 0.0)]
        for r in levels:
            keep = _round_keep(len(s), len(s) * (1.0 - min(r, budget.max_ratio)), budget)
            if keep >= curve[-1][0]:
                continue
            trial = copy.deepcopy(model)
            remove = torch.argsort(s, stable=True)[: len(s) - keep].tolist()
            remove_channels(trial, {graph.groups[gid].key: remove}, graph=graph)
            curve.append((keep, head_distortion(dense, _heads(trial, x))))
        curves[gid] = curve
    return curves


def greedy_keep(graph: ChannelGraph, curves: dict[int, Curve], budget: Budget, goal: float) -> dict[int, int]:
    """Advance, one level at a time, the group whose next level costs the least distortion per unit of cost saved."""
    level = {g: 0 for g in curves}
    keep = {g: c[0][0] for g, c in curves.items()}
    cost = _cost(graph, keep, budget)
    while cost > goal:
        best, best_rate, best_cost = None, float("inf"), cost
        for g, c in curves.items():
            if level[g] + 1 >= len(c):
                continue
            trial = {**keep, g: c[level[g] + 1][0]}
            new_cost = _cost(graph, trial, budget)
            rate = max(c[level[g] + 1][1] - c[level[g]][1], 0.0) / max(cost - new_cost, 1e-12)
            if rate < best_rate:
                best, best_rate, best_cost = g, rate, new_cost
        if best is None:  # every group at its deepest level: the limits stop us short of the goal
            LOGGER.warning(f"channel pruning: limits reached at {1 - cost:.1%} removed (goal {1 - goal:.1%})")
            break
        level[best] += 1
        keep[best] = curves[best][level[best]][0]
        cost = best_cost
    return keep
