"""Physical channel removal, soft channel masks, and rebuilding a pruned layout from a checkpoint.

A pruning *plan* maps a group key (its first source, e.g. 'model.2.cv1') to the sorted channel indices to remove.
Removing a channel replaces it by a constant (its expected value) folded into every consumer: into the consumer's
BN running mean (conv + BN) or its bias (Detect). The constant is exact when the channel's filters are zero (masked or
dead channels: output act(bn(0))), and an estimate for live channels (E[act(z)], z ~ N(beta, gamma^2), what BN makes
the pre-activation look like on training data). For consumers with k>1 kernels the fold is exact away from the
zero-padded border only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .graph import ChannelGraph, Group

WIDTHS_KEY = "channel_widths"  # model.yaml entry: {conv name: [in, out]} of a physically pruned model
MASKS_KEY = "channel_masks"  # model.yaml entry: {group key: [removed channels]} of a soft-masked (dense) model
Plan = dict[str, list[int]]
from utils.logger import LOGGER


def _block_bn(model: nn.Module, block: str) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module]:
    b = model.get_submodule(block)
    return b.conv, b.bn, b.act


def _hermite(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite nodes/weights for E[f(z)], z ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w / w.sum(), dtype=torch.float64)


@torch.no_grad()
def source_constants(model: nn.Module, block: str, channels: list[int]) -> torch.Tensor:
    """Expected output of the given channels of a Conv block when replaced by a constant (see module docstring)."""
    conv, bn, act = _block_bn(model, block)
    idx = torch.as_tensor(channels, dtype=torch.long)
    gamma, beta = bn.weight[idx].double(), bn.bias[idx].double()
    mean, var = bn.running_mean[idx].double(), bn.running_var[idx].double()
    norms = conv.weight.flatten(1).abs().sum(1)
    dead = norms[idx] <= 1e-3 * norms.max().clamp_min(1e-12)  # masked filters (an EMA may leave a tiny remainder)
    z_dead = beta - gamma * mean / torch.sqrt(var + bn.eps)  # exact pre-activation of an all-zero filter
    nodes, weights = _hermite()
    z = beta[:, None] + gamma.abs()[:, None] * nodes[None]
    live = (act(z.float()).double() * weights).sum(1)
    return torch.where(dead, act(z_dead.float()).double(), live).float()


def _positions(node_inputs, plan_idx: dict[int, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int, tuple]]]:
    """Kept input positions of a conv, and (position, channel, sources) of every removed one."""
    keep, removed, pos = [], [], 0
    for s in node_inputs:
        rem = plan_idx.get(s.group) if s.group is not None else None
        if rem is None or rem.numel() == 0:
            keep.append(torch.arange(pos, pos + s.width))
        else:
            mask = torch.ones(s.width, dtype=torch.bool)
            mask[rem] = False
            keep.append(pos + torch.nonzero(mask).flatten())
            removed += [(pos + int(c), int(c), s.sources) for c in rem]
        pos += s.width
    return torch.cat(keep), removed


def _resize_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> None:
    """Keep only the given output filters / input columns of a conv, in place (module identity and names stay)."""
    w = conv.weight.data
    if out_idx is not None:
        w = w[out_idx]
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[out_idx].clone(), conv.bias.requires_grad)
    if in_idx is not None:
        w = w[:, in_idx]
    conv.weight = nn.Parameter(w.clone(), conv.weight.requires_grad)
    conv.out_channels, conv.in_channels = w.shape[0], w.shape[1] * conv.groups


def _resize_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight.data[idx].clone(), bn.weight.requires_grad)
    bn.bias = nn.Parameter(bn.bias.data[idx].clone(), bn.bias.requires_grad)
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


@torch.no_grad()
def _fold_constants(model: nn.Module, node, removed: list[tuple[int, int, tuple]], consts: dict) -> None:
    """Add what the removed input channels contributed (a constant each) to the consumer's BN mean or bias."""
    conv = model.get_submodule(node.name)
    value = torch.zeros(conv.in_channels)
    for pos, c, sources in removed:
        value[pos] = sum(float(consts[s][c]) for s in sources)
    if not value.any():
        return
    delta = (conv.weight.data.sum((2, 3)) * value).sum(1)  # per output channel
    if node.block is not None:
        model.get_submodule(node.block).bn.running_mean.sub_(delta)
    elif conv.bias is not None:
        conv.bias.data.add_(delta)


