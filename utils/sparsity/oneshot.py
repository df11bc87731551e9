"""One-shot (no training) magnitude pruning, plus BatchNorm re-calibration to recover accuracy afterwards.

Target semantics: `sparsity` is the fraction of zeros over ALL prunable weights (measure.global_sparsity), excluded
layers included in the denominator. Excluded layers are never modified, so their zeros count as they are and the
included layers are pruned a little harder to make up for them; the result hits the target to the weight unless
the model already holds more zeros than asked for (pruning never revives a weight).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .measure import prunable_parameters

# Default exclusion (regexes searched in weight names such as 'model.24.m.0.weight'): only the stem conv, which sees
# raw pixels through 3 input channels and holds <0.1% of the weights. Measured on yolov5n / COCO128 at 320 (one-shot,
# mAP@.5:.95 after BN re-calibration, dense 0.278): excluding the stem helped layerwise (0.121 -> 0.153 at 50%,
# 0.211 -> 0.216 at 30%) and was neutral for global (which leaves it ~96% dense anyway at 50%). Excluding Detect's
# output convs hurt or was neutral everywhere (layerwise 50%: 0.121 -> 0.104; global 70%: 0.041 -> 0.011), because
# their 6% of the weights then has to be taken from the backbone instead.
# Pass exclude=() to prune every Conv2d/Linear like Ultralytics' prune().
DEFAULT_EXCLUDE: tuple[str, ...] = (r"(^|\.)model\.0\.conv\.weight$",)
DETECT_HEAD = r"(^|\.)model\.\d+\.m\.\d+\.weight$"  # Detect's output convs, for callers who want them dense
METHODS = ("global", "layerwise")


def strip_torch_pruning(model: nn.Module) -> int:
    """Make any torch.nn.utils.prune reparametrisation permanent so no hooks or weight_orig/weight_mask remain."""
    removed = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
                removed += 1
    return removed


def split_targets(
    model: nn.Module, exclude: Sequence[str] | None = None
) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """(included, excluded) prunable weights; `exclude=None` means DEFAULT_EXCLUDE, `()` prunes everything."""
    patterns = [re.compile(p) for p in (DEFAULT_EXCLUDE if exclude is None else exclude)]
    included: dict[str, nn.Parameter] = {}
    excluded: dict[str, nn.Parameter] = {}
    for name, p in prunable_parameters(model).items():
        (excluded if any(r.search(name) for r in patterns) else included)[name] = p
    return included, excluded


def following_batchnorms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Map conv weight name -> the BatchNorm2d applied right after that conv (YOLOv5 Conv, QAT ConvBn, Sequential)."""
    found: dict[str, nn.BatchNorm2d] = {}

    def matches(conv: object, bn: object) -> bool:
        return isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if matches(getattr(module, "conv", None), getattr(module, "bn", None)):  # YOLOv5 Conv: .conv + .bn siblings
            found[f"{prefix}conv.weight"] = module.bn
        if matches(module, getattr(module, "bn", None)):  # fused QAT ConvBn2d carries its own .bn
            found[f"{prefix}weight"] = module.bn
        if isinstance(module, nn.Sequential):  # plain Conv2d, BatchNorm2d pairs
            children = list(module.named_children())
            for (cname, conv), (_, bn) in zip(children, children[1:]):
                if matches(conv, bn):
                    found[f"{prefix}{cname}.weight"] = bn
    return found


def bn_output_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """|gamma| / sqrt(var + eps) per channel: how much BN amplifies each conv output channel at inference."""
    gamma = bn.weight.detach().abs() if bn.affine else torch.ones(bn.num_features)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    return gamma.float() / torch.sqrt(var.float() + bn.eps)


