"""One-shot pruning by layer-wise reconstruction (OBS / SparseGPT adapted to convolutions).

Each prunable layer is treated as the least-squares problem  min ||W' X - W X||^2  over its calibration inputs X
(im2col columns for kxk convs), whose Hessian is H = X X^T. Weights are removed by the OBS saliency
w_q^2 / [H^-1]_qq and the surviving weights of the same output row absorb the error, column block by column block
with the upper Cholesky factor of H^-1 (SparseGPT's lazy-batch form, which is exact OBS for each pruned column with
the columns to its left frozen). Layers are visited in execution order and each one sees the activations of the
model pruned so far, so later layers also compensate for the error of earlier ones.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from utils.logger import LOGGER

from .activations import StageRunner
from .oneshot import (
    _smallest_k_mask,
    bn_output_scale,
    following_batchnorms,
    split_targets,
    strip_torch_pruning,
    zeros_to_reach,
)
from .weight_allocation import allocate

BLOCK4 = 4  # VNNI/DeepSparse INT8 block: 4 consecutive input channels at one kernel position ([1,4] mask_type)


def supports_reconstruction(module: nn.Module) -> bool:
    """Dense Linear or ungrouped Conv2d with numeric padding: the layers whose im2col input we can form."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and not isinstance(module.padding, str)


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (B, d, L) columns, d ordered like weight.flatten(1): output[b] = W.flatten(1) @ cols[b]."""
    x = x.float()
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, module.in_features).transpose(1, 2)
    if module.kernel_size == (1, 1) and module.stride == (1, 1) and module.padding == (0, 0):
        return x.reshape(x.shape[0], x.shape[1], -1)
    return F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)


@dataclass
class LayerStats:
    """Running H = X X^T (and G = X_dense X^T for dense targets) of one layer, summed in float64.

    max_positions: at most this many output positions per image enter the sums (a fixed random subset). Early
    layers see 25,600 positions per 640 image for a d of ~150: a few thousand estimate H as well at a fraction
    of the matmul cost.
    """

    d: int
    cross: bool = False
    max_positions: int | None = None
    H: torch.Tensor = field(init=False)
    G: torch.Tensor | None = field(init=False)
    n: int = 0

    def __post_init__(self) -> None:
        self.H = torch.zeros(self.d, self.d, dtype=torch.float64)
        self.G = torch.zeros(self.d, self.d, dtype=torch.float64) if self.cross else None
        self._gen = torch.Generator().manual_seed(0)

    def _positions(self, cols: torch.Tensor) -> torch.Tensor:
        """Keep a random max_positions subset of the columns (the same one for the pruned and the dense input)."""
        L = cols.shape[-1]
        if self.max_positions is None or L <= self.max_positions:
            return cols
        idx = torch.randperm(L, generator=self._gen)[: self.max_positions].sort().values
        return cols[..., idx]

    def add(self, module: nn.Module, x: torch.Tensor, x_dense: torch.Tensor | None = None, chunk: int = 4) -> None:
        """Accumulate a batch of layer inputs; per-image products avoid copying the im2col tensor."""
        for i in range(0, len(x), chunk):  # bounds the im2col memory of large early feature maps
            cols = layer_columns(module, x[i : i + chunk])
            dense = layer_columns(module, x_dense[i : i + chunk]) if self.G is not None else None
            if self.max_positions is not None and cols.shape[-1] > self.max_positions:
                state = self._gen.get_state()
                cols = self._positions(cols)
                if dense is not None:
                    self._gen.set_state(state)
                    dense = self._positions(dense)
            h = torch.zeros(self.d, self.d)
            g = torch.zeros(self.d, self.d) if dense is not None else None
            for b in range(len(cols)):
                h.addmm_(cols[b], cols[b].T)
                if g is not None:
                    g.addmm_(dense[b], cols[b].T)
            self.H += h.double()
            if g is not None:
                self.G += g.double()
            self.n += cols.shape[0] * cols.shape[2]

    def mean(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.n == 0:
            raise ValueError("no calibration activations reached this layer; pass a non-empty list of image batches")
        return self.H / self.n, (self.G / self.n if self.G is not None else None)


def damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H + damp * mean(diag) I, with dead inputs (zero diagonal) given a unit diagonal so H stays invertible."""
    H = H.double().clone()
    diag = H.diagonal()
    diag[diag <= 0] = 1.0
    return H + torch.eye(len(H), dtype=H.dtype) * float(diag.mean()) * damp


