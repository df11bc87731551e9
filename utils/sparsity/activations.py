"""Calibration activations walked through a model one YOLOv5 layer at a time, so each layer sees a pruned input."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .calibration import as_float

OnInput = Callable[[str, torch.Tensor, "torch.Tensor | None"], None]  # (layer name, pruned input, dense input)


class _Stop(Exception):
    """Raised by a capture hook once every wanted input is seen, so the rest of the stage need not run."""


@dataclass
class _State:
    """One calibration batch on its way through the model: the last stage's output and the outputs kept for later."""

    x: Any
    saved: dict[int, Any] = field(default_factory=dict)


def model_stages(model: nn.Module) -> list[nn.Module]:
    """YOLOv5 layers (each with .f/.i, run like DetectionModel.forward); any other model is a single stage."""
    seq = getattr(model, "model", None)
    if isinstance(seq, nn.Sequential) and len(seq) and all(hasattr(m, "f") and hasattr(m, "i") for m in seq):
        return list(seq)
    return [model]


def _stage_input(stage: nn.Module, st: _State) -> Any:
    """What DetectionModel.forward hands this layer; a fresh list each time because Detect edits its input list."""
    f = getattr(stage, "f", -1)
    if isinstance(f, int):
        return st.x if f == -1 else st.saved[f]
    return [st.x if j == -1 else st.saved[j] for j in f]


def _run_until(stage: nn.Module, st: _State, hooks: dict[nn.Module, Callable[[torch.Tensor], None]]) -> None:
    """Forward one stage calling hooks[module](input) and stop as soon as all of them fired."""
    seen: set[int] = set()

    def make(fn: Callable[[torch.Tensor], None]) -> Callable:
        def pre_hook(mod: nn.Module, inp: tuple) -> None:
            fn(inp[0])
            seen.add(id(mod))
            if len(seen) == len(hooks):
                raise _Stop

        return pre_hook

    handles = [m.register_forward_pre_hook(make(fn)) for m, fn in hooks.items()]
    try:
        stage(_stage_input(stage, st))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


class StageRunner:
    """Walks calibration batches through `model` (being pruned) and optionally through an untouched dense copy."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], dense: nn.Module | None = None) -> None:
        if not batches:
            raise ValueError("one-shot reconstruction needs calibration image batches; none were given")
        device = next(model.parameters()).device
        xs = [as_float(b).to(device) for b in batches]
        self.stages = model_stages(model)
        self.dense_stages = model_stages(dense) if dense is not None else None
        self.save = set(getattr(model, "save", []))
        self.states = [_State(x) for x in xs]
        self.dense_states = [_State(x) for x in xs] if dense is not None else None
        self.images = sum(len(x) for x in xs)
        self._dense_inputs: list[dict[str, torch.Tensor]] = []

    def order(self, i: int, layers: dict[str, nn.Module]) -> list[list[str]]:
        """The given layers inside stage i in call order, grouped when they read the very same input tensor.

        Siblings (C3's cv1 and cv2) can be captured in one pass: pruning one never changes the other's input.
        """
        inside = {id(m) for m in self.stages[i].modules()}
        mine = {n: m for n, m in layers.items() if id(m) in inside}
        groups: dict[tuple, list[str]] = {}
        alive: list[torch.Tensor] = []  # held so a freed input's memory cannot be reused and mistaken for a sibling
        if not mine:
            return []

        def record(n: str, x: torch.Tensor) -> None:
            alive.append(x)
            key = (x.data_ptr(), tuple(x.shape), x.stride())
            if n not in {m for g in groups.values() for m in g}:
                groups.setdefault(key, []).append(n)

        _run_until(self.stages[i], self.states[0], {m: (lambda x, n=n: record(n, x)) for n, m in mine.items()})
        return list(groups.values())

    @torch.no_grad()
    def cache_dense(self, i: int, dense_layers: dict[str, nn.Module]) -> None:
        """Keep the dense model's inputs to these layers for every batch: one dense pass instead of one per layer."""
        self._dense_inputs = [{} for _ in self.states]
        if self.dense_stages is None:
            return
        for b, st in enumerate(self.dense_states):
            store = self._dense_inputs[b]
            _run_until(self.dense_stages[i], st, {m: (lambda x, n=n: store.__setitem__(n, x))
                                                  for n, m in dense_layers.items()})

    @torch.no_grad()
    def capture(self, i: int, layers: dict[str, nn.Module], dense_layers: dict[str, nn.Module] | None,
                on_input: OnInput) -> None:
        """Call on_input(name, pruned input, dense input or None) for every batch; forwards stop once all are seen."""
        for b, st in enumerate(self.states):
            dense_in: dict[str, torch.Tensor] = {}
            if dense_layers is not None and self.dense_stages is not None:
                cached = self._dense_inputs[b] if b < len(self._dense_inputs) else {}
                if all(n in cached for n in dense_layers):
                    dense_in = cached
                else:
                    hooks = {m: (lambda x, n=n: dense_in.__setitem__(n, x)) for n, m in dense_layers.items()}
                    _run_until(self.dense_stages[i], self.dense_states[b], hooks)
            _run_until(self.stages[i], st, {m: (lambda x, n=n: on_input(n, x, dense_in.get(n)))
                                            for n, m in layers.items()})

    @torch.no_grad()
    def advance(self, i: int) -> None:
        """Run stage i on every batch (both models) so stage i+1 sees its real inputs."""
        self._dense_inputs = []
        pairs = [(self.stages[i], self.states)]
        if self.dense_stages is not None:
            pairs.append((self.dense_stages[i], self.dense_states))
        for stage, states in pairs:
            for st in states:
                st.x = stage(_stage_input(stage, st))
                if getattr(stage, "i", None) in self.save:
                    st.saved[stage.i] = st.x
