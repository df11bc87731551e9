"""Trainer hook for channel-pruned checkpoints: fine-tune the smaller model instead of a re-initialised dense one.

Trainer._build_model builds DetectionModel(ckpt['yaml']) at the dense widths and transfers only tensors whose shapes
fit, which would silently drop most weights of a pruned checkpoint. Registered as a callback, this reshapes the model
to the checkpoint's layout (model.yaml['channel_widths']) before the weights load. No-op for every other checkpoint.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from utils.callbacks import Callback

from .surgery import WIDTHS_KEY, apply_channel_widths

if TYPE_CHECKING:
    from utils.trainer import Trainer


class ChannelLayoutCallback(Callback):
    """on_checkpoint_load: apply the checkpoint's channel layout to trainer.model (unless --cfg overrides the yaml)."""

    name = "channel_layout"

    def on_checkpoint_load(self, trainer: Trainer, ckpt: dict) -> None:
        widths = (ckpt.get("yaml") or {}).get(WIDTHS_KEY)
        if widths and not getattr(trainer.opt, "cfg", None):
            apply_channel_widths(trainer.model, widths)
