"""Sparsity measurements: which weights pruning targets, and how many of them are zero."""
from __future__ import annotations

import torch
from torch import nn

# Layers whose weight matrices pruning targets; BN weights and all biases stay dense (tiny and sensitive).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of Conv2d/Linear layers keyed by parameter name (e.g. 'model.2.cv1.conv.weight'), shared ones once."""
    params: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, PRUNABLE_TYPES) or not isinstance(weight, nn.Parameter) or id(weight) in seen:
            continue
        seen.add(id(weight))
        params[f"{module_name}.weight" if module_name else "weight"] = weight
    return params


def _zero_fraction(tensors: list[torch.Tensor]) -> float:
    """Zeros / elements over a list of tensors; 0.0 for an empty list so callers never divide by zero."""
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return 0.0
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / total


@torch.no_grad()
def global_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over prunable weights (Conv2d/Linear): the number recipes and one-shot targets refer to."""
    return _zero_fraction([p.detach() for p in prunable_parameters(model).values()])


@torch.no_grad()
def all_param_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over ALL parameters (BN and biases included): what Ultralytics' sparsity() prints.

    Dense BN/bias parameters sit in the denominator (usually reading lower than global_sparsity), and BN betas that
    are exactly zero (their initial value) count as sparse, so only global_sparsity is comparable with recipe targets.
    """
    return _zero_fraction([p.detach() for p in model.parameters()])


@torch.no_grad()
def layer_sparsity_table(model: nn.Module) -> list[tuple[str, tuple[int, ...], int, float]]:
    """One row (name, shape, numel, sparsity) per prunable weight, in module order, for reports and recipes."""
    return [
        (name, tuple(p.shape), p.numel(), _zero_fraction([p.detach()]))
        for name, p in prunable_parameters(model).items()
    ]