def _check_plan(graph: ChannelGraph, plan: Plan) -> dict[int, torch.Tensor]:
    """Plan keys -> group ids with index tensors; every group keeps at least one channel."""
    out = {}
    for key, chans in plan.items():
        g: Group | None = graph.by_key.get(key)
        if g is None:
            raise ValueError(f"channel plan: no channel group '{key}' in this model "
                             f"(groups: {', '.join(graph.by_key)})")
        if g.frozen and chans:
            raise ValueError(f"channel plan: group '{key}' is frozen (its channels are tied to an unsupported op)")
        idx = torch.as_tensor(sorted(set(int(c) for c in chans)), dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= g.size or idx.numel() >= g.size):
            raise ValueError(f"channel plan: group '{key}' has {g.size} channels; cannot remove {idx.tolist()[:8]}...")
        out[g.id] = idx
    return out


@torch.no_grad()
def remove_channels(model: nn.Module, plan: Plan, compensate: bool = True, graph: ChannelGraph | None = None) -> dict:
    """Physically remove the plan's channels; the model stays an ordinary DetectionModel, smaller.

    Returns {conv name: [in, out]} of every conv that changed (also merged into model.yaml[WIDTHS_KEY]).
    """
    graph = graph or ChannelGraph(model)
    rem = _check_plan(graph, plan)
    consts: dict[str, torch.Tensor] = {}
    if compensate:
        for gid, idx in rem.items():
            for src in graph.groups[gid].sources:
                full = torch.zeros(graph.groups[gid].size)
                full[idx] = source_constants(model, src, idx.tolist())
                consts[src] = full
    changed = {}
    for node in graph.convs.values():
        in_keep, removed = _positions(node.inputs, rem)
        out_rem = rem.get(node.out_group) if node.out_group is not None else None
        if not removed and (out_rem is None or out_rem.numel() == 0):
            continue
        if compensate and removed:
            _fold_constants(model, node, removed, consts)
        out_keep = None
        if out_rem is not None and out_rem.numel():
            mask = torch.ones(graph.groups[node.out_group].size, dtype=torch.bool)
            mask[out_rem] = False
            out_keep = torch.nonzero(mask).flatten()
        conv = model.get_submodule(node.name)
        _resize_conv(conv, out_keep, in_keep if removed else None)
        if out_keep is not None and node.block is not None:
            _resize_bn(model.get_submodule(node.block).bn, out_keep)
        changed[node.name] = [conv.in_channels, conv.out_channels]
    _record_widths(model, changed)
    return changed


def kept_outputs(model: nn.Module, graph: ChannelGraph, plan: Plan) -> tuple[dict[str, torch.Tensor], dict]:
    """Per conv (names of the unpruned model): output channels a plan keeps, and the Conv block owning the conv."""
    rem = _check_plan(graph, plan)
    keep, blocks = {}, {}
    for node in graph.convs.values():
        n = model.get_submodule(node.name).out_channels
        mask = torch.ones(n, dtype=torch.bool)
        if node.out_group in rem:
            mask[rem[node.out_group]] = False
        keep[node.name], blocks[node.name] = torch.nonzero(mask).flatten(), node.block
    return keep, blocks


def _record_widths(model: nn.Module, changed: dict) -> None:
    """Store the new layout in model.yaml so every checkpoint saved from this model can rebuild it."""
    if not changed:
        return
    model.yaml = dict(model.yaml)
    widths = dict(model.yaml.get(WIDTHS_KEY) or {})
    widths.update({k: list(v) for k, v in changed.items()})
    model.yaml[WIDTHS_KEY] = widths
    for layer in model.model:
        layer.np = sum(p.numel() for p in layer.parameters())


