"""Per-layer sparsity targets written as a SparseML recipe (GMPruningModifier groups) for gradual pruning in train.py."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

MASK_TYPES = {"unstructured": "unstructured", "block4": "[1, 4]"}

HEADER = """# Per-layer pruning targets from a sensitivity analysis (yolov5-sparse val.py --sensitivity).
# Global sparsity {sparsity:.3f} of {total} prunable weights; {source}.
# Use: python train.py --weights {weights} --recipe {name}
# Override variables with e.g. --recipe-args '{{"num_epochs": 50}}'
version: 1.1.0

num_epochs: {epochs}
pruning_start_epoch: 0
pruning_end_epoch: eval(num_epochs * 2 // 3)
init_sparsity: 0.05
pruning_update_frequency: 0.5
init_lr: 0.01
final_lr: 0.002

training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)

  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: linear
    init_lr: eval(init_lr)
    final_lr: eval(final_lr)

pruning_modifiers:
"""

MODIFIER = """  - !GMPruningModifier
    params:
{params}
    init_sparsity: {init}
    final_sparsity: {final}
    start_epoch: eval(pruning_start_epoch)
    end_epoch: eval(pruning_end_epoch)
    update_frequency: eval(pruning_update_frequency)
    mask_type: {mask}
"""


def group_targets(fractions: Mapping[str, float], decimals: int = 2) -> dict[float, list[str]]:
    """Layers sharing a rounded target go in one modifier (recipes stay readable); zero targets are left dense."""
    groups: dict[float, list[str]] = {}
    for name, frac in fractions.items():
        level = round(float(frac), decimals)
        if level > 0:
            groups.setdefault(level, []).append(name)
    return dict(sorted(groups.items()))


def recipe_text(fractions: Mapping[str, float], sizes: Mapping[str, int], mask_type: str = "unstructured",
                epochs: int = 30, source: str = "one-shot allocation", weights: str = "yolov5s.pt",
                name: str = "recipe.yaml") -> str:
    """The recipe; `sizes` (weights per layer, excluded layers included) makes the header's global sparsity exact."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type {mask_type!r} unknown; choose one of {', '.join(MASK_TYPES)}")
    groups = group_targets(fractions)
    total = sum(sizes.values())
    zeros = sum(level * sizes[n] for level, names in groups.items() for n in names)
    text = HEADER.format(sparsity=zeros / max(total, 1), total=total, source=source, weights=weights, name=name,
                         epochs=epochs)
    for level, names in groups.items():
        params = "\n".join(f"      - {n}" for n in names)
        text += MODIFIER.format(params=params, init=min(0.05, level), final=f"{level:.2f}",
                                mask=MASK_TYPES[mask_type]) + "\n"
    return text


def write_recipe(file: str | Path, fractions: Mapping[str, float], sizes: Mapping[str, int], **kwargs) -> Path:
    """Write recipe_text(...) to `file` and return the path."""
    file = Path(file)
    file.write_text(recipe_text(fractions, sizes, name=file.name, **kwargs))
    return file