def _scores(weight: torch.Tensor, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """Flat pruning scores; exact zeros get -1 so they are always chosen first (keeps counts exact and idempotent)."""
    w = weight.detach().float()
    score = w.abs()
    if bn is not None:
        score = score * bn_output_scale(bn).to(score.device).view(-1, *([1] * (w.dim() - 1)))
    return torch.where(w == 0, torch.full_like(score, -1.0), score).flatten()


def _smallest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly k lowest scores; ties at the threshold go to the lowest indices (deterministic)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return mask
    if k >= scores.numel():
        return ~mask
    threshold = torch.kthvalue(scores, k).values
    mask = scores < threshold
    need = k - int(mask.sum())
    mask[(scores == threshold).nonzero().flatten()[:need]] = True
    return mask


@torch.no_grad()
def _zero_out(params: dict[str, nn.Parameter], mask: torch.Tensor) -> None:
    """Write zeros where a flat mask (concatenated over params in order) is True."""
    offset = 0
    for p in params.values():
        n = p.numel()
        p.data.view(-1)[mask[offset : offset + n].to(p.device)] = 0
        offset += n


def zeros_to_reach(included: dict[str, nn.Parameter], excluded: dict[str, nn.Parameter], sparsity: float) -> int:
    """How many included weights must be zero so zeros / all prunable weights equals `sparsity`."""
    n_incl = sum(p.numel() for p in included.values())
    n_total = n_incl + sum(p.numel() for p in excluded.values())
    excl_zeros = sum(int((p == 0).sum()) for p in excluded.values())
    k = round(sparsity * n_total) - excl_zeros
    if k > n_incl:
        reachable = (n_incl + excl_zeros) / max(n_total, 1)
        raise ValueError(
            f"sparsity {sparsity:.4f} is unreachable: excluded layers hold {n_total - n_incl} weights, so the most "
            f"this exclusion list allows is {reachable:.4f}; pass fewer exclude patterns or a lower sparsity"
        )
    return max(k, 0)


def _prune_global(model: nn.Module, included: dict[str, nn.Parameter], k: int) -> None:
    """One threshold over BN-folded magnitudes of every included layer (raw |w| where no BN follows)."""
    if not included:
        return
    bns = following_batchnorms(model)
    scores = torch.cat([_scores(p, bns.get(name)).cpu() for name, p in included.items()])
    _zero_out(included, _smallest_k_mask(scores, k))


def _layer_counts(sizes: list[int], k: int) -> list[int]:
    """Split k zeros over layers in proportion to size; largest remainders get the leftovers so the sum is exact."""
    total = sum(sizes)
    exact = [k * n / total for n in sizes]
    counts = [int(x) for x in exact]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: k - sum(counts)]:
        counts[i] += 1
    return counts


def _prune_layerwise(included: dict[str, nn.Parameter], k: int) -> None:
    """Same L1 fraction in every included layer (torch l1_unstructured semantics, Ultralytics' prune() baseline)."""
    if not included:
        return
    counts = _layer_counts([p.numel() for p in included.values()], k)
    for (name, p), k_layer in zip(included.items(), counts):
        _zero_out({name: p}, _smallest_k_mask(_scores(p, None).cpu(), k_layer))


def prune_oneshot(
    model: nn.Module, sparsity: float, method: str = "global", exclude: Sequence[str] | None = None
) -> nn.Module:
    """Zero weights in place so global_sparsity(model) == sparsity; permanent (no masks, hooks or reparametrisation).

    method='layerwise': every included layer gets the same fraction (within one weight) by |w|.
    method='global': one threshold over |w| * |gamma|/sqrt(var+eps) of the BN that follows each conv.
    exclude: regexes searched in weight names; None -> DEFAULT_EXCLUDE, () -> prune every Conv2d/Linear.
    Zeros are not held during later training; use a ConstantPruningModifier recipe for that.
    """
    if method not in METHODS:
        raise ValueError(f"unknown one-shot pruning method {method!r}; choose one of {METHODS}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    strip_torch_pruning(model)
    included, excluded = split_targets(model, exclude)
    k = zeros_to_reach(included, excluded, sparsity)
    if method == "global":
        _prune_global(model, included, k)
    else:
        _prune_layerwise(included, k)
    return model


def _as_image_batch(batch: object, device: torch.device) -> torch.Tensor:
    """Accept a tensor or a dataloader tuple (imgs, ...); uint8 pixels become 0-1 floats like the trainer feeds."""
    imgs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(imgs, torch.Tensor):
        raise TypeError(f"bn_recalibrate expects image tensors (B,3,H,W) or (imgs, ...) tuples, got {type(imgs)}")
    imgs = imgs.to(device)
    return imgs.float() / 255 if imgs.dtype == torch.uint8 else imgs.float()


@torch.no_grad()
def bn_recalibrate(model: nn.Module, images_iter: Iterable, num_batches: int = 32) -> int:
    """Re-estimate every BN's running mean/var on unlabeled images (cumulative average), then leave the model in eval.

    Pruning shifts each layer's output distribution and stale statistics compound layer by layer; re-estimating them
    needs no labels or gradients. yolov5n/COCO128 at 50% one-shot: mAP@.5:.95 0.009 -> 0.12 (layerwise), 0.067 -> 0.16
    (global). At light sparsity (30% global) 128 images gave slightly worse stats than the originals, so measure.
    Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    device = next(model.parameters()).device
    model.train()
    used = 0
    for batch in images_iter:
        if used >= num_batches:
            break
        model(_as_image_batch(batch, device))
        used += 1
    for m, (momentum, running) in zip(bns, saved):
        m.momentum = momentum
        if used == 0:  # nothing seen: put the old statistics back rather than leave mean 0 / var 1
            for k, v in m.named_buffers(recurse=False):
                v.copy_(running[k])
    model.eval()
    if used == 0:
        raise ValueError("bn_recalibrate got no image batches; pass a non-empty iterable of (B,3,H,W) tensors")
    return used
