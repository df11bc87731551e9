"""YOLOv5 trainer (Ultralytics v7.0 behaviour): owns the loop; pruning, QAT and loggers plug in via utils.callbacks."""
from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.optim import lr_scheduler
from tqdm import tqdm

from models.yolo import DetectionModel
from utils.augmentations import make_divisible
from utils.autoanchor import check_anchors
from utils.callbacks import Callback, CallbackList
from utils.checkpoint import (
    CheckpointError,
    atomic_save,
    compact_state_dict,
    drop_tensors,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from utils.data_config import check_dataset
from utils.dataloaders import create_dataloader
from utils.evaluate import evaluate
from utils.files import claim_run_dir, lock_run_dir
from utils.logger import LOGGER
from utils.loss import ComputeLoss
from utils.metrics import fitness
from utils.sparsity.measure import global_sparsity, prunable_parameters
from utils.torch_utils import select_device
from utils.train_utils import (
    EarlyStopping,
    ModelEMA,
    de_parallel,
    defer_sigint,
    init_seeds,
    intersect_dicts,
    linear_lr,
    one_cycle,
    retained_heap,
    rng_state,
    set_rng_state,
    smart_optimizer,
    torch_distributed_zero_first,
)

TQDM_BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"
NBS = 64  # nominal batch size: gradients accumulate up to it, weight decay is scaled to it
LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")
RESULT_KEYS = (
    "train/box_loss", "train/obj_loss", "train/cls_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "x/lr0", "x/lr1", "x/lr2", "sparsity/global",
)
# Checkpoint entries only needed to continue training; removed from last.pt/best.pt when a run finishes.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "ema", "train_model", "last_opt_step", "stopper", "scaler", "rng")


class TrainConfigError(ValueError):
    """Bad options or data for a training run; the message names the input and the fix."""


class TrainingDiverged(ValueError):
    """The loss or the weights went NaN/inf: stop rather than train on and overwrite last.pt with garbage."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during fit(); the message is the command that resumes the run from its last.pt."""


def _dist_env() -> tuple[int, int, int]:
    """(RANK, LOCAL_RANK, WORLD_SIZE) as torchrun sets them; -1/-1/1 for a plain single process."""
    return int(os.getenv("RANK", -1)), int(os.getenv("LOCAL_RANK", -1)), int(os.getenv("WORLD_SIZE", 1))


def plain(value: Any) -> Any:
    """Option values as yaml/weights_only-safe builtins (Paths -> str, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_hyp(hyp: str | Path | dict) -> dict:
    """Hyperparameters from a yaml path or a dict (resume stores them as a dict in opt.yaml)."""
    if isinstance(hyp, dict):
        return dict(hyp)
    path = Path(hyp)
    if not path.is_file():
        raise TrainConfigError(f"hyperparameter file {hyp} not found; pass e.g. --hyp data/hyps/hyp.scratch-low.yaml")
    with open(path, errors="ignore") as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise TrainConfigError(f"{hyp}: expected a mapping of hyperparameters (lr0: 0.01, ...)")
    return d


class Trainer:
    """One training run: setup() builds everything from opt/hyp, fit() runs epochs, callbacks hook in at each step."""

    def __init__(self, opt: argparse.Namespace, hyp: str | Path | dict, callbacks: Iterable[Callback] | None = None):
        self.opt = opt
        self.hyp = load_hyp(hyp)
        self.callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
        self.rank, self.local_rank, self.world_size = _dist_env()
        self.main = self.rank in (-1, 0)  # the process that validates, logs and saves
        self.resume = bool(getattr(opt, "resume", False))
        self.save_dir = Path(opt.save_dir)
        self.wdir = self.save_dir / "weights"
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self.csv = self.save_dir / "results.csv"
        self.epochs = int(opt.epochs)
        self.start_epoch = self.epoch = 0
        self.best_fitness, self.last_opt_step, self.stop = 0.0, -1, False
        self.plots = not getattr(opt, "noplots", False)
        self.results: dict = {}
        self.metrics: dict = {}
        self.ema: ModelEMA | None = None
        self.scheduler: Any = None
        self.batch_input: torch.Tensor | None = None  # this step's model input and outputs, for on_loss hooks
        self.pred: Any = None
        self._resume_ckpt: dict | None = None
        self.background_plots: Any = None  # utils.plots.BackgroundPlots once a plot runs in another process

    # ----------------------------------------------------------------------------------------------- setup
    def setup(self) -> Trainer:
        """Build run folder, data, model, optimizer, scheduler, EMA and loaders; restore state when resuming."""
        init_seeds(int(self.opt.seed) + 1 + self.rank, deterministic=True)
        self.device = self._device()
        with torch_distributed_zero_first(self.local_rank):
            self.data = check_dataset(self.opt.data, allow_code=bool(getattr(self.opt, "allow_download_code", False)))
        self._prepare_run_dir()  # after the data check: a typo in --data leaves no empty run folder
        self.single_cls = bool(self.opt.single_cls)
        self.nc = 1 if self.single_cls else int(self.data["nc"])
        names = list(self.data["names"])
        self.names = ["item"] if self.single_cls and len(names) != 1 else names
        self._build_model()
        self._freeze(self.opt.freeze)
        self.gs = max(int(self.model.stride.max()), 32)
        self.imgsz = max(make_divisible(int(self.opt.imgsz), self.gs), self.gs * 2)
        if self.imgsz != int(self.opt.imgsz):
            LOGGER.warning(f"WARNING ⚠️ --img-size {self.opt.imgsz} must be a multiple of {self.gs}, "
                           f"using {self.imgsz}")
        self._build_optimizer()
        self._build_loaders()
        self._finish_model()
        self.memory_format = self._memory_format()
        self.model.to(memory_format=self.memory_format)  # in place: the optimizer keeps the same parameters
        self.ema = ModelEMA(self.model) if self.main else None
        self.amp = self.device.type == "cuda"  # mixed precision helps on GPU only
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.stopper = EarlyStopping(patience=self.opt.patience)
        if self._resume_ckpt is not None:
            self._restore_training_state(self._resume_ckpt)
        self._wrap_distributed()
        self.compute_loss = ComputeLoss(self.model)
        return self

    def _prepare_run_dir(self) -> None:
        """weights/ folder plus hyp.yaml and opt.yaml (the resume source of truth; kept as is on resume)."""
        if not self.main:
            return
        self._claim_run_dir()
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.opt.hyp = dict(self.hyp)  # unscaled copy: resume re-applies the nl/nc/imgsz scaling
        LOGGER.info("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in self.hyp.items()))
        if self.resume:
            return
        for name, d in (("hyp.yaml", self.hyp), ("opt.yaml", vars(self.opt))):
            with open(self.save_dir / name, "w") as f:
                yaml.safe_dump(plain(d), f, sort_keys=False)

    def _claim_run_dir(self) -> None:
        """Own the run folder before writing: runs started together never share one (resume/--exist-ok: a lock)."""
        opt = self.opt
        if self.resume or not (getattr(opt, "project", None) and getattr(opt, "name", None)):
            self.save_dir.mkdir(parents=True, exist_ok=True)
            lock_run_dir(self.save_dir)
            return
        self.save_dir = claim_run_dir(Path(opt.project) / opt.name, exist_ok=bool(getattr(opt, "exist_ok", False)))
        opt.save_dir = str(self.save_dir)
        self.wdir = self.save_dir / "weights"
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self.csv = self.save_dir / "results.csv"

    def _device(self) -> torch.device:
        """cuda:LOCAL_RANK under torchrun on GPUs, else the --device choice."""
        if self.local_rank != -1 and torch.cuda.is_available() and str(self.opt.device) != "cpu":
            return torch.device("cuda", self.local_rank)
        if self.local_rank != -1:
            return torch.device("cpu")
        return select_device(self.opt.device)

    def _build_model(self) -> None:
        """Model from --cfg (scratch), or --cfg/checkpoint yaml plus transferred (or, on resume, exact) weights."""
        opt, anchors = self.opt, self.hyp.get("anchors")
        weights = str(opt.weights or "")
        if not weights:
            if not opt.cfg:
                raise TrainConfigError("no model given: pass --weights yolov5n.pt (fine-tune) "
                                       "or --cfg yolov5n.yaml (scratch)")
            self.model = DetectionModel(opt.cfg, ch=3, nc=self.nc, anchors=anchors).to(self.device)
            self.model.names = self.names
            return
        ckpt = load_checkpoint(weights)  # CheckpointError names the file and the fix
        if self.resume and ckpt.get("optimizer") is None:
            raise CheckpointError(f"{weights}: holds no training state (the run finished); nothing to resume. "
                                  f"Start a new run with --weights {weights}")
        self.model = DetectionModel(opt.cfg or ckpt["yaml"], ch=3, nc=self.nc, anchors=anchors)
        self.model.names = self.names
        if self.resume:
            self.callbacks.load_state_dict(ckpt.get("callbacks") or {})
        self.callbacks.on_checkpoint_load(self, ckpt)  # may rebuild structure (masks, QAT) before weights load
        self._load_weights(ckpt, weights)
        self.model.to(self.device)
        self._resume_ckpt = ckpt if self.resume else None

    def _load_weights(self, ckpt: dict, weights: str) -> None:
        """Resume loads the raw training weights exactly; fine-tuning transfers every tensor whose shape fits."""
        if self.resume:
            self.model.load_state_dict(ckpt.get("train_model") or ckpt["model"], strict=True)
            return
        exclude = ("anchor",) if (self.opt.cfg or self.hyp.get("anchors")) else ()
        csd = intersect_dicts(ckpt["model"], self.model.state_dict(), exclude=exclude)
        self.model.load_state_dict(csd, strict=False)
        LOGGER.info(f"Transferred {len(csd)}/{len(self.model.state_dict())} items from {weights}")
        warn_dense_new_layers(ckpt["model"], csd, self.model)

    def _freeze(self, freeze: list[int]) -> None:
        """--freeze 10 freezes layers 0-9 (backbone); --freeze 0 5 7 freezes exactly those layers."""
        freeze = list(freeze or [0])
        prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(freeze[0]))]
        for k, v in self.model.named_parameters():
            v.requires_grad = not any(k.startswith(p) for p in prefixes)
            if not v.requires_grad:
                LOGGER.info(f"freezing {k}")

    def _build_optimizer(self) -> None:
        """SGD/Adam/AdamW with 3 groups; decay scaled to the nominal batch; linear or cosine LR lambda."""
        bs = int(self.opt.batch_size)
        if bs < 1:
            LOGGER.info("AutoBatch is not available on this build; using --batch-size 16")
            bs = self.opt.batch_size = 16
        if bs % self.world_size:
            raise TrainConfigError(f"--batch-size {bs} must be a multiple of the number of processes "
                                   f"({self.world_size})")
        self.batch_size = bs
        self.accumulate = max(round(NBS / bs), 1)
        self.hyp["weight_decay"] *= bs * self.accumulate / NBS
        self.optimizer = smart_optimizer(self.model, self.opt.optimizer, self.hyp["lr0"], self.hyp["momentum"],
                                         self.hyp["weight_decay"])
        lrf = self.hyp["lrf"]
        epochs = lambda: self.epochs  # noqa: E731  (hooks may change trainer.epochs; the schedule follows)
        self.lf = one_cycle(1, lrf, epochs) if self.opt.cos_lr else linear_lr(lrf, epochs)
        self.scheduler = lr_scheduler.LambdaLR(self.optimizer, lr_lambda=lambda x: self.lf(x))
        self.scheduler.last_epoch = -1  # Ultralytics: epoch e after warm-up trains at lf(e - 1)

    def _build_loaders(self) -> None:
        """Augmented train loader (DistributedSampler under DDP) and a rect val loader on the main process."""
        opt, bs = self.opt, self.batch_size // self.world_size
        train_cache = None if opt.cache == "val" else opt.cache  # --cache val: cache the val images only
        val_cache = None if opt.noval else ("ram" if opt.cache == "val" else opt.cache)
        self.train_loader, self.dataset = create_dataloader(
            self.data["train"], self.imgsz, bs, self.gs, self.single_cls, hyp=self.hyp, augment=True,
            cache=train_cache, rect=opt.rect, rank=self.local_rank, workers=opt.workers, shuffle=True,
            prefix="train: ", seed=int(opt.seed), nc=self.nc)
        self._check_labels()
        self.val_loader = None
        if self.main:
            self.val_loader = create_dataloader(
                self.data["val"], self.imgsz, bs * 2, self.gs, self.single_cls, hyp=self.hyp, cache=val_cache,
                rect=True, rank=-1, workers=opt.workers * 2, pad=0.5, prefix="val: ", nc=self.nc)[0]

    def _check_labels(self) -> None:
        """Class ids must fit nc, else the loss indexes out of range deep in the first batch."""
        labels = [lb for lb in self.dataset.labels if len(lb)]
        self.labels = np.concatenate(labels, 0) if labels else np.zeros((0, 5))
        if len(self.labels) and int(self.labels[:, 0].max()) >= self.nc:
            raise TrainConfigError(f"{self.opt.data}: label class {int(self.labels[:, 0].max())} exceeds "
                                   f"nc={self.nc}; fix the labels or the 'names' list in the dataset yaml")

    def _finish_model(self) -> None:
        """AutoAnchor and fp16-rounding on a fresh run (as Ultralytics), loss gains scaled to nl/nc/imgsz."""
        if self.main and not self.resume:
            if not self.opt.noautoanchor:
                check_anchors(self.dataset, model=self.model, thr=self.hyp["anchor_t"], imgsz=self.imgsz)
            self.model.half().float()  # pre-reduce anchor precision
            if self.plots:
                self._plot_labels()
        nl = self.model.model[-1].nl
        self.hyp["box"] *= 3 / nl
        self.hyp["cls"] *= self.nc / 80 * 3 / nl
        self.hyp["obj"] *= (self.imgsz / 640) ** 2 * 3 / nl
        self.hyp["label_smoothing"] = float(getattr(self.opt, "label_smoothing", 0.0))
        self.model.hyp, self.model.names = self.hyp, self.names  # DDP later copies rank 0's anchors/weights

    def _memory_format(self) -> torch.memory_format:
        """NHWC on CPU: oneDNN trains and validates yolov5n ~25% faster in channels_last than in NCHW.

        Recipe runs keep NCHW: SparseML's pruning and QAT modifiers are not verified on NHWC weights.
        """
        if self.device.type == "cpu" and not getattr(self.opt, "recipe", None):
            return torch.channels_last
        return torch.contiguous_format

    def _plot_labels(self) -> None:
        """labels.jpg drawn by another process while training starts (joined at the end of the run)."""
        from utils.plots import BackgroundPlots, plot_labels  # matplotlib only when plotting
        self.background_plots = BackgroundPlots()
        self.background_plots.run(plot_labels, self.labels, self.names, self.save_dir)

    def _wrap_distributed(self) -> None:
        """DDP (with SyncBN on GPUs when asked) once all weights are final."""
        if self.world_size <= 1 or self.local_rank == -1:
            return
        if self.opt.sync_bn and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model).to(self.device)
            LOGGER.info("Using SyncBatchNorm()")
        ids = [self.local_rank] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                         output_device=ids[0] if ids else None)

    # ---------------------------------------------------------------------------------------------- resume
    def _restore_training_state(self, ckpt: dict) -> None:
        """Optimizer, scheduler, EMA, early-stop and step counters exactly as they were after the saved epoch."""
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema and ckpt.get("ema"):
            self.ema.ema.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
        if self.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("stopper"):
            self.stopper.load_state_dict(ckpt["stopper"])
        self.best_fitness = float(ckpt.get("best_fitness", 0.0))
        self.last_opt_step = int(ckpt.get("last_opt_step", -1))
        self.epoch = self.start_epoch
        LOGGER.info(f"Resuming training from {self.opt.weights} from epoch {self.start_epoch} to {self.epochs} total")

    def _restore_rng(self) -> None:
        """Last thing before the loop: the next random draw is the one the interrupted run would have made."""
        state = (self._resume_ckpt or {}).get("rng")
        if state and self.main:  # other DDP ranks keep their own rank-seeded streams
            set_rng_state(state, self.train_loader.batch_sampler.generator)
        self._resume_ckpt = None  # free the memory (weights, optimizer state)

    # ---------------------------------------------------------------------------------------------- train
    def fit(self) -> dict:
        """Run epochs start_epoch..epochs-1, validate and save each, then validate best.pt with plots."""
        if not hasattr(self, "model"):
            self.setup()
        self.nb = len(self.train_loader)
        self.nw = max(round(self.hyp["warmup_epochs"] * self.nb), 100)  # warm-up iterations; -1 disables
        self.callbacks.on_train_start(self)
        if self.resume and self.start_epoch >= self.epochs:
            raise CheckpointError(f"{self.opt.weights}: training to {self.epochs} epochs is finished, "
                                  f"nothing to resume")
        self._truncate_results()
        self._restore_rng()
        try:
            with retained_heap():  # no page faults re-fetching freed activations every step
                self._run_epochs()
                if self.main:
                    self.final_eval()
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"resume with: python train.py --resume {shlex.quote(str(self.last))}"
                                      if self.last.is_file() else "no checkpoint was saved yet; rerun the command") \
                from None
        self.callbacks.on_train_end(self)
        return self.results

    def _run_epochs(self) -> None:
        """Train, then (main process) validate and save, epoch by epoch until done or stopped early."""
        t0 = time.time()
        LOGGER.info(f"Image sizes {self.imgsz} train, {self.imgsz} val\n"
                    f"Using {self.train_loader.num_workers} dataloader workers\n"
                    f"Logging results to {self.save_dir}\nStarting training for {self.epochs} epochs...")
        self.epoch = self.start_epoch
        while self.epoch < self.epochs and not self.stop:
            self.train_epoch()
            if self.main:
                self.validate()
                self.save_model()
            self._sync_stop()
            self.epoch += 1
        if self.main:
            LOGGER.info(f"\n{self.epoch - self.start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")

    def train_epoch(self) -> None:
        """One pass over the train loader with warm-up, accumulation to 64 images, AMP and EMA."""
        self.model.train()
        self.callbacks.on_train_epoch_start(self)
        if self.local_rank != -1:
            self.train_loader.batch_sampler.set_epoch(self.epoch)
        self.mloss = torch.zeros(3, device=self.device)
        pbar = enumerate(self.train_loader)
        if self.main:
            LOGGER.info(("\n" + "%11s" * 7) % ("Epoch", "GPU_mem", *LOSS_NAMES, "Instances", "Size"))
            pbar = tqdm(pbar, total=self.nb, bar_format=TQDM_BAR_FORMAT)
        self.optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in pbar:
            self.batch_i, self.ni = i, i + self.nb * self.epoch
            self.imgs = imgs.to(self.device, non_blocking=True).float() / 255
            self.targets, self.paths = targets.to(self.device), paths
            self.callbacks.on_train_batch_start(self)
            self.train_step()
            self.mloss = (self.mloss * i + self.loss_items) / (i + 1)
            if self.main:
                pbar.set_description(self._progress())
                self._plot_batch()
            self.callbacks.on_train_batch_end(self)
        self.lr = [x["lr"] for x in self.optimizer.param_groups]  # for loggers
        if self.scheduler is not None:  # None: a callback drives the LR itself
            self.scheduler.step()
        self.callbacks.on_train_epoch_end(self)

    def train_step(self) -> None:
        """Forward, backward, and an optimizer step whenever `accumulate` batches have been summed."""
        self._warmup(self.ni)
        imgs = self._multi_scale(self.imgs) if self.opt.multi_scale else self.imgs
        imgs = imgs.contiguous(memory_format=self.memory_format)  # once here, not again in the first conv's backward
        if self.scaler.is_enabled() != self.amp:  # a hook switched AMP (e.g. off at QAT start)
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        with torch.autocast(self.device.type, enabled=self.amp):
            self.batch_input = imgs
            self.pred = self.model(imgs)
            self.loss, self.loss_items = self.compute_loss(self.pred, self.targets)
            self.callbacks.on_loss(self)
            if self.world_size > 1 and self.local_rank != -1:
                self.loss = self.loss * self.world_size  # DDP averages gradients over ranks; Ultralytics sums them
        loss = self.loss
        self._check_finite_loss()
        self.scaler.scale(loss).backward()
        self.pred = self.batch_input = None  # outputs are not kept past the step
        if self.ni - self.last_opt_step >= self.accumulate:
            self.optimizer_step()

    def _check_finite_loss(self) -> None:
        """A NaN/inf loss would poison the weights at the next step: stop now, before backward, naming the part."""
        if bool(torch.isfinite(self.loss_items).all()) and bool(torch.isfinite(self.loss).all()):
            return
        bad = [n for n, v in zip(LOSS_NAMES, self.loss_items.tolist()) if not math.isfinite(v)] or ["total loss"]
        raise TrainingDiverged(f"epoch {self.epoch} batch {self.batch_i}: {', '.join(bad)} is not finite "
                               f"({', '.join(f'{n}={v:.4g}' for n, v in zip(LOSS_NAMES, self.loss_items.tolist()))}); "
                               f"training stopped, {self._kept()}; lower --hyp lr0 or check the labels")

    def _kept(self) -> str:
        """Where the last finite checkpoint is, for the divergence message."""
        return f"last finite checkpoint kept: {self.last}" if self.last.is_file() else "no checkpoint was saved yet"

    def optimizer_step(self) -> None:
        """Unscale and clip gradients, step, then update the EMA (hooks around the step for pruning masks)."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.callbacks.on_before_optimizer_step(self)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.callbacks.on_after_optimizer_step(self)
        if self.ema:
            self.ema.update(self.model)
        self.last_opt_step = self.ni

    def _warmup(self, ni: int) -> None:
        """First nw iterations: accumulate 1 -> 64/bs, bias LR warmup_bias_lr -> lr, other LRs 0 -> lr, momentum up."""
        if ni > self.nw:
            return
        xi = [0, self.nw]
        self.accumulate = max(1, int(np.interp(ni, xi, [1, NBS / self.batch_size]).round()))
        for j, x in enumerate(self.optimizer.param_groups):
            start = self.hyp["warmup_bias_lr"] if j == 0 else 0.0
            x["lr"] = float(np.interp(ni, xi, [start, x["initial_lr"] * self.lf(self.epoch)]))  # float: weights_only
            if "momentum" in x:
                x["momentum"] = float(np.interp(ni, xi, [self.hyp["warmup_momentum"], self.hyp["momentum"]]))

    def _multi_scale(self, imgs: torch.Tensor) -> torch.Tensor:
        """--multi-scale: a random size in [0.5, 1.5] x imgsz (multiple of the grid) per batch."""
        sz = random.randrange(int(self.imgsz * 0.5), int(self.imgsz * 1.5) + self.gs) // self.gs * self.gs
        sf = sz / max(imgs.shape[2:])
        if sf == 1:
            return imgs
        ns = [math.ceil(x * sf / self.gs) * self.gs for x in imgs.shape[2:]]
        return nn.functional.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)

    def _progress(self) -> str:
        mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
        return ("%11s" * 2 + "%11.4g" * 5) % (f"{self.epoch}/{self.epochs - 1}", mem, *self.mloss,
                                              self.targets.shape[0], self.imgs.shape[-1])

    def _plot_batch(self) -> None:
        """train_batch0-2.jpg: the first mosaics, to eyeball augmentation and labels."""
        if not self.plots or self.ni >= 3 or self.resume:
            return
        try:
            from utils.plots import plot_images  # matplotlib only when plotting
            plot_images(self.imgs, self.targets, self.paths, self.save_dir / f"train_batch{self.ni}.jpg")
        except Exception as e:
            LOGGER.warning(f"WARNING ⚠️ train batch plot failed: {e}")

    def _sync_stop(self) -> None:
        """Early stopping is decided on rank 0; every DDP rank must leave the loop together."""
        if self.world_size > 1 and self.local_rank != -1:
            flag = [self.stop if self.rank == 0 else None]
            dist.broadcast_object_list(flag, 0)
            self.stop = bool(flag[0])

    # -------------------------------------------------------------------------------------------- validate
    def eval_model(self) -> nn.Module:
        """What validation and checkpoints use: the EMA weights, or the raw model when a hook disabled EMA."""
        if self.ema:
            self.ema.update_attr(self.model)
            return self.ema.ema
        return de_parallel(self.model)

    def validate(self) -> dict:
        """Val metrics of the EMA model (skipped with --noval except on the final epoch), then the csv row."""
        final_epoch = self.epoch + 1 >= self.epochs or self.stopper.possible_stop
        if not self.opt.noval or final_epoch:
            self.results = self._evaluate(self.eval_model(), plots=False)
            self.model.train()
        r = self.results or {}
        fi = float(fitness(np.array([[r.get(k, 0.0) for k in ("precision", "recall", "map50", "map")]]))[0])
        self.stop = self.stopper(epoch=self.epoch, fitness=fi)
        self.fitness = fi
        if fi > self.best_fitness:
            self.best_fitness = fi
        self.metrics = self._metrics_row(r)
        self.callbacks.on_fit_epoch_end(self, self.metrics)
        self._write_results(self.metrics)
        return self.metrics

    def _evaluate(self, model: nn.Module, plots: bool = False, iou_thres: float = 0.6, verbose: bool = False) -> dict:
        """utils.evaluate on the val loader (model in eval mode), with the val losses the csv logs."""
        model.eval()
        return evaluate(model, self.val_loader, self.names, conf_thres=0.001, iou_thres=iou_thres, max_det=300,
                        compute_loss=self.compute_loss, plots=plots, save_dir=self.save_dir,
                        single_cls=self.single_cls, verbose=verbose)

    def _metrics_row(self, r: dict) -> dict:
        vals = [*self.mloss.tolist(), r.get("precision", 0.0), r.get("recall", 0.0), r.get("map50", 0.0),
                r.get("map", 0.0), *list(r.get("loss", (0.0, 0.0, 0.0))), *self.lr,
                global_sparsity(de_parallel(self.model))]
        return {"epoch": self.epoch, **{k: float(v) for k, v in zip(RESULT_KEYS, vals)}}

    def _write_results(self, row: dict) -> None:
        """Append one Ultralytics-formatted row (%20s header, %20.5g values) to results.csv."""
        header = "" if self.csv.exists() else ",".join(f"{k:>20s}" for k in row) + "\n"
        with open(self.csv, "a") as f:
            f.write(header + ",".join(f"{v:>20.5g}" for v in row.values()) + "\n")

    def _truncate_results(self) -> None:
        """On resume drop csv rows of epochs that will be re-run (a kill can land between csv write and save)."""
        if self.main and self.resume:
            drop_rows_from_epoch(self.csv, self.start_epoch)

    # ------------------------------------------------------------------------------------------------ save
    def checkpoint_state(self) -> dict:
        """Everything beyond the weights that resume needs, as weights_only-safe values."""
        raw = de_parallel(self.model)
        return {
            "epoch": self.epoch, "best_fitness": float(self.best_fitness), "fitness": float(self.fitness),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "train_model": {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()} if self.ema else None,
            "last_opt_step": int(self.last_opt_step), "stopper": self.stopper.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_state(self.train_loader.batch_sampler.generator),
            "opt": plain(vars(self.opt)), "hyp": plain(self.opt.hyp), "results": dict(self.metrics),
            "callbacks": self.callbacks.state_dict(),
        }

    def save_model(self) -> None:
        """last.pt every epoch, best.pt on a new best fitness, epochN.pt every --save-period epochs."""
        final_epoch = self.epoch + 1 >= self.epochs
        if self.opt.nosave and not final_epoch:
            return
        ckpt = self.checkpoint_state()
        self.callbacks.on_model_save(self, ckpt)
        model = self.eval_model()
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # never replace a good last.pt by NaN
            raise TrainingDiverged(f"epoch {self.epoch}: the weights are not finite after training; not saved, "
                                   f"{self._kept()}; lower --hyp lr0 or check the labels")
        with defer_sigint():  # Ctrl-C while writing: finish the files, then stop with the resume command
            if self.best_fitness == self.fitness:  # last.pt goes last: --resume trusts it, so its implications exist
                save_checkpoint(self.best, model, **ckpt)
            period = int(getattr(self.opt, "save_period", -1))
            if period > 0 and self.epoch % period == 0:
                save_checkpoint(self.wdir / f"epoch{self.epoch}.pt", model, **ckpt)
            save_checkpoint(self.last, model, **ckpt)

    def final_eval(self) -> None:
        """Strip training state from last/best, validate best.pt with PR/F1 curves and confusion matrix, plot csv."""
        if self.plots and self.csv.exists():  # drawn by another process while best.pt is validated
            from utils.plots import BackgroundPlots, plot_results  # matplotlib only when plotting
            self.background_plots = self.background_plots or BackgroundPlots()
            self.background_plots.run(plot_results, self.csv)
        for f in (self.last, self.best):
            if f.exists():
                strip_training_state(f)
        if self.best.exists():
            LOGGER.info(f"\nValidating {self.best}...")
            is_coco = str(self.data.get("val", "")).endswith(f"coco{os.sep}val2017.txt")
            model = load_model(self.best, device=self.device, fuse=True)  # fused, as Ultralytics' final val
            model.to(memory_format=self.memory_format)
            self.results = self._evaluate(model, plots=self.plots, iou_thres=0.65 if is_coco else 0.60, verbose=True)
        if self.background_plots is not None:
            self.background_plots.join()
        LOGGER.info(f"Results saved to {self.save_dir}")


