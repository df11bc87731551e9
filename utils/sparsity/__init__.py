"""Sparsity package: sparsity measurement and one-shot pruning (imports no sparseml itself)."""
from __future__ import annotations

from .measure import all_param_sparsity, global_sparsity, layer_sparsity_table, prunable_parameters
from .oneshot import DEFAULT_EXCLUDE, DETECT_HEAD, bn_recalibrate, following_batchnorms, prune_oneshot

__all__ = [
    "DEFAULT_EXCLUDE",
    "DETECT_HEAD",
    "all_param_sparsity",
    "bn_recalibrate",
    "following_batchnorms",
    "global_sparsity",
    "layer_sparsity_table",
    "prunable_parameters",
    "prune_oneshot",
]
