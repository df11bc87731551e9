"""Recipe-driven sparsification as a trainer callback: SparseML's ScheduledModifierManager behind our hook points.

The manager is stepped explicitly (update / optimizer_pre_step / optimizer_post_step around each optimizer step)
instead of through the optimizer wrapper that manager.modify() returns: the recipe epoch is then computed from
trainer.epoch and the batch index, so gradient accumulation and --resume reproduce the exact same schedule.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from utils.callbacks import Callback
from utils.logger import LOGGER
from utils.sparsity.measure import global_sparsity, prunable_parameters
from utils.sparsity.modifiers import modifier_kind, sparseml_manager_class
from utils.sparsity.recipes import Recipe, RecipeError, load_recipe, recipe_source
from utils.torch_utils import de_parallel
from utils.trainer import strip_training_state

if TYPE_CHECKING:
    from utils.trainer import Trainer

PHASES = ("dense", "pruning", "pruned", "QAT")  # x/phase column in results.csv is the index in this tuple
SPARSE_AT = 0.05  # a model this sparse (prunable weights) counts as pruned
# Structure replay point for weights saved after epoch e: e + ALMOST_ONE includes what started during e (and at e.0)
# but not a modifier starting at e + 1 (nm-yolov5 uses the same constant).
ALMOST_ONE = 0.9999


def _type(m: Any) -> str:
    return type(m).__name__


def _start(m: Any) -> float:
    s = getattr(m, "start_epoch", 0.0)
    return 0.0 if s is None or s < 0 else float(s)


def _end(m: Any) -> float:
    e = getattr(m, "end_epoch", -1)
    return math.inf if e is None or e < 0 else float(e)


def recipe_has_qat(text: str | None) -> bool:
    return bool(text) and "QuantizationModifier" in text


def apply_recipe_structure(model: nn.Module, recipe_text: str, epoch: float | None = None) -> None:
    """Rebuild what the recipe changed in the module tree (QAT wrappers) so a saved state_dict fits again.

    Masks need no replay: the stored weights carry their zeros. The model must be in train mode (QAT fusion).
    """
    if not recipe_has_qat(recipe_text):
        return
    manager = load_recipe(recipe_text).manager  # same validation as --recipe (tags, fields, eval bounds)
    model.train()
    manager.apply_structure(model, epoch=math.inf if epoch is None else float(epoch))


def remap_mask_keys(state: dict, model: nn.Module) -> dict:
    """Manager state saved before QAT wrapping names 'x.conv.weight'; after it the param is 'x.conv.module.weight'."""
    params = {n for n, _ in model.named_parameters()}

    def fix(key: str) -> str:
        base = key.rsplit(".sparsity_mask", 1)[0] if key.endswith(".sparsity_mask") else None
        if base is None or base in params:
            return key
        layer, p = base.rsplit(".", 1)
        alt = f"{layer}.module.{p}"
        return f"{alt}.sparsity_mask" if alt in params else key

    out = {}
    for k, v in state.items():
        out[fix(k) if isinstance(k, str) else k] = remap_mask_keys(v, model) if isinstance(v, dict) else v
    return out


SCHEDULE_ATTRS = ("_started", "_ended", "_last_update_epoch", "_applied_sparsity")
# QuantizationModifier's one-way actions: QAT on, BN statistics frozen, observers off
QAT_ATTRS = ("_qat_enabled", "_bn_stats_frozen", "_quantization_observer_disabled")


def schedule_state(manager: Any) -> dict:
    """Per-modifier schedule flags SparseML keeps out of its state_dict (started/ended/last update, masks on, QAT).

    Without them a resumed pruning modifier only re-enables its masks (and their gradient hooks) at its next
    update, so the first resumed backward passes clip unmasked gradients and the run drifts from an uninterrupted one.
    """
    out = {}
    for m in manager.iter_modifiers():
        attrs = QAT_ATTRS if modifier_kind(m) == "qat" else SCHEDULE_ATTRS
        d = {a: getattr(m, a) for a in attrs if isinstance(getattr(m, a, None), (bool, int, float))}
        masks = getattr(m, "_module_masks", None)
        if masks is not None:
            d["masks_enabled"] = bool(masks.enabled)
        out[m.identifier()] = d
    return out


def saved_schedule(manager: Any, state: dict | None) -> list[tuple[Any, dict]]:
    """(modifier, its schedule_state entry) pairs: by identifier, else by type and order.

    A QuantizationModifier's identifier hashes its properties, which QAT changes: before structure replay it no
    longer equals the identifier saved after QAT started, so order among modifiers of one type decides then.
    """
    state = state or {}
    out, seen = [], {}
    for m in manager.iter_modifiers():
        k = seen[_type(m)] = seen.get(_type(m), -1) + 1
        same_type = [v for key, v in state.items() if str(key).rsplit("-", 1)[0] == _type(m)]
        entry = state.get(m.identifier()) or (same_type[k] if k < len(same_type) else {})
        out.append((m, dict(entry)))
    return out


def load_schedule_state(manager: Any, state: dict) -> None:
    """Put back what schedule_state() saved, after manager.initialize and manager.load_state_dict."""
    for m, d in saved_schedule(manager, state):
        enabled = d.pop("masks_enabled", None)
        for a, v in d.items():
            setattr(m, a, v)
        masks = getattr(m, "_module_masks", None)
        if masks is not None and enabled is not None:
            masks.enabled = enabled  # registers the gradient-masking hooks again


@contextlib.contextmanager
def held_qat_actions(manager: Any, state: dict | None) -> Iterator[None]:
    """While replaying a recipe at a resume epoch, block the QAT actions the checkpoint had not reached yet.

    Structure replay and manager.initialize run at the start of the resumed epoch, but the interrupted run would
    only have enabled QAT, frozen BN statistics or stopped observers at its next optimizer step: doing it earlier
    changes the first resumed forward passes. SparseML skips an action whose flag is already True, so the flags
    saved False are held True meanwhile, then set back so the next update acts on schedule.
    """
    held = []
    for m, saved in saved_schedule(manager, state) if state else []:
        for a in QAT_ATTRS if modifier_kind(m) == "qat" else ():
            if saved.get(a) is False and getattr(m, a, None) is False:
                setattr(m, a, True)
                held.append((m, a))
    try:
        yield
    finally:
        for m, a in held:
            setattr(m, a, False)


def _plain_state(obj: Any) -> Any:
    """Manager state as weights_only-safe values (tensors on cpu, numpy scalars as floats)."""
    if isinstance(obj, dict):
        return {str(k): _plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_state(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if hasattr(obj, "item") and not isinstance(obj, (int, float, bool, str)):
        return obj.item()
    return obj


class SparsificationCallback(Callback):
    """Runs a SparseML recipe inside the Trainer: pruning masks, QAT, LR and epoch schedule, phases and checkpoints."""

    name = "sparsification"

    def __init__(self, recipe: str | Path, recipe_args: str | dict | None = None):
        self.recipe_src, self.recipe_args = str(recipe), recipe_args
        self.rec: Recipe | None = None
        self.base_recipe: str | None = None  # composed recipe of the checkpoint we started from
        self.base_epochs = 0.0  # epochs of that recipe: our stage comes after it in the composed recipe
        self.saved: dict = {}  # our state from a checkpoint when resuming
        self.phase, self.qat_started, self.phase_best = "dense", False, {}
        self.start_sparsity = 0.0

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"recipe": self.rec.text if self.rec else None, "args": json.dumps(self.rec.args if self.rec else {}),
                "manager": _plain_state(self.rec.manager.state_dict()) if self.rec else {},
                "schedule": schedule_state(self.rec.manager) if self.rec else {},
                "base_recipe": self.base_recipe, "base_epochs": float(self.base_epochs), "phase": self.phase,
                "phase_best": dict(self.phase_best), "qat_started": self.qat_started}

    def load_state_dict(self, state: dict) -> None:
        self.saved = dict(state or {})
        self.base_recipe = self.saved.get("base_recipe")
        self.base_epochs = float(self.saved.get("base_epochs", 0.0))
        self.phase = self.saved.get("phase", "dense")
        self.phase_best = dict(self.saved.get("phase_best") or {})
        self.qat_started = bool(self.saved.get("qat_started", False))

    # ----------------------------------------------------------------------------------- set-up
    def on_checkpoint_load(self, trainer: Trainer, ckpt: dict) -> None:
        """Replay the structure the weights were saved with (QAT wrappers) before the trainer loads them."""
        if trainer.resume and self.saved.get("recipe"):
            self._load(trainer.model, self.saved["recipe"], json.loads(self.saved.get("args") or "{}"))
            if self.base_recipe:  # the previous stage's structure (e.g. QAT from a quantized checkpoint)
                apply_recipe_structure(trainer.model, self.base_recipe, math.inf)
            with held_qat_actions(self.rec.manager, self.saved.get("schedule")):
                self.rec.manager.apply_structure(trainer.model, epoch=float(ckpt.get("epoch", -1)) + ALMOST_ONE)
            return
        self.base_recipe = ckpt.get("recipe")
        self._refuse_qat_twice()  # now: after the replay below the layer names no longer match the recipe
        if self.base_recipe:
            epoch = ckpt.get("recipe_epoch")
            self.base_epochs = float(epoch) if epoch not in (None, math.inf) else self._max_epochs(self.base_recipe)
            apply_recipe_structure(trainer.model, self.base_recipe, epoch)

    def _load(self, model: nn.Module, recipe: str, args: Any) -> None:
        if self.rec is None:
            self.rec = load_recipe(recipe, args, model=model)

    @staticmethod
    def _max_epochs(text: str) -> float:
        try:
            return float(sparseml_manager_class().from_yaml(text).max_epochs)
        except Exception:
            return 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        """Validate the recipe on this model, take over epochs/LR, and initialize the manager at the start epoch."""
        model = de_parallel(trainer.model)
        self._load(model, self.recipe_src, self.recipe_args)
        rec = self.rec
        self.start_sparsity = global_sparsity(model)
        if not trainer.resume:
            self._check_state(rec)
        if rec.manager.max_epochs and rec.manager.max_epochs > 0:
            if int(trainer.opt.epochs) != int(rec.manager.max_epochs):
                LOGGER.info(f"recipe {rec.name}: training for {rec.manager.max_epochs} epochs (overrides --epochs)")
            trainer.epochs = int(math.ceil(rec.manager.max_epochs))
        if rec.has("lr"):
            LOGGER.info(f"recipe {rec.name}: LR managed by the recipe (default scheduler and warm-up disabled)")
            trainer.scheduler, trainer.nw = None, -1
        start = float(trainer.start_epoch)
        with held_qat_actions(rec.manager, self.saved.get("schedule") if trainer.resume else None):
            rec.manager.initialize(model, epoch=start)
        if trainer.resume and self.saved.get("manager"):
            rec.manager.load_state_dict(remap_mask_keys(self.saved["manager"], model))
            load_schedule_state(rec.manager, self.saved.get("schedule") or {})
        LOGGER.info(_summary(rec, self.start_sparsity))

    def _refuse_qat_twice(self) -> None:
        """A QuantizationModifier on a checkpoint that is already QAT: SparseML would wrap the wrappers."""
        name, text = recipe_source(self.recipe_src)
        if recipe_has_qat(self.base_recipe) and recipe_has_qat(text):
            raise RecipeError(f"recipe {name}: QuantizationModifier, but the starting checkpoint is already "
                              f"quantized (QAT); quantization can not be applied more than once. Start from the "
                              f"pre-QAT checkpoint (e.g. a stub with ?recipe_type=transfer_learn) or drop the modifier.")

    def _check_state(self, rec: Recipe) -> None:
        """Warn when a transfer recipe meets a dense model or a sparse one meets no pruning."""
        sp = self.start_sparsity
        if rec.has("constant_pruning") and not rec.has("gradual_pruning") and sp < SPARSE_AT:
            LOGGER.warning(f"\n{'!' * 100}\nWARNING ⚠️ recipe {rec.name} holds sparsity with ConstantPruningModifier "
                           f"(sparse transfer learning), but the starting weights are only {sp:.1%} sparse: the "
                           f"model will stay DENSE. Start from a pruned checkpoint.\n{'!' * 100}")
        if sp >= SPARSE_AT and not rec.has("gradual_pruning", "constant_pruning"):
            LOGGER.warning(f"WARNING ⚠️ recipe {rec.name} has no pruning modifier: the {sp:.1%} sparsity of the "
                           f"starting weights will NOT be kept (add a ConstantPruningModifier with "
                           f"params: __ALL_PRUNABLE__ to keep it)")

    # ---------------------------------------------------------------------------------- training
    def _epoch_float(self, trainer: Trainer) -> float:
        return float(trainer.epoch) + float(trainer.batch_i) / float(trainer.nb)

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Phase of this epoch; at QAT start switch EMA and AMP off (fake-quant observers do not average)."""
        phase = self._phase_at(trainer, float(trainer.epoch))
        if phase == "QAT" and trainer.ema is not None:
            LOGGER.info(f"recipe {self.rec.name}: QAT starts in epoch {trainer.epoch}: EMA and AMP off, "
                        f"validating the QAT model")
            trainer.ema = None
        if phase == "QAT":
            trainer.amp = False
            self.qat_started = True
        if phase != self.phase:
            trainer.best_fitness = 0.0  # best.pt tracks the current phase, as nm-yolov5
        self.phase = phase

    def _phase_at(self, trainer: Trainer, epoch: float) -> str:
        mods = self.rec.modifiers()
        if any(modifier_kind(m) == "qat" and _start(m) < epoch + 1 for m in mods):
            return "QAT"
        if any(modifier_kind(m) == "gradual_pruning" and _start(m) < epoch + 1 and epoch < _end(m) for m in mods):
            return "pruning"
        if any(modifier_kind(m) in ("gradual_pruning", "constant_pruning") and _start(m) <= epoch for m in mods):
            return "pruned"
        model = de_parallel(trainer.model)
        return "pruned" if global_sparsity(model) >= SPARSE_AT else "dense"

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        e, model = self._epoch_float(trainer), trainer.model
        self.rec.manager.update(model, trainer.optimizer, e, trainer.nb)
        self.rec.manager.optimizer_pre_step(model, trainer.optimizer, e, trainer.nb)

    def on_after_optimizer_step(self, trainer: Trainer) -> None:
        self.rec.manager.optimizer_post_step(trainer.model, trainer.optimizer, self._epoch_float(trainer), trainer.nb)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        """The EMA decays pruned weights only towards zero: zero them exactly where the model's are."""
        if trainer.ema is None or trainer.last_opt_step != trainer.ni or self.phase == "dense":
            return
        model = de_parallel(trainer.model)
        ema = prunable_parameters(trainer.ema.ema)
        with torch.no_grad():
            for name, p in prunable_parameters(model).items():
                if name in ema:
                    ema[name].mul_(p != 0)

    # ------------------------------------------------------------------------------ logging/saving
    def on_fit_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        metrics["x/phase"] = float(PHASES.index(self.phase))
        lr = ", ".join(f"{x:.3g}" for x in trainer.lr)
        LOGGER.info(f"phase {self.phase}, global sparsity {metrics.get('sparsity/global', 0.0):.4f}, lr {lr}")

    def on_model_save(self, trainer: Trainer, ckpt: dict) -> None:
        """Composed recipe + replay epoch in every checkpoint; per-phase best checkpoints."""
        ckpt["recipe"] = self.composed_recipe()
        last = trainer.epoch + 1 >= trainer.epochs
        ckpt["recipe_epoch"] = math.inf if last else self.base_epochs + trainer.epoch + ALMOST_ONE
        name = self._phase_ckpt_name(trainer)
        if name and trainer.fitness >= self.phase_best.get(name, -1.0):
            self.phase_best[name] = float(trainer.fitness)
            ckpt["callbacks"] = trainer.callbacks.state_dict()  # include the new phase_best
            from utils.checkpoint import save_checkpoint
            save_checkpoint(trainer.wdir / name, trainer.eval_model(), **ckpt)

    def _phase_ckpt_name(self, trainer: Trainer) -> str | None:
        model = de_parallel(trainer.model)
        sparse = global_sparsity(model) >= SPARSE_AT
        if self.phase == "QAT":
            return "best_pruned_quantized.pt" if sparse else "best_quantized.pt"
        return "best_pruned.pt" if self.phase == "pruned" and sparse else None

    def composed_recipe(self) -> str:
        """This run's recipe as a stage after the checkpoint's own recipe (SparseML compose_staged)."""
        mine = str(self.rec.manager)
        if not self.base_recipe:
            return mine
        try:
            return str(sparseml_manager_class().compose_staged(self.base_recipe, mine))
        except Exception as e:  # an unreadable old recipe must not stop saving
            LOGGER.warning(f"WARNING ⚠️ could not compose recipes ({e}); storing this run's recipe only")
            return mine

    def on_train_end(self, trainer: Trainer) -> None:
        """Finalize the manager; strip training state from the per-phase best checkpoints like best.pt."""
        for name in self.phase_best:
            if (trainer.wdir / name).exists():
                strip_training_state(trainer.wdir / name)


class SparseStartWarning(Callback):
    """Training without --recipe from a sparse checkpoint: say loudly that its zeros will fill in again."""

    name = "sparse_start_warning"

    def on_train_start(self, trainer: Trainer) -> None:
        model = de_parallel(trainer.model)
        sp = global_sparsity(model)
        if sp >= SPARSE_AT:
            LOGGER.warning(f"WARNING ⚠️ {trainer.opt.weights} is {sp:.1%} sparse but no --recipe is given: the "
                           f"sparsity will NOT be kept. Fine-tune with --recipe "
                           f"recipes/yolov5.transfer_learn_pruned.yaml (ConstantPruningModifier) to keep it.")


def _summary(rec: Recipe, sparsity: float) -> str:
    rows = [f"  {_type(m):<32s} epochs {_start(m):g} -> {_end(m):g}" for m in rec.modifiers()]
    return (f"recipe {rec.name} (args {json.dumps(rec.args)}), starting sparsity {sparsity:.4f}:\n"
            + "\n".join(rows))