def apply_channel_widths(model: nn.Module, widths: dict | None = None) -> nn.Module:
    """Reshape a freshly built model to a pruned layout (model.yaml[WIDTHS_KEY]) so a pruned state_dict fits.

    Weights are placeholders (zeros); load_state_dict fills them. Called by the checkpoint loader.
    """
    widths = widths if widths is not None else (getattr(model, "yaml", {}) or {}).get(WIDTHS_KEY) or {}
    modules = dict(model.named_modules())
    for name, (cin, cout) in widths.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{WIDTHS_KEY}: '{name}' is not a conv of this model; the checkpoint's layout does not "
                             f"match its yaml")
        parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        bn = getattr(parent, "bn", None)
        if not isinstance(bn, nn.BatchNorm2d):  # Detect's outputs are never pruned; their count follows nc
            cout = conv.out_channels
        _resize_conv(conv, torch.arange(int(cout)) if cout != conv.out_channels else None,
                     torch.arange(int(cin) // conv.groups) if cin != conv.in_channels else None)
        if isinstance(bn, nn.BatchNorm2d) and bn.num_features != cout:
            _resize_bn(bn, torch.arange(int(cout)))
    if widths:
        model.yaml = {**model.yaml, WIDTHS_KEY: {k: list(v) for k, v in widths.items()}}
        for layer in model.model:
            layer.np = sum(p.numel() for p in layer.parameters())
    return model


# ---------------------------------------------------------------------------------------------- soft masks
@torch.no_grad()
def apply_masks(model: nn.Module, plan: Plan, graph: ChannelGraph | None = None) -> None:
    """Zero filters, BN scale and shift of the plan's channels: each outputs act(0) = 0, as if removed."""
    graph = graph or ChannelGraph(model)
    for gid, idx in _check_plan(graph, plan).items():
        for src in graph.groups[gid].sources:
            conv, bn, _ = _block_bn(model, src)
            conv.weight[idx] = 0
            bn.weight[idx] = 0
            bn.bias[idx] = 0
    model.yaml = {**model.yaml, MASKS_KEY: {k: sorted(int(c) for c in v) for k, v in plan.items() if len(v)}}


def mask_params(model: nn.Module, plan: Plan, graph: ChannelGraph) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, boolean keep-mask broadcastable to it) for every parameter the plan masks (to hold them at 0)."""
    out = []
    for gid, idx in _check_plan(graph, plan).items():
        if not idx.numel():
            continue
        keep = torch.ones(graph.groups[gid].size, dtype=torch.bool)
        keep[idx] = False
        for src in graph.groups[gid].sources:
            conv, bn, _ = _block_bn(model, src)
            out += [(conv.weight, keep.view(-1, 1, 1, 1)), (bn.weight, keep), (bn.bias, keep)]
    return out


@torch.no_grad()
def remove_masked_channels(model: nn.Module, compensate: bool = True) -> dict:
    """A soft-masked model (yaml channel_masks) -> the physically smaller model; channels that regrew are kept.

    Masked channels have zero filters, so their constant output act(bn(0)) is folded exactly into the consumers even
    when an EMA left small non-zero BN scale/shift behind.
    """
    plan = dict((getattr(model, "yaml", {}) or {}).get(MASKS_KEY) or {})
    if not plan:
        return {}
    graph = ChannelGraph(model)
    dead = {key: _still_dead(model, graph, key, chans) for key, chans in plan.items()}
    regrown = sum(len(plan[k]) - len(v) for k, v in dead.items())
    if regrown:
        LOGGER.warning(f"WARNING ⚠️ {regrown} masked channels are kept: their filters are non-zero again (trained "
                       f"without their masks) or their layer cannot be reshaped (fused/QAT)")
    model.yaml = {k: v for k, v in model.yaml.items() if k != MASKS_KEY}
    return remove_channels(model, dead, compensate=compensate, graph=graph)


def _still_dead(model: nn.Module, graph: ChannelGraph, key: str, chans: list[int], rtol: float = 1e-3) -> list[int]:
    """Masked channels whose filters are still ~zero in every source (an EMA may leave a tiny remainder)."""
    g = graph.by_key.get(key)
    if g is None:
        raise ValueError(f"{MASKS_KEY}: no channel group '{key}' in this model; the masks belong to another layout")
    if g.frozen:  # e.g. QAT-wrapped or fused convs: the channels stay (masked, so still exact), nothing is removed
        return []
    ok = torch.ones(len(chans), dtype=torch.bool)
    idx = torch.as_tensor(chans, dtype=torch.long)
    for src in g.sources:
        norms = _block_bn(model, src)[0].weight.flatten(1).abs().sum(1)
        ok &= norms[idx] <= rtol * norms.max().clamp_min(1e-12)
    return [c for c, k in zip(chans, ok.tolist()) if k]
