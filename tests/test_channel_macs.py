"""ChannelGraph.macs() against an independent count: forward hooks on every nn.Conv2d of a real forward pass."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.yolo import DetectionModel
from utils.sparsity.channel import ChannelGraph, channel_prune


def hooked_conv_macs(model: nn.Module, size: int) -> dict[str, int]:
    """{conv name: MACs} of one forward of a size x size image: out elements * in_ch / groups * kh * kw."""
    counts: dict[str, int] = {}

    def hook(name):
        def fn(m: nn.Conv2d, inp, out):
            assert inp[0].shape[1] == m.in_channels  # the tensor really has the channels the layer claims
            counts[name] = counts.get(name, 0) + out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * \
                m.kernel_size[1]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.rand(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return counts


def _randomized(cfg: str, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    m = DetectionModel(cfg).eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):  # distinct BN gammas so the pruning importance is not a tie
            bn.weight.data.uniform_(0.1, 1.5)
    return m


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5s.yaml"])
@pytest.mark.parametrize("probe", [64, 96])
def test_dense_macs_match_hooked_forward(cfg: str, probe: int) -> None:
    model = DetectionModel(cfg)
    graph = ChannelGraph(model, probe=probe)
    hooked = hooked_conv_macs(model, probe)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(hooked) == len(graph.convs) == n_convs == 60  # 57 Conv blocks + Detect's three 1x1 convs
    assert graph.conv_macs() == hooked
    assert graph.macs() == sum(hooked.values())


def test_channel_pruned_macs_match_hooked_forward() -> None:
    dense = _randomized("yolov5n.yaml")
    graph = ChannelGraph(dense)
    dense_macs = sum(hooked_conv_macs(dense, 64).values())
    pruned = copy.deepcopy(dense)
    report = channel_prune(pruned, flops_target=0.4, round_to=8, min_channels=8)
    assert report["plan"] and report["channels_removed"] > 0
    hooked = hooked_conv_macs(pruned, 64)
    assert 0.5 < sum(hooked.values()) / dense_macs < 0.75  # a real cut, judged by the independent count
    # the pruned model's own graph counts what its forward computes, conv by conv ...
    assert ChannelGraph(pruned).conv_macs() == hooked
    # ... and the dense graph predicts it from the plan's widths alone, before any surgery
    widths = {graph.by_key[k].id: graph.by_key[k].size - len(v) for k, v in report["plan"].items()}
    assert graph.conv_macs(widths) == hooked
    assert graph.macs(widths) == sum(hooked.values())
