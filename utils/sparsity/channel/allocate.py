"""How many channels each group keeps for a FLOPs or channel target, and which ones (lowest scores go first).

Keep counts are multiples of `round_to` unless a group stays whole (16: ONNX Runtime's MLAS and oneDNN lay channels
out in blocks of 16 on AVX-512, so 24 channels cost as much as 32; on yolov5s at 50% fewer FLOPs, rounding to 16
instead of 8 measured 1.67x instead of 1.38x faster in ONNX Runtime; use 8 for AVX2-only CPUs),
never fewer than `min_channels`, and never below (1 - max_ratio) of the group. 'global' allocation finds one score
threshold over all groups (scores are normalized per group), 'uniform' removes the same fraction from every group,
'sensitivity' (channel/sensitivity.py) spends the budget where measured distortion per FLOP is lowest, 'latency'
(channel/latency.py) scales the uniform fraction by each layer's engine time per MAC.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .graph import ChannelGraph
from .surgery import Plan

ALLOCATIONS = ("global", "uniform", "sensitivity", "latency")


@dataclass
class Budget:
    """Pruning target and per-group limits."""

    flops_target: float | None = None  # fraction of conv MACs to remove (0.5 = half)
    channel_ratio: float | None = None  # fraction of prunable channels to remove
    round_to: int = 16
    min_channels: int = 16
    max_ratio: float = 0.75  # never remove more than this fraction of one group

    def __post_init__(self) -> None:
        if (self.flops_target is None) == (self.channel_ratio is None):
            raise ValueError("channel pruning: give exactly one of flops_target and channel_ratio")
        value = self.flops_target if self.flops_target is not None else self.channel_ratio
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"channel pruning target must be in [0, 1), got {value}")
        if not 0.0 < self.max_ratio < 1.0 or self.round_to < 1 or self.min_channels < 1:
            raise ValueError("channel pruning: need 0 < max_ratio < 1, round_to >= 1 and min_channels >= 1")


def _round_keep(n: int, k: float, b: Budget) -> int:
    """Clamp and round a wanted keep count of a group of n channels to the budget's rules."""
    low = max(min(b.min_channels, n), math.ceil(n * (1.0 - b.max_ratio)))
    k = max(int(math.ceil(k)), low)
    k = int(math.ceil(k / b.round_to) * b.round_to)
    return n if k >= n else k


def _cost(graph: ChannelGraph, keep: dict[int, int], b: Budget) -> float:
    """Fraction of the target quantity (MACs or channels) that a keep map leaves."""
    if b.flops_target is not None:
        return graph.macs(keep) / graph.macs()
    groups = graph.prunable()
    return sum(keep[g.id] for g in groups) / max(sum(g.size for g in groups), 1)


def _global_keep(graph: ChannelGraph, scores: dict[int, torch.Tensor], b: Budget, goal: float) -> dict[int, int]:
    """Smallest score threshold whose rounded keep counts meet the goal (binary search: cost falls with it)."""
    cands = torch.unique(torch.cat([s for s in scores.values()])).tolist()

    def keep_at(t: float) -> dict[int, int]:
        return {g: _round_keep(len(s), int((s > t).sum()), b) for g, s in scores.items()}

    lo, hi = -1, len(cands) - 1  # keep_at(cands[hi]) prunes the most the limits allow
    if _cost(graph, keep_at(cands[hi]), b) > goal:
        return keep_at(cands[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _cost(graph, keep_at(cands[mid]), b) <= goal:
            hi = mid
        else:
            lo = mid
    return keep_at(cands[hi])


def bisect_keep(graph: ChannelGraph, b: Budget, goal: float, keep_at: Callable[[float], dict[int, int]],
                hi: float) -> dict[int, int]:
    """Keep map at the smallest knob r in [0, hi] that meets the goal (what is left falls as r grows)."""
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _cost(graph, keep_at(mid), b) <= goal else (mid, hi)
    return keep_at(hi)


def _uniform_keep(graph: ChannelGraph, scores: dict[int, torch.Tensor], b: Budget, goal: float) -> dict[int, int]:
    """Same removal fraction r in every group; bisection on r."""
    def keep_at(r: float) -> dict[int, int]:
        return {g: _round_keep(len(s), len(s) * (1.0 - r), b) for g, s in scores.items()}

    return bisect_keep(graph, b, goal, keep_at, b.max_ratio)


def keep_counts(graph: ChannelGraph, scores: dict[int, torch.Tensor], budget: Budget, mode: str) -> dict[int, int]:
    """Channels each group keeps ('global' or 'uniform'; 'sensitivity' and 'latency' need images or a profile)."""
    if mode not in ("global", "uniform"):
        raise ValueError(f"unknown channel allocation '{mode}'; choose one of {', '.join(ALLOCATIONS)}")
    goal = target_left(budget)
    if goal >= 1.0 or not scores:
        return {g: len(s) for g, s in scores.items()}
    return (_global_keep if mode == "global" else _uniform_keep)(graph, scores, budget, goal)


def target_left(budget: Budget) -> float:
    """Fraction of the budget's quantity (MACs or channels) to keep."""
    return 1.0 - float(budget.flops_target if budget.flops_target is not None else budget.channel_ratio)


def plan_from_keep(graph: ChannelGraph, scores: dict[int, torch.Tensor], keep: dict[int, int]) -> Plan:
    """Plan {group key: channels to remove}: the lowest-scored channels beyond each group's keep count."""
    plan = {}
    for gid, s in scores.items():
        n_remove = len(s) - keep[gid]
        if n_remove > 0:
            order = torch.argsort(s, stable=True)  # lowest first; ties keep index order (deterministic)
            plan[graph.groups[gid].key] = sorted(order[:n_remove].tolist())
    return plan


def allocate(graph: ChannelGraph, scores: dict[int, torch.Tensor], budget: Budget, mode: str = "global") -> Plan:
    """Plan meeting the budget as closely as the per-group limits allow."""
    return plan_from_keep(graph, scores, keep_counts(graph, scores, budget, mode))


def plan_cost(graph: ChannelGraph, plan: Plan) -> float:
    """Fraction of conv MACs left after a plan."""
    keep = {graph.by_key[k].id: graph.by_key[k].size - len(v) for k, v in plan.items()}
    return graph.macs(keep) / graph.macs()
