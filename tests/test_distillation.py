"""Knowledge distillation: the loss teaches what the teacher outputs, recipes schedule it, train.py wires it up."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from tests.test_sparse_training import _data, _rows, _train
from utils.sparsity.distillation import (
    DistillationError,
    Window,
    load_teacher,
    output_distillation_loss,
    recipe_windows,
)
from utils.sparsity.recipes import load_recipe

DISTIL_RECIPE = """
num_epochs: 2
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !DistillationModifier
    start_epoch: 1
    end_epoch: 2
    hardness: 0.7
    temperature: 3.0
"""


def _outputs(seed: int, nc: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, s, s, 5 + nc, generator=g) for s in (8, 4, 2)]


def test_loss_is_zero_for_the_teacher_itself_and_pulls_the_student_towards_it() -> None:
    teacher = _outputs(0)
    assert float(output_distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-5)
    student = [t.clone().requires_grad_(True) for t in _outputs(1)]
    loss = output_distillation_loss(student, teacher)
    assert float(loss.detach()) > 0.01
    loss.backward()
    with torch.no_grad():  # one gradient step moves the student closer
        moved = [s - 0.5 * s.grad for s in student]
    assert float(output_distillation_loss(moved, teacher)) < float(loss.detach())


def test_box_and_class_terms_count_only_where_the_teacher_sees_objects() -> None:
    teacher = _outputs(0)
    for t in teacher:
        t[..., 4] = -20.0  # the teacher sees nothing anywhere
    student = [t.clone() for t in teacher]
    for s in student:
        s[..., :4] += 3.0  # wildly different boxes and classes, same objectness
        s[..., 5:] -= 3.0
    assert float(output_distillation_loss(student, teacher)) < 1e-3


def test_recipe_distillation_modifier_gives_its_window() -> None:
    rec = load_recipe(DISTIL_RECIPE, None, model=DetectionModel("models/yolov5n.yaml", nc=2))
    assert recipe_windows(rec.modifiers()) == [Window(1.0, 2.0, 0.7, 3.0)]
    assert Window(1.0, 2.0).covers(1.5) and not Window(1.0, 2.0).covers(2.0) and Window().covers(1e9)


def test_teacher_with_other_classes_is_refused(yolov5n_pt: Path) -> None:
    student = DetectionModel("models/yolov5n.yaml", nc=1)
    with pytest.raises(DistillationError, match="80 classes.*the student 1"):
        load_teacher(yolov5n_pt, student, torch.device("cpu"))


@pytest.mark.slow
def test_train_with_teacher_distils_in_the_recipe_window(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    recipe = tmp_path / "distil.yaml"
    recipe.write_text(DISTIL_RECIPE)
    args = ["--weights", str(yolov5n_pt), "--data", str(_data(tmp_path, coco128_dir, n=16)), "--img", "96",
            "--batch-size", "8", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "kd", "--noplots",
            "--noautoanchor", "--seed", "1", "--recipe", str(recipe), "--teacher-weights", str(yolov5n_pt)]
    r = _train(args)
    assert "distillation from" in r.stdout + r.stderr and "epochs 1-2 hardness 0.7 T 3" in r.stdout + r.stderr
    rows = _rows(tmp_path / "runs/kd/results.csv")
    kd = [row["train/distill_loss"] for row in rows]
    assert kd[0] != kd[0] and kd[1] > 0  # NaN outside the window, measured inside it
    bad = _train(args[:-1] + [str(tmp_path / "missing.pt"), "--name", "bad"], check=False)
    assert bad.returncode == 1 and "--teacher-weights" in bad.stderr and "Traceback" not in bad.stderr
