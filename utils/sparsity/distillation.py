"""Knowledge distillation from a dense teacher (`train.py --teacher-weights`), scheduled by SparseML's !DistillationModifier.

The student learns from the labels and from the teacher's raw YOLO outputs on the same augmented batch:
    loss = (1 - hardness) * task_loss + hardness * distill_loss * batch_size
distill_loss, per detection layer and averaged over layers (teacher outputs detached, temperature T):
    objectness: KL between Bernoulli(sigmoid(t/T)) and Bernoulli(sigmoid(s/T)) over every anchor cell, x T^2;
    boxes and classes: squared error of the sigmoid box terms and the class KL (mean over classes, x T^2), weighted
    by the teacher's objectness, so only cells where the teacher sees an object teach the box and class.
On pistols (yolov5n, 320 px, a teacher fine-tuned 5 epochs) the three terms come to about 0.05, 0.02 and 0.005 per
image: the same order as the task loss (~0.07), so hardness 0.5 weighs labels and teacher about equally.
A recipe's !DistillationModifier (SparseML's tag: start_epoch, end_epoch, hardness, temperature) sets when and how
much; with --teacher-weights and no such modifier the whole run distils (hardness 0.5, T 2, SparseML's defaults).
A recipe whose DistillationModifier meets no teacher trains without distillation, as SparseML does, with a warning.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.callbacks import Callback
from utils.checkpoint import load_model
from utils.logger import LOGGER
from utils.sparsity.modifiers import modifier_kind
from utils.torch_utils import de_parallel

if TYPE_CHECKING:  # avoid an import cycle: the trainer imports the callbacks module
    from utils.trainer import Trainer

DEFAULT_HARDNESS, DEFAULT_TEMPERATURE = 0.5, 2.0  # SparseML DistillationModifier defaults
# SparseML's own modifier never gets a teacher (this callback does the distilling) and says "disabling distillation"
# even when --teacher-weights is given; our callback says what really happens
logging.getLogger("sparseml.pytorch.sparsification.distillation.modifier_distillation_base").setLevel(logging.ERROR)


class DistillationError(ValueError):
    """Teacher and student cannot be paired; the message names the file and the fix."""


@dataclass(frozen=True)
class Window:
    """One distillation stage: epochs [start, end) (end < 0: to the end of training)."""

    start: float = 0.0
    end: float = -1.0
    hardness: float = DEFAULT_HARDNESS
    temperature: float = DEFAULT_TEMPERATURE

    def covers(self, epoch: float) -> bool:
        return self.start <= epoch and (self.end < 0 or epoch < self.end)


def _bernoulli_kl(student_logit: torch.Tensor, teacher_logit: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per element for sigmoid outputs: BCE with soft targets minus the targets' entropy
    (both from logits: plain binary_cross_entropy is refused under CUDA autocast)."""
    p = torch.sigmoid(teacher_logit)
    ce = F.binary_cross_entropy_with_logits(student_logit, p, reduction="none")
    return ce - F.binary_cross_entropy_with_logits(teacher_logit, p, reduction="none")


