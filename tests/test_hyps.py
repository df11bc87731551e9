"""Hyperparameter files: every trainer key present, and the published values we rely on."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

HYPS = Path(__file__).resolve().parents[1] / "data" / "hyps"
KEYS = {
    "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "box", "cls", "cls_pw",
    "obj", "obj_pw", "iou_t", "anchor_t", "fl_gamma", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
    "perspective", "flipud", "fliplr", "mosaic", "mixup", "copy_paste",
}


@pytest.mark.parametrize("name", ["scratch-low", "scratch-med", "scratch-high", "finetune"])
def test_hyp_has_every_key_as_a_number(name):
    hyp = yaml.safe_load((HYPS / f"hyp.{name}.yaml").read_text())
    assert set(hyp) == KEYS
    assert all(isinstance(v, (int, float)) for v in hyp.values())


def test_published_values():
    load = lambda n: yaml.safe_load((HYPS / f"hyp.{n}.yaml").read_text())  # noqa: E731
    low, med, high, ft = load("scratch-low"), load("scratch-med"), load("scratch-high"), load("finetune")
    assert (low["lrf"], low["scale"], low["mixup"], low["obj"]) == (0.01, 0.5, 0.0, 1.0)
    assert (med["lrf"], med["scale"], med["mixup"], med["copy_paste"]) == (0.1, 0.9, 0.1, 0.0)
    assert high["copy_paste"] == 0.1
    assert (ft["lr0"], ft["lrf"], ft["momentum"], ft["weight_decay"], ft["anchor_t"]) == (0.0032, 0.12, 0.843, 0.00036, 2.91)
