"""One-shot 1xN block magnitude pruning: zeros come in runs of N consecutive input channels (N=4 suits VNNI).

VNNI multiplies 4 int8 values per 32-bit lane, so a sparse INT8 kernel can only skip whole groups of 4 along the
reduction (input-channel) axis; unstructured zeros scattered inside a group save nothing. SparseML's [1, 4] mask
groups conv weights the same way: input channels moved last, padded to a multiple of 4, blocks scored by mean |w|.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from utils.sparsity.oneshot import split_targets, strip_torch_pruning, zeros_to_reach


def parse_block(text: str | None) -> int:
    """'1x4' -> 4; 'none'/'' -> 1 (unstructured). Only 1xN blocks along input channels are meaningful here."""
    if not text or str(text).lower() in ("none", "1x1", "unstructured"):
        return 1
    a, sep, b = str(text).lower().partition("x")
    if sep != "x" or a != "1" or not b.isdigit() or int(b) < 1:
        raise ValueError(f"--block {text!r}: expected 1xN (e.g. 1x4) or none")
    return int(b)


def _blocked_view(w: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """(rows of `block` weights along input channels, padding added); conv (O,I,kh,kw) -> (O*kh*kw*ceil(I/b), b)."""
    x = w.detach().float()
    if x.dim() > 2:
        x = x.movedim(1, -1)  # input channels last, as the engines' GEMM reduction axis
    pad = (-x.shape[-1]) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(-1, block), pad


def block_scores(w: torch.Tensor, block: int) -> torch.Tensor:
    """Mean |w| per block over its real (unpadded) elements."""
    rows, pad = _blocked_view(w, block)
    counts = torch.full((rows.shape[0],), float(block))
    if pad:
        counts.view(-1, (w.shape[1] + pad) // block)[:, -1] = block - pad
    return rows.abs().sum(1) / counts


@torch.no_grad()
def _zero_blocks(w: torch.Tensor, drop: torch.Tensor, block: int) -> None:
    """Write zeros into every weight of the blocks flagged in `drop` (one flag per block)."""
    rows, pad = _blocked_view(w, block)
    mask = (~drop).float().unsqueeze(1).expand_as(rows).reshape(*_permuted_shape(w, pad))
    if pad:
        mask = mask[..., : mask.shape[-1] - pad]
    if w.dim() > 2:
        mask = mask.movedim(-1, 1)
    w.mul_(mask.to(w.dtype))


def _permuted_shape(w: torch.Tensor, pad: int) -> list[int]:
    shape = list(w.shape)
    if len(shape) > 2:
        shape.append(shape.pop(1))
    shape[-1] += pad
    return shape


def prune_blocks(model: nn.Module, sparsity: float, block: int = 4, exclude: Sequence[str] | None = None) -> nn.Module:
    """Zero the lowest-|w| 1xblock groups, the same fraction in every included layer, to reach `sparsity` globally.

    Exclusions and the denominator follow utils.sparsity.prune_oneshot (stem conv and Detect outputs kept dense by
    default). The result lands within one block per layer of the target.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    strip_torch_pruning(model)
    included, excluded = split_targets(model, exclude)
    n_incl = sum(p.numel() for p in included.values())
    fraction = zeros_to_reach(included, excluded, sparsity) / max(n_incl, 1)
    for p in included.values():
        scores = block_scores(p, block)
        k = round(fraction * scores.numel())
        if k <= 0:
            continue
        drop = torch.zeros_like(scores, dtype=torch.bool)
        drop[torch.argsort(scores, stable=True)[:k]] = True
        _zero_blocks(p.data, drop, block)
    return model