def output_distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                             temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Mean over detection layers of objectness KL + objectness-weighted box and class terms (a scalar)."""
    t2, total = temperature * temperature, 0.0
    for s, t in zip(student, teacher):
        s, t = s.float(), t.detach().float()
        obj = _bernoulli_kl(s[..., 4] / temperature, t[..., 4] / temperature).mean() * t2
        w = torch.sigmoid(t[..., 4])
        box = (torch.sigmoid(s[..., :4]) - torch.sigmoid(t[..., :4])).pow(2).sum(-1)
        cls = _bernoulli_kl(s[..., 5:] / temperature, t[..., 5:] / temperature).mean(-1) * t2 \
            if s.shape[-1] > 5 else torch.zeros_like(box)  # mean over classes, as YOLO's class loss
        total = total + obj + (w * (box + cls)).sum() / w.sum().clamp(min=1.0)
    return total / max(len(student), 1)


def recipe_windows(modifiers: list[Any]) -> list[Window]:
    """The DistillationModifier stages of a built recipe."""
    return [Window(float(m.start_epoch), float(m.end_epoch), float(m.hardness), float(m.temperature))
            for m in modifiers if modifier_kind(m) == "distillation"]


def load_teacher(weights: str | Path, student: nn.Module, device: torch.device) -> nn.Module:
    """The teacher in eval mode without gradients; its detection head must match the student's."""
    if not Path(weights).is_file():
        raise DistillationError(f"--teacher-weights {weights}: file not found; pass a trained dense .pt")
    teacher = load_model(str(weights)).float().to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    s, t = de_parallel(student).model[-1], teacher.model[-1]
    if (s.nc, s.nl, s.na) != (t.nc, t.nl, t.na):
        raise DistillationError(f"--teacher-weights {weights}: teacher has {t.nc} classes, {t.nl} layers x {t.na} "
                                f"anchors, the student {s.nc}, {s.nl} x {s.na}; distil from a model trained on the "
                                f"same dataset")
    if not torch.allclose(s.anchors.float().cpu(), t.anchors.float().cpu(), rtol=1e-3):
        LOGGER.warning(f"WARNING ⚠️ --teacher-weights {weights}: its anchors differ from the student's (AutoAnchor?); "
                       f"the box term compares outputs relative to different anchors. Train both with the same "
                       f"anchors (--noautoanchor, or start the student from the teacher's anchors)")
    return teacher


class DistillationCallback(Callback):
    """Adds the teacher's output-distillation term to the loss inside the recipe's distillation windows."""

    name = "distillation"

    def __init__(self, teacher_weights: str | None, recipe_callback: Any | None = None):
        self.teacher_weights, self.recipe_callback = teacher_weights, recipe_callback
        self.teacher: nn.Module | None = None
        self.windows: list[Window] = []
        self.kd_sum, self.kd_n = 0.0, 0

    def on_train_start(self, trainer: Trainer) -> None:
        rec = getattr(self.recipe_callback, "rec", None)
        self.windows = recipe_windows(rec.modifiers()) if rec is not None else []
        if not self.teacher_weights:
            if self.windows:
                LOGGER.warning(f"WARNING ⚠️ recipe {rec.name} has a DistillationModifier but no --teacher-weights "
                               f"was given: training without distillation")
            return
        self.windows = self.windows or [Window()]
        self.teacher = load_teacher(self.teacher_weights, trainer.model, trainer.device)
        stages = ", ".join(f"epochs {w.start:g}-{'end' if w.end < 0 else f'{w.end:g}'} hardness {w.hardness:g} "
                           f"T {w.temperature:g}" for w in self.windows)
        LOGGER.info(f"distillation from {self.teacher_weights}: {stages}")

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.kd_sum, self.kd_n = 0.0, 0

    def on_loss(self, trainer: Trainer) -> None:
        """Blend the task loss with the distillation term of the window covering this step."""
        if self.teacher is None:
            return
        epoch = float(trainer.epoch) + float(trainer.batch_i) / float(trainer.nb)
        window = next((w for w in self.windows if w.covers(epoch)), None)
        if window is None:
            return
        with torch.no_grad():
            teacher_out = self.teacher(trainer.batch_input)[1]
        kd = output_distillation_loss(trainer.pred, teacher_out, window.temperature)
        bs = trainer.batch_input.shape[0]
        trainer.loss = (1 - window.hardness) * trainer.loss + window.hardness * kd * bs
        self.kd_sum, self.kd_n = self.kd_sum + float(kd.detach()), self.kd_n + 1

    def on_fit_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        if self.teacher is not None:
            metrics["train/distill_loss"] = self.kd_sum / self.kd_n if self.kd_n else math.nan
