"""Coupled-channel analysis of a YOLOv5 DetectionModel: which conv output channels must be removed together.

A *group* is one channel index space: the output channels of one or more Conv blocks (its *sources*) that are
summed or shared, and every conv input slice that reads them (its *consumers*). Removing channel j of a group removes
filter j of every source and input column offset+j of every consumer. Rules, per module of models/common.py:
- Conv: its output opens a new group; its input slices become consumers of the groups they come from.
- Bottleneck with a residual add: cv2's output is tied into the group of the block input (x + cv2(cv1(x))), so in
  backbone C3s the C3.cv1 width and every bottleneck's cv2 width form one group.
- C3: cv1 branch (through the bottlenecks) and cv2 branch are concatenated into cv3: two groups at offsets 0 and c_.
- SPPF/SPP: cv1's group is read four times by cv2 (x and its max-pools) at offsets 0, c, 2c, 3c.
- Concat: the channel lists of its inputs are joined, so a head conv after a Concat consumes several groups.
- nn.Upsample / nn.Identity / max-pools pass channels through; Detect's 1x1 convs consume the last three groups.
Anything else (unknown modules, grouped convs) freezes the groups it touches, so pruning never breaks a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus

PASS_THROUGH = (nn.Upsample, nn.Identity, nn.MaxPool2d)


@dataclass(frozen=True)
class Seg:
    """A run of channels in a tensor: `width` channels of group `group` (None: fixed, e.g. the image)."""

    group: int | None
    width: int
    sources: tuple[str, ...] = ()  # Conv blocks summed into these channels at this point (residual adds)


@dataclass
class ConvNode:
    """One nn.Conv2d: where its input channels come from and which group its output channels belong to."""

    name: str  # the nn.Conv2d's module name, e.g. model.2.cv1.conv
    block: str | None  # the Conv block (conv+bn+act) that owns it, None for Detect's plain convs
    out_group: int | None
    inputs: list[Seg]
    hw: int = 0  # output pixels at the probe size, for FLOPs


@dataclass
class Group:
    """Channels removed together; `key` (its first source) names it in masks and plans."""

    id: int
    size: int
    sources: list[str] = field(default_factory=list)
    frozen: bool = False

    @property
    def key(self) -> str:
        return self.sources[0]


class ChannelGraph:
    """Groups and conv nodes of one model, built by walking its layers with the rules above."""

    def __init__(self, model: nn.Module, probe: int = 64):
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.groups: dict[int, Group] = {}
        self._parent: dict[int, int] = {}
        self.convs: dict[str, ConvNode] = {}
        widths, pixels = _probe(model, probe)
        self._walk(widths)
        for name, node in self.convs.items():
            node.hw = pixels[name]
        self._finish()

    # ------------------------------------------------------------------------------------------ union-find
    def find(self, g: int) -> int:
        while self._parent[g] != g:
            self._parent[g] = self._parent[self._parent[g]]
            g = self._parent[g]
        return g

    def _new_group(self, size: int, source: str) -> int:
        gid = len(self._parent)
        self._parent[gid] = gid
        self.groups[gid] = Group(gid, size, [source])
        return gid

    def _merge(self, keep: int, other: int) -> int:
        keep, other = self.find(keep), self.find(other)
        if keep != other:
            g, o = self.groups[keep], self.groups.pop(other)
            g.sources += o.sources
            g.frozen = g.frozen or o.frozen
            self._parent[other] = keep
        return keep

    def _freeze(self, segs: list[Seg]) -> None:
        for s in segs:
            if s.group is not None:
                self.groups[self.find(s.group)].frozen = True

    # ------------------------------------------------------------------------------------------ walking
    def _walk(self, widths: list[int]) -> None:
        outputs: list[list[Seg]] = []
        x: list[Seg] = [Seg(None, int(self.model.yaml.get("ch", 3)))]
        for layer in self.model.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [s for j in layer.f for s in
                                                                        (x if j == -1 else outputs[j])]
            x = self._layer(layer, x, widths[layer.i])
            outputs.append(x)

    def _layer(self, m: nn.Module, x: list[Seg], width: int) -> list[Seg]:
        """Output segments of module m given its input segments (the rules in the module docstring)."""
        if isinstance(m, Conv):
            return self._conv(m, x)
        if isinstance(m, Bottleneck):
            return self._bottleneck(m, x)
        if isinstance(m, C3):
            a = self._conv(m.cv1, x)
            for b in m.m:
                a = self._bottleneck(b, a)
            return self._conv(m.cv3, a + self._conv(m.cv2, x))
        if isinstance(m, (SPPF, SPP)):
            y = self._conv(m.cv1, x)
            n = 4 if isinstance(m, SPPF) else len(m.m) + 1
            return self._conv(m.cv2, y * n)
        if isinstance(m, Focus):
            return self._conv(m.conv, x * 4)
        if isinstance(m, (Concat, *PASS_THROUGH)):
            return x
        if isinstance(m, nn.Sequential):
            for child in m:
                x = self._layer(child, x, width)
            return x
        if type(m).__name__ == "Detect":
            for conv in m.m:
                self._add_conv(conv, None, None, x if len(m.m) == 1 else self._inputs_of(m, conv, x))
            return x
        self._freeze(x)  # unknown module: leave everything it touches alone
        return [Seg(None, width)]

    def _inputs_of(self, detect: nn.Module, conv: nn.Conv2d, x: list[Seg]) -> list[Seg]:
        """Detect receives its inputs concatenated in our walk; split them back per level by in_channels."""
        i = list(detect.m).index(conv)
        start = sum(c.in_channels for c in list(detect.m)[:i])
        out, pos = [], 0
        for s in x:
            if start <= pos < start + conv.in_channels:
                out.append(s)
            pos += s.width
        return out

    def _conv(self, m: Conv, x: list[Seg]) -> list[Seg]:
        name = self.names[id(m)]
        conv = m.conv
        gid = self._new_group(conv.out_channels, name)
        self._add_conv(conv, name, gid, x)
        if conv.groups != 1 or not hasattr(m, "bn"):  # grouped/depthwise or fused: channels tied in ways we skip
            self._freeze(x)
            self.groups[gid].frozen = True
        return [Seg(gid, conv.out_channels, (name,))]

    def _add_conv(self, conv: nn.Conv2d, block: str | None, gid: int | None, x: list[Seg]) -> None:
        if sum(s.width for s in x) != conv.in_channels:
            raise ValueError(f"channel analysis: {self.names[id(conv)]} expects {conv.in_channels} input channels, "
                             f"the layer table gives {sum(s.width for s in x)}")
        self.convs[self.names[id(conv)]] = ConvNode(self.names[id(conv)], block, gid, list(x))

    def _bottleneck(self, m: Bottleneck, x: list[Seg]) -> list[Seg]:
        y = self._conv(m.cv2, self._conv(m.cv1, x))
        if not m.add:
            return y
        if len(x) != 1 or x[0].group is None:  # residual over a concatenation: tie nothing, freeze both sides
            self._freeze(x + y)
            return y
        gid = self._merge(x[0].group, y[0].group)
        return [Seg(gid, x[0].width, x[0].sources + y[0].sources)]

    # ------------------------------------------------------------------------------------------ finishing
    def _finish(self) -> None:
        """Resolve merged group ids everywhere, so callers see only live groups."""
        for node in self.convs.values():
            node.out_group = None if node.out_group is None else self.find(node.out_group)
            node.inputs = [Seg(None if s.group is None else self.find(s.group), s.width, s.sources)
                           for s in node.inputs]
        self.by_key = {g.key: g for g in self.groups.values()}

    # ------------------------------------------------------------------------------------------ queries
    def prunable(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.frozen]

    def macs(self, widths: dict[int, int] | None = None) -> float:
        """Conv multiply-accumulates at the probe size with group g at widths[g] channels (default: current)."""
        return float(sum(self.conv_macs(widths).values()))

    def conv_macs(self, widths: dict[int, int] | None = None) -> dict[str, int]:
        """{conv name: multiply-accumulates} at the probe size, group g at widths[g] channels (default: current)."""
        widths = widths or {}
        out = {}
        for node in self.convs.values():
            conv = self.model.get_submodule(node.name)
            cin = sum(s.width if s.group is None else widths.get(s.group, s.width) for s in node.inputs)
            cout = conv.out_channels if node.out_group is None else widths.get(node.out_group, conv.out_channels)
            out[node.name] = node.hw * cout * cin // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        return out

    def consumers(self) -> dict[int, list[tuple[str, int, tuple[str, ...]]]]:
        """group id -> (conv name, input offset, sources summed there) for every slice that reads it."""
        out: dict[int, list[tuple[str, int, tuple[str, ...]]]] = {g: [] for g in self.groups}
        for node in self.convs.values():
            pos = 0
            for s in node.inputs:
                if s.group is not None:
                    out[s.group].append((node.name, pos, s.sources))
                pos += s.width
        return out

    def summary(self) -> list[str]:
        """One line per group (for logs and the README table)."""
        cons = self.consumers()
        return [f"{g.key:<22s} {g.size:>5d} ch  sources {len(g.sources)}  consumers {len(cons[g.id])}"
                f"{'  (frozen)' if g.frozen else ''}" for g in self.groups.values()]


def _probe_forward(model: nn.Module, probe: int, hooks: list) -> None:
    """One no-grad eval forward on zeros; restores train mode and removes the hooks whatever happens."""
    was_training = model.training
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, int(model.yaml.get("ch", 3)), probe, probe, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _probe(model: nn.Module, probe: int) -> tuple[list[int], dict[str, int]]:
    """Output channels of every top-level layer (for modules we do not understand) and output pixels of every conv
    at the probe size (MACs scale with it; ratios do not), from one forward."""
    widths: dict[int, int] = {}
    pixels: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=m.i: widths.__setitem__(
        k, o.shape[1] if isinstance(o, torch.Tensor) else 0)) for m in model.model]
    hooks += [m.register_forward_hook(lambda mod, i, o, k=n: pixels.__setitem__(k, o.shape[-2] * o.shape[-1]))
              for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    _probe_forward(model, probe, hooks)
    return [widths.get(i, 0) for i in range(len(model.model))], pixels
