"""Sparsity package: SparseML compatibility, sparsity measurement and one-shot pruning (imports no sparseml itself)."""
from __future__ import annotations

from .compat import apply_torch_compat, import_sparseml, onnx_export_kwargs
from .measure import all_param_sparsity, global_sparsity, layer_sparsity_table, prunable_parameters
from .oneshot import DEFAULT_EXCLUDE, DETECT_HEAD, bn_recalibrate, following_batchnorms, prune_oneshot

__all__ = [
    "DEFAULT_EXCLUDE",
    "DETECT_HEAD",
    "all_param_sparsity",
    "apply_torch_compat",
    "bn_recalibrate",
    "following_batchnorms",
    "global_sparsity",
    "import_sparseml",
    "layer_sparsity_table",
    "onnx_export_kwargs",
    "prunable_parameters",
    "prune_oneshot",
]
