"""Checkpoint structure rebuilds owned by the sparsity package, registered into utils.checkpoint's loader.

A channel-pruned checkpoint needs its channel widths before the weights fit; a QAT checkpoint needs its recipe's
QAT wrappers; a checkpoint trained with channel masks drops the masked channels after loading. Checkpoint I/O knows
none of this: importing this module (every script does) registers the three hooks, in this order.
"""
from __future__ import annotations

from torch import nn

from utils.checkpoint import CheckpointError, Rebuild, register_rebuild
from utils.sparsity.channel import apply_channel_widths, remove_masked_channels
from utils.sparsity.manager import apply_recipe_structure


def stored_recipe(ckpt: dict) -> str:
    """The recipe a checkpoint carries: YAML text only. A zoo: stub or a path would make loading fetch or read files."""
    text = ckpt.get("recipe")
    if not isinstance(text, str) or not _looks_like_yaml(text):
        shown = repr(text)[:80]
        raise CheckpointError(f"stored recipe {shown} is not recipe YAML text (only YAML is replayed; a stub or path "
                              f"would make loading touch the network or other files). Re-save the checkpoint with "
                              f"train.py, or strip its 'recipe' entry.")
    return text


def _looks_like_yaml(text: str) -> bool:
    """Recipe YAML has 'key: value' structure; a stub ('zoo:...') or a file path is one bare token."""
    s = text.strip()
    return not s.startswith("zoo:") and ("\n" in s or ": " in s)


def _replay_recipe(model: nn.Module, ckpt: dict) -> None:
    apply_recipe_structure(model, stored_recipe(ckpt), ckpt.get("recipe_epoch"))


def _widths(model: nn.Module, ckpt: dict) -> None:
    apply_channel_widths(model)


def _drop_masked(model: nn.Module, ckpt: dict) -> None:
    remove_masked_channels(model)


register_rebuild("channel_widths", Rebuild(lambda ck: bool((ck.get("yaml") or {}).get("channel_widths")),
                                           before_load=_widths))
register_rebuild("recipe", Rebuild(lambda ck: bool(ck.get("recipe")), before_load=_replay_recipe))
register_rebuild("channel_masks", Rebuild(lambda ck: bool((ck.get("yaml") or {}).get("channel_masks")),
                                          after_load=_drop_masked))
