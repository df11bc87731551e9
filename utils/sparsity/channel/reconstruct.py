"""Least-squares refit of a channel-pruned model's convs so each layer reproduces the dense layer's output.

After channels are removed, every conv sees fewer (and upstream-perturbed) inputs. Layer by layer, in forward order,
we run the dense and the pruned model on the same calibration images and solve, per conv,
    W', b' = argmin || W x - (W' x' + b') ||^2     (x, x': dense and pruned input patches; W x: dense pre-BN output)
with ridge damping towards the starting weights (damp=1: on yolov5n/COCO128 at 20% fewer FLOPs, mAP50 0.06 with
damp 0.1 and 0.077 with 1.0, from 32 images); b' goes into the BN running mean (or Detect's bias). This is the classic reconstruction step of
channel pruning (He et al. 2017, ThiNet) without the LASSO selection; on yolov5n/COCO128 it is what makes one-shot
channel pruning usable at all (see README numbers).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import as_float

MAX_ROWS = 200_000  # patch rows per conv and batch kept for the normal equations (sampled beyond this)


def _forward_until(model: nn.Module, x: torch.Tensor, last: int) -> None:
    """DetectionModel.forward, stopped after layer `last` (the rest cannot change this layer's statistics)."""
    y: list = []
    for m in model.model[: last + 1]:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x if m.i in model.save else None)


def _patches(conv: nn.Conv2d, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input patches as rows (with a ones column for the bias), subsampled to MAX_ROWS; also the row index used."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (N, d, L)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    idx = None
    if rows.shape[0] > MAX_ROWS:
        idx = torch.randperm(rows.shape[0], generator=gen)[:MAX_ROWS]
        rows = rows[idx]
    return torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1).double(), idx


class _Stats:
    """Normal equations A = X'^T X', B = Y^T X' of one conv, summed over calibration batches."""

    def __init__(self) -> None:
        self.A: torch.Tensor | None = None
        self.B: torch.Tensor | None = None
        self.pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def add(self, rows: torch.Tensor, target: torch.Tensor) -> None:
        a, b = rows.T @ rows, target.T @ rows
        self.A = a if self.A is None else self.A + a
        self.B = b if self.B is None else self.B + b


def _fit(stats: _Stats, damp: float, prior: torch.Tensor) -> torch.Tensor:
    """Ridge solution [W' | b'] (cout, d+1) pulled towards `prior` (the pruned weights before the refit).

    Deep layers have few positions per image (a 10x10 map at 320 px), often fewer rows than patch dimensions:
    shrinking towards the starting weights instead of towards zero keeps the fit from memorising the calibration set.
    """
    A = stats.A.clone()
    d = A.shape[0] - 1
    lam = damp * A.diagonal()[:d].mean().clamp_min(1e-8)
    A[range(d), range(d)] += lam
    rhs = stats.B.T.clone()
    rhs[:d] += lam * prior[:, :d].T.double()
    return torch.linalg.solve(A, rhs).T


def _prior(model: nn.Module, name: str, block: str | None, dense_bn_mean: torch.Tensor | None) -> torch.Tensor:
    """Current [W | b] of a pruned conv, b being what constant compensation folded into its BN mean (or its bias)."""
    conv = model.get_submodule(name)
    w = conv.weight.detach().flatten(1)
    if block is not None:
        b = dense_bn_mean - model.get_submodule(block).bn.running_mean
    else:
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
    return torch.cat([w, b[:, None]], 1)


@torch.no_grad()
def _apply(model: nn.Module, name: str, block: str | None, sol: torch.Tensor,
           dense_bn_mean: torch.Tensor | None) -> None:
    conv = model.get_submodule(name)
    w, b = sol[:, :-1].float(), sol[:, -1].float()
    conv.weight.copy_(w.view_as(conv.weight))
    if block is not None:  # pre-BN output shifted by b': the BN subtracts it through its running mean
        model.get_submodule(block).bn.running_mean.copy_(dense_bn_mean - b)
    elif conv.bias is not None:
        conv.bias.copy_(b)


@torch.no_grad()
def reconstruct(pruned: nn.Module, dense: nn.Module, calibration: Sequence[torch.Tensor],
                out_keep: dict[str, torch.Tensor], blocks: dict[str, str | None], damp: float = 1.0,
                seed: int = 0) -> int:
    """Refit every conv of `pruned` (names as in `dense`), one top-level layer at a time; returns convs refit.

    out_keep: conv name -> dense output channels the pruned conv kept; blocks: conv name -> its Conv block or None.
    """
    pruned.eval(), dense.eval()
    gen = torch.Generator().manual_seed(seed)
    batches = [as_float(b) for b in calibration]
    done = 0
    for layer in pruned.model:
        names = [n for n in out_keep if n.startswith(f"model.{layer.i}.")
                 and pruned.get_submodule(n).groups == 1]
        if not names:
            continue
        stats = {n: _Stats() for n in names}
        hooks = [pruned.get_submodule(n).register_forward_hook(
            lambda m, i, o, s=stats[n]: setattr(s, "pending", _patches(m, i[0], gen))) for n in names]
        hooks += [dense.get_submodule(n).register_forward_hook(
            lambda m, i, o, s=stats[n], k=out_keep[n]: _take_target(s, o, k)) for n in names]
        try:
            for x in batches:
                _forward_until(pruned, x, layer.i)  # pruned first: its hook stores patches, dense's pairs them
                _forward_until(dense, x, layer.i)
        finally:
            for h in hooks:
                h.remove()
        for n in names:
            blk = blocks.get(n)
            mean = dense.get_submodule(blk).bn.running_mean[out_keep[n]] if blk else None
            _apply(pruned, n, blk, _fit(stats[n], damp, _prior(pruned, n, blk, mean)), mean)
            done += 1
    return done


def _take_target(stats: _Stats, out: torch.Tensor, keep: torch.Tensor) -> None:
    """Dense conv output at the kept channels, as rows matching the pruned patches (same positions)."""
    rows, idx = stats.pending
    y = out[:, keep].permute(0, 2, 3, 1).reshape(-1, len(keep)).double()
    stats.add(rows, y if idx is None else y[idx])
    stats.pending = None
