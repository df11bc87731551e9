"""Training building blocks (Ultralytics v7.0 semantics): EMA, optimizer groups, LR shapes, seeds, RNG, early stop."""
from __future__ import annotations

from utils.files import increment_path  # noqa: F401  (re-exported: train.py and tests import it from here)

import ctypes
import glob
import math
import os
import random
import signal
import sys
import threading
from contextlib import contextmanager
from copy import deepcopy
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from utils.logger import LOGGER
from utils.torch_utils import de_parallel, is_parallel  # noqa: F401  (re-exported for train.py)


def copy_attr(dst: object, src: object, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
    """Copy plain attributes (names, hyp, stride...) so the EMA model describes itself like the trained one."""
    for k, v in src.__dict__.items():
        if (include and k not in include) or k.startswith("_") or k in exclude:
            continue
        setattr(dst, k, v)


class ModelEMA:
    """Exponential moving average of weights and buffers; decay ramps up over ~tau updates so early EMA tracks fast."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int) -> float:
        return self.decay_max * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)

    def update_attr(self, model: nn.Module, include: tuple[str, ...] = ("yaml", "hyp", "names", "stride")) -> None:
        copy_attr(self.ema, de_parallel(model), include)

    def state_dict(self) -> dict:
        """Counter and constants; the EMA weights themselves are the checkpoint's 'model' entry."""
        return {"updates": self.updates, "decay": self.decay_max, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.decay_max, self.tau = state.get("decay", self.decay_max), state.get("tau", self.tau)


def smart_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.001, momentum: float = 0.9,
                    decay: float = 1e-5) -> torch.optim.Optimizer:
    """Three groups as Ultralytics: [0] biases (no decay), [1] weights (decay), [2] norm-layer weights (no decay).

    Warm-up relies on this order: group 0 is the one whose LR starts high (warmup_bias_lr).
    """
    groups: tuple[list, list, list] = ([], [], [])  # decayed weights, norm weights, biases
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in de_parallel(model).modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p_name == "bias":
                groups[2].append(p)
            elif p_name == "weight" and isinstance(module, norm_types):
                groups[1].append(p)
            else:
                groups[0].append(p)
    if name == "Adam":
        optimizer = torch.optim.Adam(groups[2], lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(groups[2], lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "RMSProp":
        optimizer = torch.optim.RMSprop(groups[2], lr=lr, momentum=momentum)
    elif name == "SGD":
        optimizer = torch.optim.SGD(groups[2], lr=lr, momentum=momentum, nesterov=True)
    else:
        raise NotImplementedError(f"optimizer '{name}' not supported; use SGD, Adam, AdamW or RMSProp")
    optimizer.add_param_group({"params": groups[0], "weight_decay": decay})
    optimizer.add_param_group({"params": groups[1], "weight_decay": 0.0})
    LOGGER.info(f"optimizer: {type(optimizer).__name__}(lr={lr}) with parameter groups "
                f"{len(groups[1])} weight(decay=0.0), {len(groups[0])} weight(decay={decay}), {len(groups[2])} bias")
    return optimizer


def linear_lr(lrf: float, epochs: int | Callable[[], int]) -> Callable[[float], float]:
    """LR factor falling linearly from 1 to lrf over `epochs` (a number, or a getter so hooks can change it)."""
    n = epochs if callable(epochs) else (lambda: epochs)
    return lambda x: (1 - x / n()) * (1.0 - lrf) + lrf


def one_cycle(y1: float = 0.0, y2: float = 1.0, steps: int | Callable[[], int] = 100) -> Callable[[float], float]:
    """Half-cosine ramp from y1 to y2 over `steps` (the --cos-lr schedule when called as one_cycle(1, lrf, epochs))."""
    n = steps if callable(steps) else (lambda: steps)
    return lambda x: ((1 - math.cos(x * math.pi / n())) / 2) * (y2 - y1) + y1


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed every RNG; deterministic also forbids non-deterministic kernels so CPU runs repeat bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # NaN-filling every torch.empty() costs ~20% of a CPU training step and is a debugging aid, not determinism
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        os.environ["PYTHONHASHSEED"] = str(seed)


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG the loop draws from (python, numpy, torch, CUDA, the loader's generator), weights_only-safe."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Inverse of rng_state(): the next random draw equals the one the saved run would have made."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "loader" in state and generator is not None:
        generator.set_state(state["loader"])


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (0 or None: never)."""

    def __init__(self, patience: int | None = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float("inf")
        self.possible_stop = False  # True one epoch before a stop, so that epoch is validated and saved as final

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:  # >= so a run stuck at 0 fitness early still counts as improving
            self.best_epoch, self.best_fitness = epoch, fitness
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}; pass --patience 0 to disable.")
        return stop

    def state_dict(self) -> dict:
        return {"best_fitness": float(self.best_fitness), "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_fitness, self.best_epoch = state["best_fitness"], state["best_epoch"]


def intersect_dicts(da: dict, db: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Entries of da whose key and shape match db: transfer pretrained weights into a model with another nc."""
    return {k: v for k, v in da.items() if k in db and all(x not in k for x in exclude) and v.shape == db[k].shape}


@contextmanager
def torch_distributed_zero_first(local_rank: int) -> Iterator[None]:
    """Rank 0 goes first (dataset caching, downloads); the others wait, then reuse its results."""
    active = dist.is_available() and dist.is_initialized()
    if active and local_rank not in (-1, 0):
        dist.barrier()
    yield
    if active and local_rank == 0:
        dist.barrier()


def latest_run(search_dir: str | os.PathLike = ".") -> str:
    """Most recent last*.pt below search_dir: what a bare --resume continues."""
    files = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    return max(files, key=os.path.getctime) if files else ""


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD = -1, -3, 128 * 1024  # mallopt(3) parameters


@contextmanager
def retained_heap(limit: int = 1 << 30) -> Iterator[None]:
    """Keep freed memory in the process (glibc) while training, restore the defaults afterwards.

    By default glibc hands big freed blocks (activations, gradients) back to the kernel and the next step
    takes them again through page faults that zero every page: ~10% of a CPU training step, measured on
    yolov5n at 320. Memory use stays at the step's peak instead of dropping between steps.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, limit)
    libc.mallopt(M_TRIM_THRESHOLD, limit)
    try:
        yield
    finally:  # glibc's initial values (the dynamic mmap threshold stays off), and give the memory back
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt semantics), else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends: a checkpoint write is finished, then the interrupt is raised as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
