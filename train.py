"""Train a YOLOv5 model on a detection dataset (Ultralytics v7.0 flags, run folders and outputs).

Usage:
    python train.py --data coco128.yaml --weights yolov5n.pt --img 640          # fine-tune pretrained weights
    python train.py --data coco128.yaml --weights '' --cfg yolov5n.yaml         # from scratch
    python train.py --resume                                                    # continue the latest run
    python train.py --resume runs/train/exp3/weights/last.pt                    # continue a given run
    torchrun --nproc_per_node 2 train.py --data coco128.yaml --weights yolov5n.pt --batch-size 32   # DDP

Outputs in runs/train/exp*: weights/last.pt and best.pt, results.csv/png, hyp.yaml, opt.yaml, labels.jpg,
train_batch*.jpg, PR/F1 curves and confusion matrix of best.pt.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.callbacks import Callback  # noqa: E402
from utils.cli import check_options  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils.sparsity.zoo import weights_path  # noqa: E402
from utils.data_config import DatasetError  # noqa: E402
from utils.loggers import TrainLogger  # noqa: E402
from utils.train_utils import increment_path, latest_run  # noqa: E402
from utils.sparsity.channel.training import ChannelLayoutCallback  # noqa: E402
from utils.sparsity.distillation import DistillationCallback  # noqa: E402
from utils.sparsity.manager import SparseStartWarning, SparsificationCallback  # noqa: E402
from utils.sparsity.recipes import RecipeError, load_recipe  # noqa: E402
from utils.trainer import Trainer, TrainConfigError  # noqa: E402

LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))


def parse_opt(known: bool = False, args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train YOLOv5 (Ultralytics v7.0 compatible)")
    parser.add_argument("--weights", type=str, default="yolov5s.pt", help="initial weights path ('' = scratch)")
    parser.add_argument("--cfg", type=str, default="", help="model.yaml path")
    parser.add_argument("--data", type=str, default="coco128.yaml", help="dataset.yaml path")
    parser.add_argument("--allow-download-code", action="store_true",
                        help="let a data yaml's Python 'download:' snippet run if the dataset is missing (else refused)")
    parser.add_argument("--hyp", type=str, default=str(ROOT / "data/hyps/hyp.scratch-low.yaml"), help="hyperparameters")
    parser.add_argument("--epochs", type=int, default=100, help="total training epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="total batch size for all processes")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    parser.add_argument("--rect", action="store_true", help="rectangular training")
    parser.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent (or given) last.pt")
    parser.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    parser.add_argument("--noval", action="store_true", help="only validate final epoch")
    parser.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    parser.add_argument("--noplots", action="store_true", help="save no plot files")
    parser.add_argument("--cache", type=str, nargs="?", const="ram", help="image --cache ram/disk")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    parser.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    parser.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD", help="optimizer")
    parser.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode on GPUs")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers (per RANK in DDP mode)")
    parser.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    parser.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    parser.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    parser.add_argument("--save-period", type=int, default=-1, help="save checkpoint every x epochs (disabled if < 1)")
    parser.add_argument("--seed", type=int, default=0, help="global training seed")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="automatic DDP Multi-GPU argument")
    parser.add_argument("--recipe", type=str, default=None, help="SparseML recipe: .yaml/.md path, zoo: stub or YAML text")
    parser.add_argument("--recipe-args", type=str, default=None, help="json/yaml dict overriding recipe variables")
    parser.add_argument("--teacher-weights", type=str, default="",
                        help="dense trained .pt to distil from (the recipe's DistillationModifier sets when and how "
                             "much; without one the whole run distils, hardness 0.5, temperature 2)")
    return parser.parse_known_args(args)[0] if known else parser.parse_args(args)


def resume_options(opt: argparse.Namespace) -> argparse.Namespace:
    """Options of the run being resumed (its opt.yaml, else the checkpoint's copy), pointed at its last.pt."""
    last = Path(opt.resume if isinstance(opt.resume, str) else latest_run(opt.project))
    if not last.is_file():
        where = opt.resume if isinstance(opt.resume, str) else f"{opt.project}/**/last*.pt"
        raise TrainConfigError(f"--resume: no checkpoint found at {where}; pass the path of a run's weights/last.pt")
    opt_yaml = last.parent.parent / "opt.yaml"
    if opt_yaml.is_file():
        with open(opt_yaml, errors="ignore") as f:
            d = yaml.safe_load(f)
    else:
        d = load_checkpoint(last).get("opt") or {}
    if not d:
        raise TrainConfigError(f"--resume: {opt_yaml} missing and {last} holds no options; cannot resume this run")
    new = argparse.Namespace(**{**vars(parse_opt(True, [])), **d})
    new.cfg, new.weights, new.resume = "", str(last), True
    new.save_dir = d.get("save_dir") or str(last.parent.parent)
    return new


def _resolve(path: str, base: Path = ROOT) -> str:
    """Absolute path when the file exists here or under the repo (so opt.yaml works from any cwd)."""
    if not path:
        return path
    for p in (Path(path), base / path):
        if p.exists():
            return str(p.resolve())
    return path


def new_run_options(opt: argparse.Namespace) -> argparse.Namespace:
    """Check the model source and resolve paths; save_dir counts up runs/train/exp, exp2, ..."""
    if not opt.cfg and not opt.weights:
        raise TrainConfigError("either --cfg or --weights must be given (e.g. --weights yolov5n.pt)")
    opt.weights = weights_path(opt.weights)  # zoo: stub -> mirror/SparseZoo checkpoint
    opt.data, opt.hyp, opt.cfg, opt.weights = (_resolve(str(x)) for x in (opt.data, opt.hyp, opt.cfg, opt.weights))
    if opt.weights and not Path(opt.weights).is_file():
        raise TrainConfigError(f"--weights {opt.weights}: file not found; download an official release checkpoint "
                               f"(https://github.com/ultralytics/yolov5/releases) or pass '' with --cfg")
    opt.project = str(opt.project)
    opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    return opt


def init_distributed(opt: argparse.Namespace) -> None:
    """torchrun: one process per device; NCCL on GPUs, gloo on CPU. Rank 0 decides save_dir for all."""
    if LOCAL_RANK == -1:
        return
    cuda = torch.cuda.is_available() and str(opt.device) != "cpu"
    if opt.batch_size % WORLD_SIZE:
        raise TrainConfigError(f"--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE={WORLD_SIZE}")
    if cuda:
        torch.cuda.set_device(LOCAL_RANK)
    else:  # share the CPU cores instead of every process using all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORLD_SIZE))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    box = [opt.save_dir]
    dist.broadcast_object_list(box, 0)
    opt.save_dir = box[0]


def sparsification_callbacks(opt: argparse.Namespace) -> list[Callback]:
    """--recipe: check it now (before data and model are built), then run it through the trainer's hooks;
    --teacher-weights: distillation, scheduled by the recipe's DistillationModifier when it has one."""
    teacher = getattr(opt, "teacher_weights", "") or ""
    if teacher:
        opt.teacher_weights = teacher = _resolve(teacher)
        if not Path(teacher).is_file():
            raise TrainConfigError(f"--teacher-weights {teacher}: file not found; pass a dense .pt trained on --data")
    if not getattr(opt, "recipe", None):
        # a sparse checkpoint without a recipe: its zeros fill in, so say so
        return [SparseStartWarning()] + ([DistillationCallback(teacher)] if teacher else [])
    if "\n" not in str(opt.recipe) and not str(opt.recipe).startswith("zoo:"):
        opt.recipe = _resolve(str(opt.recipe))
    load_recipe(opt.recipe, opt.recipe_args)  # RecipeError names recipe, modifier and field
    recipe = SparsificationCallback(opt.recipe, opt.recipe_args)
    return [recipe, DistillationCallback(teacher, recipe)]


def main(opt: argparse.Namespace, callbacks: list[Callback] | None = None) -> dict:
    """Resolve options (or those of the run being resumed), then set up and fit one Trainer."""
    logging.basicConfig(format="%(message)s", level=logging.INFO if RANK in (-1, 0) else logging.WARNING)
    check_options(imgsz=opt.imgsz, threads=opt.threads)  # --device is checked by the trainer before its run folder
    threads = opt.threads  # a setting of this machine, not of the run: --resume keeps the one given now
    opt = resume_options(opt) if opt.resume else new_run_options(opt)
    opt.threads = threads
    init_distributed(opt)
    if opt.threads:  # after init_distributed, whose per-process share of the cores it overrides
        torch.set_num_threads(opt.threads)
    # a channel-pruned checkpoint is rebuilt at its own widths before its weights load (no-op for any other)
    # the logger goes last: it sees what the recipe callback adds to each epoch's metrics (x/phase)
    callbacks = list(callbacks or []) + [ChannelLayoutCallback()] + sparsification_callbacks(opt) + [TrainLogger()]
    try:
        return Trainer(opt, opt.hyp, callbacks).setup().fit()
    finally:
        if LOCAL_RANK != -1 and dist.is_initialized():
            dist.destroy_process_group()


def run(**kwargs) -> dict:
    """Python entry: run(data='coco128.yaml', weights='yolov5n.pt', imgsz=320, epochs=3) -> final metrics."""
    opt = parse_opt(True, [])
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt)


if __name__ == "__main__":
    from utils.cli import exit_on_interrupt, exit_on_user_error

    with exit_on_interrupt(), exit_on_user_error(code=1):  # also: read-only --project, full disk -> one line
        main(parse_opt())
