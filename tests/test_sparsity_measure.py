"""Sparsity measurement: what counts as prunable and how zeros are counted."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.sparsity.measure import all_param_sparsity, global_sparsity, layer_sparsity_table, prunable_parameters


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(Conv(3, 4), Conv(4, 8), nn.Conv2d(8, 5, 1), nn.Flatten(), nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_prunable_parameters_are_conv_and_linear_weights_only():
    net = Net()
    names = list(prunable_parameters(net))
    assert names == ["model.0.conv.weight", "model.1.conv.weight", "model.2.weight", "model.4.weight"]
    assert all(p is net.get_parameter(n) for n, p in prunable_parameters(net).items())


def test_shared_weight_is_listed_once():
    conv = nn.Conv2d(2, 2, 1, bias=False)
    assert len(prunable_parameters(nn.Sequential(conv, conv))) == 1


@torch.no_grad()
def test_global_and_all_param_sparsity_count_different_denominators():
    net = Net()
    net.model[1].conv.weight[:2] = 0  # 2 of 8 output channels: 2*4*9 = 72 zeros
    net.model[4].bias.zero_()  # a bias: counted only by all_param_sparsity
    prunable = sum(p.numel() for p in prunable_parameters(net).values())
    total = sum(p.numel() for p in net.parameters())
    bn_betas = 4 + 8  # BN biases start at exactly 0, so Ultralytics' number counts them as "sparse" too
    assert global_sparsity(net) == pytest.approx(72 / prunable)
    assert all_param_sparsity(net) == pytest.approx((72 + 2 + bn_betas) / total)


@torch.no_grad()
def test_layer_table_rows():
    net = Net()
    net.model[2].weight.zero_()
    rows = layer_sparsity_table(net)
    assert [r[0] for r in rows] == list(prunable_parameters(net))
    assert rows[1][1:3] == ((8, 4, 3, 3), 288)
    assert rows[2][3] == 1.0 and rows[0][3] == 0.0


def test_empty_model_is_zero_not_an_error():
    assert global_sparsity(nn.ReLU()) == 0.0
    assert all_param_sparsity(nn.ReLU()) == 0.0
