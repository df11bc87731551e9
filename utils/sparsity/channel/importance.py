"""Channel importance per group: BN scale |gamma|, L1 of filters, or first-order Taylor (gradient x weight).

Each source's raw scores are divided by their mean before sources are averaged, so scores are comparable across
groups (a group's mean is 1): a global threshold then means "below x times its layer's typical channel".
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .graph import ChannelGraph

IMPORTANCE = ("bn", "l1", "taylor")


def _block(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


@torch.no_grad()
def raw_scores(model: nn.Module, block: str, method: str,
               taylor: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Unnormalized per-channel importance of one Conv block's outputs."""
    b = _block(model, block)
    if method == "bn":
        return b.bn.weight.detach().abs().float()
    if method == "l1":
        return b.conv.weight.detach().flatten(1).abs().sum(1).float()
    if method == "taylor":
        if not taylor or block not in taylor:
            raise ValueError("taylor importance needs accumulated gradients (calibration batches with labels)")
        return taylor[block].float()
    raise ValueError(f"unknown channel importance '{method}'; choose one of {', '.join(IMPORTANCE)}")


def group_scores(model: nn.Module, graph: ChannelGraph, method: str = "bn",
                 taylor: dict[str, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """group id -> per-channel score (mean 1 within the group) for every prunable group."""
    out = {}
    for g in graph.prunable():
        parts = []
        for src in g.sources:
            s = raw_scores(model, src, method, taylor)
            parts.append(s / s.mean().clamp_min(1e-12))
        out[g.id] = torch.stack(parts).mean(0)
    return out


class TaylorAccumulator:
    """Sum over batches of (dL/dgamma * gamma + dL/dbeta * beta)^2 per channel: the loss change if a channel's BN
    output were zeroed (Molchanov et al. 2019, gate on the BN affine). Call step() after every backward."""

    def __init__(self, model: nn.Module, graph: ChannelGraph):
        self.model = model
        self.blocks = sorted({s for g in graph.groups.values() for s in g.sources})
        self.scores: dict[str, torch.Tensor] = {}
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        for name in self.blocks:
            bn = _block(self.model, name).bn
            if bn.weight.grad is None or bn.bias.grad is None:
                continue
            s = (bn.weight.grad * bn.weight + bn.bias.grad * bn.bias).pow(2).detach().cpu()
            self.scores[name] = self.scores.get(name, torch.zeros_like(s)) + s
        self.steps += 1


def taylor_scores(model: nn.Module, graph: ChannelGraph, batches: Iterable,
                  loss_fn: Callable) -> dict[str, torch.Tensor]:
    """Taylor scores on labelled calibration batches (imgs float 0-1, targets); BN statistics stay frozen."""
    acc = TaylorAccumulator(model, graph)
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # use the running statistics: the model being judged is the deployed one
    try:
        for imgs, targets in batches:
            model.zero_grad(set_to_none=True)
            loss, _ = loss_fn(model(imgs), targets)
            loss.backward()
            acc.step()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not acc.steps:
        raise ValueError("taylor importance: no calibration batches were given")
    return acc.scores
