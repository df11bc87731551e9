"""What an exported file says about itself: names, stride, image size, sparsity, recipe, date."""
from __future__ import annotations

import datetime
import re
from typing import Any

import torch
from torch import nn

from utils.sparsity.measure import global_sparsity


def model_sparsity(model: nn.Module) -> float:
    """Global fraction of zeros over prunable weights, as the sparsity tools measure it."""
    return float(global_sparsity(model))


def recipe_summary(recipe: str | None) -> str:
    """One line naming the modifiers of a SparseML recipe, so a deployed file says how it was made."""
    if not recipe:
        return "none"
    mods = re.findall(r"!(\w+Modifier)", str(recipe))
    if not mods:
        return "custom recipe (no modifiers found)"
    counts: dict[str, int] = {}
    for m in mods:
        counts[m] = counts.get(m, 0) + 1
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items())


def checkpoint_recipe(model: nn.Module) -> str | None:
    """Recipe text stored in our checkpoints (load_model keeps it in model.checkpoint_meta); None for official ones."""
    return (getattr(model, "checkpoint_meta", None) or {}).get("recipe") or getattr(model, "recipe", None)


def export_metadata(model: nn.Module, imgsz: tuple[int, int], batch_size: int, dynamic: bool,
                    sparsity: float, recipe: str | None = None) -> dict[str, Any]:
    """What detect/val need (names, stride, imgsz) plus provenance (sparsity, recipe, date)."""
    stride = getattr(model, "stride", torch.tensor([32]))
    names = getattr(model, "names", None) or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return {
        "description": "yolov5-sparse detector: output (batch, anchors, 5+nc) xywh pixels, objectness, class scores",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "stride": int(torch.as_tensor(stride).max()),
        "names": list(names),
        "imgsz": list(imgsz),
        "batch": batch_size,
        "dynamic": dynamic,
        "sparsity": round(float(sparsity), 4),
        "recipe": recipe_summary(recipe),
    }
