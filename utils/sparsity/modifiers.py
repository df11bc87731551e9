"""Recipe modifiers: the registry of the project's own SparseML modifiers, and what kind each modifier is.

Adding a modifier: write its module (a SparseML modifier class decorated with PyTorchModifierYAML, with a
`gradual` class attribute if it prunes over a schedule) and add one entry to MODIFIERS.
"""
from __future__ import annotations

import importlib
from typing import Any

from utils.compat import import_sparseml

# recipe tag -> module that defines and registers it (imported only when a recipe is built: it imports sparseml)
MODIFIERS = {"ChannelPruningModifier": "utils.sparsity.channel_modifier"}

KINDS = ("qat", "lr", "gradual_pruning", "constant_pruning", "distillation", "other")


def sparseml_manager_class() -> Any:
    """SparseML's ScheduledModifierManager with our modifier tags registered, so recipes may use them."""
    manager_cls = import_sparseml()
    for module in MODIFIERS.values():
        importlib.import_module(module)
    return manager_cls


def modifier_kind(m: Any) -> str:
    """What a modifier does to training, from SparseML's sparsification_types and a `gradual` attribute."""
    types = {getattr(t, "value", t) for t in (getattr(m, "sparsification_types", None) or [])}
    if "quantization" in types:
        return "qat"
    if "learning_rate" in types:
        return "lr"
    if "distillation" in types:
        return "distillation"
    if types & {"pruning", "structured"}:
        return "gradual_pruning" if _is_gradual(m) else "constant_pruning"
    return "other"


def _is_gradual(m: Any) -> bool:
    """Our modifiers say so; SparseML's gradual pruners share one base class."""
    gradual = getattr(type(m), "gradual", None)
    if gradual is not None:
        return bool(gradual)
    # sparseml is loaded whenever a modifier object exists, so this import costs nothing
    from sparseml.pytorch.sparsification.pruning.modifier_pruning_base import BaseGradualPruningModifier

    return isinstance(m, BaseGradualPruningModifier)