def drop_rows_from_epoch(csv: Path, epoch: int) -> None:
    """Keep the header and the rows (epoch in column 0) before `epoch`: a resumed run writes the later ones again."""
    if not csv.exists():
        return
    lines = csv.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[0]) < epoch]
    csv.write_text("".join(keep))


def strip_training_state(path: str | Path) -> None:
    """A finished run's file: weights (fp16 where exact, see compact_state_dict) + metadata, no resume-only state.

    Callback state keeps its small values (phase, schedule) but not its tensors: the pruning masks SparseML stores
    there are the zeros of the weights and doubled the file; loading derives them again from the weights.
    """
    ckpt = load_checkpoint(path)
    for k in TRAINING_STATE_KEYS:
        ckpt.pop(k, None)
    ckpt["model"] = compact_state_dict(ckpt["model"])
    if ckpt.get("callbacks"):
        ckpt["callbacks"] = drop_tensors(ckpt["callbacks"])
    atomic_save(ckpt, path)
    LOGGER.info(f"Optimizer stripped from {path}, {Path(path).stat().st_size / 1e6:.1f}MB")


def warn_dense_new_layers(source: dict, transferred: dict, model: nn.Module) -> list[str]:
    """Sparse transfer to another class count: the new Detect head starts dense, so global sparsity drops. Say so,
    with the numbers, instead of letting a 50%-sparse checkpoint quietly train as a 49%-sparse one."""
    new = [k for k, p in prunable_parameters(model).items() if k not in transferred]
    sparse_src = [v for k, v in source.items() if k.endswith("weight") and v.dim() == 4]
    zeros = sum(int((v == 0).sum()) for v in sparse_src) / max(sum(v.numel() for v in sparse_src), 1)
    if new and zeros >= 0.05:
        LOGGER.warning(f"WARNING ⚠️ {len(new)} prunable layers did not transfer (e.g. {new[0]}: new class count) and "
                       f"start DENSE, while the checkpoint's conv weights are {zeros:.1%} zeros: global sparsity "
                       f"is now {global_sparsity(model):.3f}. To prune them too, use a recipe whose pruning modifier "
                       f"covers them (params: __ALL_PRUNABLE__), e.g. recipes/yolov5n.pruned.yaml")
    return new
