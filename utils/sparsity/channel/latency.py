"""Latency-aware allocation: take more channels where the engine spends more time per MAC.

Equal FLOPs are not equal time. On ONNX Runtime (2-core AVX-512, yolov5s 640, batch 1) the stem and the first C3
run at 320x320 and 160x160 with few channels: they cost 1.3-1.4x the model's average time per MAC, the 20x20 layers
0.8x. Uniform allocation leaves such narrow groups whole (32 channels at a 16-channel step), so they become a third
of the pruned model's time. Here each group's removal fraction is the uniform fraction times its source layer's
relative time per MAC (from the engine's own profile of the dense model), still capped by the Budget's limits, and the
base fraction is found by bisection so the FLOPs target holds.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from .allocate import Budget, _cost, _round_keep
from .graph import ChannelGraph


def _layer(name: str) -> str:
    return ".".join(name.split(".")[:2])  # 'model.17.cv3.conv' -> 'model.17'


def layer_macs(graph: ChannelGraph) -> dict[str, float]:
    """Conv MACs per top-level layer (model.N) at the graph's probe size."""
    out: dict[str, float] = {}
    for node in graph.convs.values():
        conv = graph.model.get_submodule(node.name)
        macs = node.hw * conv.out_channels * conv.in_channels // conv.groups * conv.weight[0, 0].numel()
        out[_layer(node.name)] = out.get(_layer(node.name), 0.0) + macs
    return out


def group_weights(graph: ChannelGraph, layer_ms: dict[str, float]) -> dict[int, float]:
    """Each prunable group's relative time per MAC: its first source layer's ms/MAC over the model's (mean 1)."""
    macs = layer_macs(graph)
    timed = [k for k in macs if layer_ms.get(k, 0) > 0]
    if not timed:
        raise ValueError("latency allocation: the profile names none of the model's layers (model.N)")
    mean = sum(layer_ms[k] for k in timed) / sum(macs[k] for k in timed)
    per_mac = {k: layer_ms[k] / macs[k] / mean for k in timed}
    return {g.id: per_mac.get(_layer(g.sources[0]), 1.0) for g in graph.prunable()}


def weighted_keep(graph: ChannelGraph, scores: dict[int, torch.Tensor], b: Budget, goal: float,
                  weights: dict[int, float]) -> dict[int, int]:
    """Removal fraction r * weight per group (within the limits); bisection on r until the goal is met."""
    def keep_at(r: float) -> dict[int, int]:
        return {g: _round_keep(len(s), len(s) * (1.0 - min(b.max_ratio, r * weights.get(g, 1.0))), b)
                for g, s in scores.items()}

    lo, hi = 0.0, b.max_ratio * 4
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _cost(graph, keep_at(mid), b) <= goal else (mid, hi)
    return keep_at(hi)


def profile_layers(model: nn.Module, imgsz: int = 640, runs: int = 10) -> dict[str, float]:
    """ONNX Runtime's per-layer ms of this (dense, unfused) model at batch 1: exported to a temp file and profiled."""
    from utils.benchmark.profile import profile_onnxruntime
    from utils.export_onnx import export_onnx, prepare_model

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "dense.onnx"
        export_onnx(prepare_model(copy.deepcopy(model).eval()), f, imgsz, 1)
        return profile_onnxruntime(f, runs=runs)
