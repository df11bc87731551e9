"""Hook points of the training loop: pruning, QAT and loggers plug in here instead of branching inside the loop.

Every hook gets the Trainer as its first argument and may read or replace its public attributes:
- `trainer.epochs`: schedule length (the default LR lambda `trainer.lf` follows it);
- `trainer.scheduler` (None: the callback drives the LR), `trainer.lf`, `trainer.nw = -1` (no warm-up);
- `trainer.ema = None` and `trainer.amp = False` (e.g. at QAT start), `trainer.optimizer`, `trainer.model`;
- `trainer.best_fitness` (reset it to start a new "best" phase).
The loop re-reads these on every use, so a change made in a hook takes effect from the next step or epoch.
All hooks run on every DDP rank except on_fit_epoch_end and on_model_save (rank 0 validates and saves);
`trainer.main` tells whether this is that process.

Order inside Trainer.fit():
    setup: model built -> [resume] load_state_dict -> [weights from a checkpoint] on_checkpoint_load -> weights
           loaded -> optimizer, scheduler, loaders, EMA -> [resume] optimizer/scheduler/EMA state restored
    on_train_start
    per epoch: on_train_epoch_start
        per batch: on_train_batch_start, forward, loss, on_loss, backward,
                   (when an optimizer step is due) on_before_optimizer_step, step, on_after_optimizer_step, EMA update
                   on_train_batch_end
        scheduler step, on_train_epoch_end, validation, on_fit_epoch_end(metrics),
        on_model_save(ckpt) once before last/best/epochN.pt are written
    on_train_end
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # avoid an import cycle: the trainer imports this module
    from utils.trainer import Trainer


class Callback:
    """No-op base: subclasses override only the hooks they need."""

    name: str | None = None  # key of this callback's state in checkpoints; defaults to the class name

    @property
    def key(self) -> str:
        return self.name or type(self).__name__

    def on_checkpoint_load(self, trainer: Trainer, ckpt: dict) -> None:
        """Weights come from a checkpoint (fine-tune or resume: see trainer.resume); called after the model is
        built and BEFORE the weights are loaded, so structure (masks, QAT wrappers) can be rebuilt to fit them."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Everything is built; last chance to change epochs, scheduler, EMA or AMP before the first epoch."""

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """trainer.epoch is the epoch about to run; the model is already in train mode."""

    def on_train_batch_start(self, trainer: Trainer) -> None:
        """trainer.ni (global batch index) and trainer.batch_i are set; trainer.imgs/targets hold the batch."""

    def on_loss(self, trainer: Trainer) -> None:
        """trainer.loss / loss_items hold this batch's task loss for trainer.pred (the model's outputs on
        trainer.batch_input); replace trainer.loss to change what is backpropagated (e.g. distillation)."""

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        """Gradients are unscaled and clipped; mask them here (pruning) before the weights move."""

    def on_after_optimizer_step(self, trainer: Trainer) -> None:
        """Weights just moved; re-apply masks here so the EMA update that follows never sees pruned weights."""

    def on_train_batch_end(self, trainer: Trainer) -> None:
        """trainer.loss_items / trainer.mloss hold this batch's and the running mean losses."""

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Training part of the epoch is done (scheduler stepped); validation has not run yet."""

    def on_fit_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        """After validation; metrics is the results.csv row (keys as the csv header) and may be extended."""

    def on_model_save(self, trainer: Trainer, ckpt: dict) -> None:
        """Add keys to a checkpoint dict before it is written (values must load with weights_only=True)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the final validation of best.pt; trainer.results holds its metrics."""

    def state_dict(self) -> dict:
        """State to store in checkpoints under ckpt['callbacks'][self.key] (weights_only-safe values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned, on resume, before on_checkpoint_load."""


HOOKS = tuple(n for n in vars(Callback) if n.startswith("on_"))


class CallbackList(Callback):
    """Dispatches every hook to its callbacks in order; the trainer only ever talks to one of these."""

    def __init__(self, callbacks: Iterable[Callback] | None = None):
        self.callbacks: list[Callback] = list(callbacks or [])

    def add(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def run(self, hook: str, trainer: Trainer, *args: Any) -> None:
        """Call `hook` on every callback; unknown hook names are a programming error, not silently ignored."""
        if hook not in HOOKS:
            raise ValueError(f"unknown callback hook '{hook}'; known: {', '.join(HOOKS)}")
        for cb in self.callbacks:
            getattr(cb, hook)(trainer, *args)

    def state_dict(self) -> dict:
        return {cb.key: s for cb in self.callbacks if (s := cb.state_dict())}  # stateless ones stay out

    def load_state_dict(self, state: dict) -> None:
        for cb in self.callbacks:
            if cb.key in state:
                cb.load_state_dict(state[cb.key])


def _make_dispatcher(hook: str):
    def dispatch(self: CallbackList, trainer: Trainer, *args: Any) -> None:
        self.run(hook, trainer, *args)

    dispatch.__name__ = hook
    dispatch.__doc__ = f"Forward {hook} to every callback."
    return dispatch


for _hook in HOOKS:
    setattr(CallbackList, _hook, _make_dispatcher(_hook))
