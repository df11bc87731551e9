"""Trainer hook for channel-pruned checkpoints: fine-tune the smaller model instead of a re-initialised dense one.

Trainer._build_model builds DetectionModel(ckpt['yaml']) at the dense widths and transfers only tensors whose shapes
fit, which would silently drop most weights of a pruned checkpoint. Registered as a callback, this reshapes the model
to the checkpoint's layout (model.yaml['channel_widths']) before the weights load. A soft-masked checkpoint (a
!ChannelPruningModifier run's last.pt/best.pt) has its masked channels removed first, so fine-tuning it trains the
smaller, faster network; on --resume the masks stay (the recipe run goes on). No-op for every other checkpoint.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from utils.callbacks import Callback
from utils.checkpoint import model_from_checkpoint

from .surgery import MASKS_KEY, WIDTHS_KEY, apply_channel_widths

if TYPE_CHECKING:
    from utils.trainer import Trainer


class ChannelLayoutCallback(Callback):
    """on_checkpoint_load: apply the checkpoint's channel layout to trainer.model (unless --cfg overrides the yaml)."""

    name = "channel_layout"

    def on_checkpoint_load(self, trainer: Trainer, ckpt: dict) -> None:
        if getattr(trainer.opt, "cfg", None):
            return
        if (ckpt.get("yaml") or {}).get(MASKS_KEY) and not getattr(trainer, "resume", False):
            _remove_masked(trainer, ckpt)
        widths = (ckpt.get("yaml") or {}).get(WIDTHS_KEY)
        if widths:
            apply_channel_widths(trainer.model, widths)


def _remove_masked(trainer: Trainer, ckpt: dict) -> None:
    """Swap the checkpoint's dense masked weights for the physically pruned ones (the loader removes the masks)."""
    pruned = model_from_checkpoint(ckpt, getattr(trainer.opt, "weights", "checkpoint"))
    ckpt["model"] = pruned.state_dict()
    ckpt["yaml"] = {k: v for k, v in pruned.yaml.items() if k != MASKS_KEY}
    trainer.model.yaml.pop(MASKS_KEY, None)