def dense_target(W: torch.Tensor, H: torch.Tensor, G: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """W* = W G H^-1: the weights that best map this layer's pruned-model input to the DENSE model's output.

    Written as W + W (G - H) H^-1 so a layer whose input is still exact (G == H) keeps W unchanged under damping.
    """
    W = W.double()
    L = torch.linalg.cholesky(damped(H, damp))
    return W + torch.cholesky_solve((W @ (G - H).double()).T, L).T


def inverse_cholesky(H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp*mean(diag) I)^-1; dead inputs get a unit diagonal so H stays invertible."""
    for attempt in range(6):  # rank-deficient H (few images, constant channels): raise the damping until PD
        try:
            Hd = damped(H, damp * 10**attempt)
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("layer Hessian is not positive definite even with heavy damping; use more calibration images")


def _select(W1: torch.Tensor, d1: torch.Tensor, n_groups: int, group: int, row_scale: torch.Tensor | None):
    """Mask of the n_groups lowest-saliency groups (OBS error w^2/[U]_qq^2, times the BN gain^2 of the row)."""
    sal = (W1 / d1) ** 2
    if row_scale is not None:
        sal = sal * row_scale.view(-1, 1) ** 2
    sal = torch.where(W1 == 0, torch.full_like(sal, -1.0), sal)  # existing zeros go first: counts stay exact
    rows, width = W1.shape
    grouped = sal.view(rows, width // group, group).sum(-1)
    mask = _smallest_k_mask(grouped.flatten(), n_groups).view(rows, width // group)
    return mask.repeat_interleave(group, dim=1)


def _block_shares(W: torch.Tensor, diag: torch.Tensor, n_groups: int, group: int, row_scale: torch.Tensor | None,
                  blocksize: int) -> list[int]:
    """How many groups each column block prunes: as many as the layer-wide saliency ranking puts there.

    SparseGPT's equal share per block forces every run of columns (input channels) to the same sparsity; ranking the
    whole layer once keeps the per-block choice adaptive but lets unimportant input channels take more of the zeros.
    """
    mask = _select(W, diag, n_groups, group, row_scale)
    return [int(mask[:, i : i + blocksize].sum()) // group for i in range(0, W.shape[1], blocksize)]


def _obs_block(WT: torch.Tensor, U1: torch.Tensor, scaled_mask: torch.Tensor) -> torch.Tensor:
    """Column-by-column OBS inside one block (WT is the block transposed, updated in place); returns the errors.

    err_j = w_j / U_jj on pruned entries; the columns right of j absorb err_j * U_j,j: (two ops per column so the
    Python loop stays cheap).
    """
    err = torch.zeros_like(WT)
    for j in range(len(WT)):
        torch.mul(WT[j], scaled_mask[j], out=err[j])
        WT[j:].addr_(U1[j, j:], err[j], alpha=-1.0)
    return err


def sparsegpt(W: torch.Tensor, H: torch.Tensor, n_zero: int, group: int = 1, row_scale: torch.Tensor | None = None,
              blocksize: int = 128, damp: float = 0.01, mask: torch.Tensor | None = None,
              U: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune n_zero entries of W (rows, d) for inputs with Hessian H; returns (new W in float64, pruned mask).

    The mask is chosen per column block of `blocksize` from saliencies that include the updates of earlier blocks;
    how many zeros each block gets comes from one layer-wide ranking before any update. `group` columns are removed
    together ([1,4] blocks) and must divide blocksize and d. A given `mask` skips selection (used to check the update against least squares);
    a given U (inverse_cholesky(H)) saves refactoring H when one layer is pruned to several levels.
    """
    rows, d = W.shape
    if d % group or blocksize % group:
        raise ValueError(f"group {group} must divide the {d} columns and the block size {blocksize}")
    W = W.double().clone()
    U = inverse_cholesky(H, damp) if U is None else U
    pruned = torch.zeros_like(W, dtype=torch.bool)
    starts = list(range(0, d, blocksize))
    shares = _block_shares(W, U.diagonal(), n_zero // group, group, row_scale, blocksize) if mask is None else []
    for b, i1 in enumerate(starts):
        i2 = min(i1 + blocksize, d)
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]
        M1 = mask[:, i1:i2] if mask is not None else _select(W1, U1.diagonal(), shares[b], group, row_scale)
        WT = W1.T.clone(memory_format=torch.contiguous_format)  # a copy even for one row (.contiguous() may alias)
        err1 = _obs_block(WT, U1, M1.T.double() / U1.diagonal().unsqueeze(1))
        W[:, i1:i2] = WT.T
        W[:, i1:i2][M1] = 0.0
        W[:, i2:] -= err1.T @ U[i1:i2, i2:]
        pruned[:, i1:i2] = M1
    return W, pruned


def block4_order(module: nn.Module) -> torch.Tensor | None:
    """Column permutation (C,kh,kw) -> (kh,kw,C) so [1,4] groups are 4 consecutive input channels at one tap."""
    if isinstance(module, nn.Linear):
        return None if module.in_features % BLOCK4 else torch.arange(module.in_features)
    c, taps = module.in_channels, module.kernel_size[0] * module.kernel_size[1]
    if c % BLOCK4:
        return None
    return torch.arange(c * taps).view(c, taps).T.flatten()


@torch.no_grad()
def prune_layer(module: nn.Module, H: torch.Tensor, n_zero: int, row_scale: torch.Tensor | None = None,
                block4: bool = False, blocksize: int = 128, damp: float = 0.01, G: torch.Tensor | None = None,
                U: torch.Tensor | None = None) -> int:
    """Prune one Conv2d/Linear in place to n_zero zeros (a multiple of 4 with block4); returns the zeros written.

    With G (dense-input cross moments) the layer is first re-fit to the dense model's output, then pruned.
    """
    W = module.weight.data
    W2 = W.reshape(W.shape[0], -1)
    if G is not None:
        W2 = dense_target(W2, H, G, damp)
    order = block4_order(module) if block4 else None
    if block4 and order is None:
        raise ValueError(f"[1,4] blocks need input channels divisible by 4; {module} has {W.shape[1]}")
    group = BLOCK4 if block4 else 1
    if order is not None:
        W2, H = W2[:, order], H[order][:, order]
    size = max(group, blocksize // group * group)
    U = U if order is None and G is None else None  # a cached factor only fits the unpermuted, unrefit layer
    new, mask = sparsegpt(W2, H, n_zero, group, row_scale, size, damp, U=U)
    if order is not None:
        new[:, order] = new.clone()
        mask[:, order] = mask.clone()
    W.copy_(new.reshape(W.shape).to(W.dtype))
    return int(mask.sum())


@torch.no_grad()
def prune_layer_magnitude(module: nn.Module, n_zero: int, row_scale: torch.Tensor | None = None) -> int:
    """Fallback for layers without an im2col form (grouped convs): BN-folded |w|, no compensation."""
    W = module.weight.data
    score = W.abs().float().reshape(W.shape[0], -1)
    if row_scale is not None:
        score = score * row_scale.view(-1, 1)
    score = torch.where(W.reshape(score.shape) == 0, torch.full_like(score, -1.0), score)
    mask = _smallest_k_mask(score.flatten(), n_zero)
    W.view(-1)[mask] = 0
    return n_zero


def _layer_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Weight name 'model.2.cv1.conv.weight' -> its module."""
    return {n: model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model for n in names}


@dataclass
class ObcConfig:
    """Knobs of the reconstruction; defaults are what the yolov5n/COCO128 sweep measured best."""

    block4: bool = False  # [1,4] blocks along input channels (VNNI / DeepSparse INT8)
    sequential: str = "layer"  # 'layer': each conv sees its pruned predecessors; 'stage': one pass per YOLOv5 layer
    dense_targets: bool = True  # re-fit each layer to the dense model's output before pruning
    blocksize: int = 128
    damp: float = 0.01
    bn_scale: bool = True  # weigh each output row by its BN gain when choosing what to prune
    max_positions: int | None = 4096  # per image and layer in H (LayerStats); None: every position


def _prune_group(names: list[str], runner: StageRunner, i: int, layers: dict, dense_layers: dict | None,
                 counts: dict[str, int], scales: dict, cfg: ObcConfig) -> None:
    """Capture the inputs of `names` (all in stage i) in one pass, then prune each of them."""
    todo = [n for n in names if counts.get(n, 0) > 0]
    fallback = [n for n in todo if not supports_reconstruction(layers[n]) or (cfg.block4 and block4_order(layers[n]) is None)]
    for n in fallback:
        prune_layer_magnitude(layers[n], counts[n], scales.get(n))
    todo = [n for n in todo if n not in fallback]
    if not todo:
        return
    stats = {n: LayerStats(layers[n].weight[0].numel(), dense_layers is not None, cfg.max_positions) for n in todo}
    runner.capture(i, {n: layers[n] for n in todo}, {n: dense_layers[n] for n in todo} if dense_layers else None,
                   lambda n, x, xd: stats[n].add(layers[n], x, xd))
    for n in todo:
        H, G = stats[n].mean()
        prune_layer(layers[n], H, counts[n], scales.get(n), cfg.block4, cfg.blocksize, cfg.damp, G)
        LOGGER.debug(f"obc: {n} -> {counts[n] / layers[n].weight.numel():.3f}")


@torch.no_grad()
def obc_prune(model: nn.Module, sparsity: float, calibration: Sequence[torch.Tensor],
              exclude: Sequence[str] | None = None, allocation: str | Callable = "global",
              config: ObcConfig | None = None) -> nn.Module:
    """Prune in place so global_sparsity(model) == sparsity (to within 2 weights per layer with block4).

    calibration: image batches (B,3,H,W), uint8 or 0-1 floats, e.g. calibration.calibration_batches(...).
    allocation: how the zeros are split over layers ('global', 'uniform', or a callable(model, included, k) from
    allocation.py returning {weight name: zeros}); exclude: regexes like prune_oneshot's (None -> stem conv only).
    """
    cfg, t0 = config or ObcConfig(), time.perf_counter()
    strip_torch_pruning(model)
    included, excluded = split_targets(model, exclude)
    counts = allocate(model, included, zeros_to_reach(included, excluded, sparsity), allocation)
    if cfg.block4:
        counts = {n: round(c / BLOCK4) * BLOCK4 for n, c in counts.items()}
    was_training = model.training
    model.eval()
    dense = copy.deepcopy(model) if cfg.dense_targets else None
    layers = _layer_modules(model, list(included))
    dense_layers = _layer_modules(dense, list(included)) if dense is not None else None
    bns = following_batchnorms(model) if cfg.bn_scale else {}
    scales = {n: bn_output_scale(bns[n]).double() for n in included if n in bns}
    runner = StageRunner(model, calibration, dense)
    for i in range(len(runner.stages)):
        groups = runner.order(i, layers)
        if cfg.sequential == "stage":
            groups = [[n for g in groups for n in g]] if groups else []
        elif dense_layers is not None and len(groups) > 1:
            runner.cache_dense(i, {n: dense_layers[n] for g in groups for n in g})
        for names in groups:
            _prune_group(names, runner, i, layers, dense_layers, counts, scales, cfg)
        if i < len(runner.stages) - 1:
            runner.advance(i)
    model.train(was_training)
    LOGGER.info(f"obc: {len(layers)} layers pruned to {sparsity:.2f} global sparsity on {runner.images} calibration "
                f"images in {time.perf_counter() - t0:.1f}s")
    return model
