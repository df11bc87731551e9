"""Model preparation for tracing: a float eval copy, BN folded, Detect in export mode, fresh grids."""
from __future__ import annotations

import copy

import torch
from torch import nn

INPUT_NAME, OUTPUT_NAME = "images", "output0"


class FirstOutput(nn.Module):
    """Export only the decoded prediction even for models whose eval forward returns (pred, raw_heads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y


def prepare_model(model: nn.Module, fuse: bool = True) -> nn.Module:
    """Float32 eval copy with BN folded and every Detect in export mode (decoded tensor only)."""
    model = copy.deepcopy(model).float().eval().requires_grad_(False)
    if fuse and hasattr(model, "fuse"):
        with torch.no_grad():  # folded weights must stay leaf tensors, not autograd results
            model.fuse()
    for m in _detect_heads(model):
        m.export = True
    return model


def _detect_heads(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "Detect"]


def reset_grids(model: nn.Module) -> None:
    """Drop cached grids so tracing records them as shape-dependent ops, not constants of the last input size."""
    for m in _detect_heads(model):
        m.grid = [torch.empty(0) for _ in m.grid]
        m.anchor_grid = [torch.empty(0) for _ in m.anchor_grid]


def is_qat(model: nn.Module) -> bool:
    """A model trained with a QuantizationModifier carries FakeQuantize modules."""
    return any(type(m).__name__ == "FakeQuantize" for m in model.modules())
