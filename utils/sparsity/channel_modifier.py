"""!ChannelPruningModifier: structured (channel) pruning inside a SparseML recipe, driven by our trainer callback.

Sample recipe entry:
    - !ChannelPruningModifier
      start_epoch: 0.0
      end_epoch: 10.0           # == start_epoch: one-shot at start_epoch
      update_frequency: 1.0
      flops_target: 0.5         # fraction of conv FLOPs to remove (or channel_ratio: fraction of channels)
      importance: bn            # bn (|gamma|), l1 (filter L1) or taylor (grad x weight over the training steps)
      sparsity_l1: 0.0          # > 0 (e.g. 1e-4): L1 on BN scales while pruning (network slimming)

How it works: between start_epoch and end_epoch the target rises on a cubic schedule (as GMP); at every update the
lowest-ranked channels of each coupled group (utils.sparsity.channel) are *soft-masked*: their filters and BN scale
and shift are set to zero and held there (gradients masked before each optimizer step, weights re-zeroed after it),
so they output exactly 0 and the network trains as the smaller one it will become. Masks only grow. The removed
channels are written to model.yaml['channel_masks'], which every checkpoint carries; loading such a checkpoint with
utils.checkpoint.load_model (val/export/detect/benchmark) removes them physically, so the exported ONNX is the
smaller dense network. The optimizer and EMA never see a shape change during training.

Importing this module registers the tag with SparseML's recipe loader (it imports sparseml); import it once sparseml is
needed: utils.sparsity.modifiers.MODIFIERS lists it, and sparseml_manager_class() imports it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from utils.compat import apply_torch_compat

apply_torch_compat()  # torch 2.13 shim before sparseml builds anything (safe to import from compat.import_sparseml)

from sparseml.optim import ModifierProp  # noqa: E402
from sparseml.pytorch.sparsification.modifier import PyTorchModifierYAML, ScheduledUpdateModifier  # noqa: E402
from sparseml.sparsification import SparsificationTypes  # noqa: E402

from utils.logger import LOGGER  # noqa: E402
from utils.sparsity.channel import (  # noqa: E402
    IMPORTANCE,
    MASKS_KEY,
    Budget,
    ChannelGraph,
    TaylorAccumulator,
    apply_masks,
    mask_params,
    plan_channels,
)
from utils.torch_utils import de_parallel  # noqa: E402

INTER_FUNCS = ("cubic", "linear")
TRAINING_ALLOCATIONS = ("global", "uniform")



@PyTorchModifierYAML()
class ChannelPruningModifier(ScheduledUpdateModifier):
    """Gradual (or one-shot) channel pruning with soft masks; physical removal happens when the checkpoint loads."""

    gradual = True  # the trainer's phase logic reports 'pruning' while its schedule runs (utils.sparsity.modifiers)

    def __init__(self, flops_target: float | None = None, channel_ratio: float | None = None,
                 importance: str = "bn", allocation: str = "global", start_epoch: float = 0.0,
                 end_epoch: float = -1.0, update_frequency: float = 1.0, round_to: int = 16, min_channels: int = 16,
                 max_ratio: float = 0.75, ignore: list[str] | str | None = None, inter_func: str = "cubic",
                 sparsity_l1: float = 0.0):
        end_epoch = start_epoch if end_epoch is None or end_epoch < 0 else end_epoch
        super().__init__(start_epoch=start_epoch, end_epoch=end_epoch, update_frequency=update_frequency,
                         end_comparator=0, min_frequency=-1.0)
        self._flops_target, self._channel_ratio = flops_target, channel_ratio
        self._importance, self._allocation, self._inter_func = importance, allocation, inter_func
        self._round_to, self._min_channels, self._max_ratio = int(round_to), int(min_channels), float(max_ratio)
        self._ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        self._sparsity_l1 = float(sparsity_l1)
        self._validate()
        self._plan: dict[str, list[int]] = {}
        self._graph: ChannelGraph | None = None
        self._masks: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        self._taylor: TaylorAccumulator | None = None

    def _validate(self) -> None:
        """Every bad field fails at recipe load with its name (RecipeError maps TypeError/ValueError to the field)."""
        if self._importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCE)}, got {self._importance!r}")
        if self._allocation not in TRAINING_ALLOCATIONS:  # 'sensitivity' needs calibration images: one-shot only
            raise ValueError(f"allocation must be one of {', '.join(TRAINING_ALLOCATIONS)}, got {self._allocation!r}")
        if self._sparsity_l1 < 0:
            raise ValueError(f"sparsity_l1 must be >= 0, got {self._sparsity_l1}")
        if self._inter_func not in INTER_FUNCS:
            raise ValueError(f"inter_func must be one of {', '.join(INTER_FUNCS)}, got {self._inter_func!r}")
        self._budget(1.0)  # Budget checks targets and limits

    def _budget(self, fraction: float) -> Budget:
        """The budget at `fraction` of the final target."""
        ft = None if self._flops_target is None else float(self._flops_target) * fraction
        cr = None if self._channel_ratio is None else float(self._channel_ratio) * fraction
        return Budget(flops_target=ft, channel_ratio=cr, round_to=self._round_to, min_channels=self._min_channels,
                      max_ratio=self._max_ratio)

    # ----------------------------------------------------------------------------- recipe fields (serialized)
    @ModifierProp()
    def flops_target(self) -> float | None:
        return self._flops_target

    @ModifierProp()
    def channel_ratio(self) -> float | None:
        return self._channel_ratio

    @ModifierProp()
    def importance(self) -> str:
        return self._importance

    @ModifierProp()
    def allocation(self) -> str:
        return self._allocation

    @ModifierProp()
    def round_to(self) -> int:
        return self._round_to

    @ModifierProp()
    def min_channels(self) -> int:
        return self._min_channels

    @ModifierProp()
    def max_ratio(self) -> float:
        return self._max_ratio

    @ModifierProp()
    def ignore(self) -> list[str]:
        return self._ignore

    @ModifierProp()
    def inter_func(self) -> str:
        return self._inter_func

    @ModifierProp()
    def sparsity_l1(self) -> float:
        return self._sparsity_l1

    @ModifierProp(serializable=False)
    def sparsification_types(self) -> list[SparsificationTypes]:
        return [SparsificationTypes.pruning, SparsificationTypes.structured]

    # ----------------------------------------------------------------------------------------- lifecycle
    def initialize(self, module: nn.Module, epoch: float = 0, loggers: Any = None, **kwargs) -> None:
        """Analyse the model; masks already in its yaml (a masked checkpoint) are adopted and kept."""
        super().initialize(module, epoch, loggers, **kwargs)
        model = de_parallel(module)
        self._graph = ChannelGraph(model)
        saved = dict((getattr(model, "yaml", {}) or {}).get(MASKS_KEY) or {})
        for key, chans in saved.items():
            self._plan[key] = sorted(set(self._plan.get(key, [])) | set(chans))
        self._masks = None
        if self._importance == "taylor":
            self._taylor = TaylorAccumulator(model, self._graph)

    def fraction(self, epoch: float) -> float:
        """Share of the final target reached at `epoch` (cubic: fast early, gentle near the end, as GMP)."""
        span = float(self._end_epoch) - float(self._start_epoch)
        if span <= 0:
            return 1.0
        p = min(max((epoch - float(self._start_epoch)) / span, 0.0), 1.0)
        return 1.0 - (1.0 - p) ** 3 if self._inter_func == "cubic" else p

    def update(self, module: nn.Module, optimizer: Any, epoch: float, steps_per_epoch: int) -> None:
        """Grow the masks to this epoch's target."""
        super().update(module, optimizer, epoch, steps_per_epoch)
        model = de_parallel(module)
        taylor = None
        if self._taylor is not None:
            if not self._taylor.steps:
                self._taylor.step()  # the first update has no earlier steps: judge on this step's gradients
            taylor = self._taylor.scores
        frac = self.fraction(epoch)
        plan = plan_channels(model, self._budget(frac), self._importance, self._allocation, self._ignore, taylor,
                             self._graph, keep_removed=self._plan)
        for key, chans in self._plan.items():  # masks only grow
            plan[key] = sorted(set(plan.get(key, [])) | set(chans))
        apply_masks(model, plan, self._graph)
        self._plan, self._masks = plan, None
        if self._taylor is not None:
            self._taylor = TaylorAccumulator(model, self._graph)
        LOGGER.info(f"ChannelPruningModifier: epoch {epoch:.2f}, {frac:.0%} of target, "
                    f"{sum(len(v) for v in plan.values())} channels masked in {len(plan)} groups")

    def _mask_list(self, module: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
        if self._masks is None:
            model = de_parallel(module)
            self._graph = self._graph or ChannelGraph(model)
            self._masks = [(p, k.to(p.device)) for p, k in mask_params(model, self._plan, self._graph)]
        return self._masks

    def optimizer_pre_step(self, module: nn.Module, optimizer: Any, epoch: float, steps_per_epoch: int) -> None:
        """Accumulate Taylor scores, push BN scales towards zero (sparsity_l1), keep masked channels from learning."""
        super().optimizer_pre_step(module, optimizer, epoch, steps_per_epoch)
        pruning = self.started and not self.ended
        if self._taylor is not None and pruning:
            self._taylor.step()
        if self._sparsity_l1 > 0 and pruning:
            self._slimming(de_parallel(module))
        with torch.no_grad():
            for p, keep in self._mask_list(module):
                if p.grad is not None:
                    p.grad.mul_(keep)

    @torch.no_grad()
    def _slimming(self, model: nn.Module) -> None:
        """Network slimming (Liu et al. 2017): an L1 subgradient on every prunable BN scale, so channels the task
        does not need drift to zero and are removed nearly losslessly by the next update."""
        for g in self._graph.prunable():
            for src in g.sources:
                w = model.get_submodule(src).bn.weight
                if w.grad is not None:
                    w.grad.add_(torch.sign(w), alpha=self._sparsity_l1)

    def optimizer_post_step(self, module: nn.Module, optimizer: Any, epoch: float, steps_per_epoch: int) -> None:
        """Weight decay and momentum move masked weights off zero: put them back."""
        super().optimizer_post_step(module, optimizer, epoch, steps_per_epoch)
        with torch.no_grad():
            for p, keep in self._mask_list(module):
                p.mul_(keep)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"plan": {k: list(v) for k, v in self._plan.items()}}

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Masks of an interrupted run (resume); they are re-applied on the next step."""
        self._plan = {str(k): [int(c) for c in v] for k, v in dict(state_dict.get("plan") or {}).items()}
        self._masks = None
