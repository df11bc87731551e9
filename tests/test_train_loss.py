"""Training trains: a few optimizer steps on a handful of coco128 images lower the training loss."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.test_train import HYP, ROOT, common_args, run_train, tiny_data

LOSS_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import train
from utils.callbacks import Callback

class RecordLoss(Callback):
    def __init__(self):
        self.losses = []

    def on_train_start(self, trainer):
        trainer.nw, trainer.accumulate = -1, 1  # no warm-up (weight LR starts at 0), an optimizer step every batch

    def on_train_batch_end(self, trainer):
        self.losses.append(float(trainer.loss_items.sum()))  # computed before this batch's step

    def on_train_end(self, trainer):
        json.dump(self.losses, open({out!r}, "w"))

train.main(train.parse_opt(), callbacks=[RecordLoss()])
"""


def test_a_few_steps_lower_the_training_loss(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    data = tiny_data(tmp_path, coco128_dir, n=4)  # 4 images, batch 4: the same batch every step
    hyp = {**HYP, "mosaic": 0.0, "mixup": 0.0, "fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
           "translate": 0.0, "scale": 0.0}  # no augmentation: the loss is measured on identical inputs
    (tmp_path / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    script = tmp_path / "loss.py"
    script.write_text(LOSS_SCRIPT.format(root=str(ROOT), out=str(tmp_path / "losses.json")))
    args = common_args(data, yolov5n_pt, tmp_path / "runs", imgsz=128, epochs=6)
    run_train(args + ["--hyp", str(tmp_path / "hyp.yaml"), "--name", "l", "--noplots", "--noval", "--seed", "0"],
              script=script)
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses) == 6, losses
    assert losses[-1] < 0.9 * losses[0], losses  # 5 steps on one batch: at least 10% lower
