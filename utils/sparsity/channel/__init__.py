"""Structured (channel) pruning of YOLOv5: coupled-channel groups, importance, allocation and physical removal.

The result is an ordinary, smaller DetectionModel; its layout is stored in model.yaml['channel_widths'] so our
checkpoints rebuild it without pickled code (utils.checkpoint.model_from_checkpoint calls apply_channel_widths).
"""
from __future__ import annotations

from .allocate import ALLOCATIONS, Budget, allocate, plan_cost
from .graph import ChannelGraph
from .importance import IMPORTANCE, TaylorAccumulator, group_scores, taylor_scores
from .prune import channel_prune, plan_channels
from .surgery import (
                      MASKS_KEY,
                      WIDTHS_KEY,
                      apply_channel_widths,
                      apply_masks,
                      mask_params,
                      remove_channels,
                      remove_masked_channels,
)

__all__ = [
    "ALLOCATIONS", "Budget", "ChannelGraph", "IMPORTANCE", "MASKS_KEY", "TaylorAccumulator", "WIDTHS_KEY",
    "allocate", "apply_channel_widths", "apply_masks", "channel_prune", "group_scores", "mask_params", "plan_channels",
    "plan_cost", "remove_channels", "remove_masked_channels", "taylor_scores",
]
