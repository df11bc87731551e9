"""One-shot channel pruning for the scripts: export.py --channel-prune and val.py --channel-prune."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from torch import nn

from .allocate import ALLOCATIONS
from .importance import IMPORTANCE
from .prune import channel_prune

LOGGER = logging.getLogger("yolov5-sparse")
Step = Callable[[nn.Module], str]  # export_weights' prune hook: prunes in place, returns a file-name tag


def _check(fraction: float, importance: str, allocation: str = "global") -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--channel-prune is the fraction of conv FLOPs to remove, in (0, 1); got {fraction}")
    if importance not in IMPORTANCE:
        raise ValueError(f"--channel-importance must be one of {', '.join(IMPORTANCE)}; got {importance!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"--channel-allocation must be one of {', '.join(ALLOCATIONS)}; got {allocation!r}")


def prune_loaded(model: nn.Module, fraction: float, importance: str = "bn", data: dict | str | None = None,
                 imgsz: int = 640, calib_images: int = 128, allocation: str = "global") -> dict:
    """Prune an unfused model in place; with a dataset, refit on its images (and rank by Taylor on its labels)."""
    _check(fraction, importance, allocation)
    images = labelled = loss_fn = None
    if data:
        from utils.sparsity.pipeline import calibration_for
        images = calibration_for(data, imgsz, calib_images, 8)
    else:
        LOGGER.warning("WARNING ⚠️ channel pruning without --data: no least-squares refit of the pruned layers; "
                       "one-shot accuracy will be far lower (pass --data your.yaml to calibrate)")
    if importance == "taylor":
        if not data:
            raise ValueError("--channel-importance taylor needs labelled images: pass --data your_dataset.yaml")
        labelled, loss_fn = _labelled(model, data, imgsz, calib_images)
    return channel_prune(model, flops_target=fraction, importance=importance, allocation=allocation, images=images,
                         labelled=labelled, loss_fn=loss_fn, imgsz=imgsz)


def _labelled(model: nn.Module, data: dict | str, imgsz: int, n: int) -> tuple[list, Callable]:
    """Labelled train batches and the training loss (default hyperparameters) for Taylor importance."""
    from utils.data_config import check_dataset
    from utils.dataloaders import create_dataloader
    from utils.loss import ComputeLoss
    from utils.trainer import load_hyp

    d = data if isinstance(data, dict) else check_dataset(str(data))
    loader, _ = create_dataloader(d["train"], imgsz, 8, 32, workers=0, prefix="taylor: ", nc=len(d["names"]))
    batches = []
    for imgs, targets, _, _ in loader:
        batches.append((imgs.float() / 255, targets))
        if len(batches) * 8 >= n:
            break
    if not getattr(model, "hyp", None):
        model.hyp = load_hyp(Path(__file__).resolve().parents[3] / "data/hyps/hyp.scratch-low.yaml")
    return batches, ComputeLoss(model)


def channel_export_step(fraction: float, importance: str, data: str | None, imgsz: int, calib_images: int,
                        weights: str | Path, then: Step | None = None, allocation: str = "global") -> Step:
    """export.py --channel-prune: prune the loaded model, save it as <stem>_cp50.pt too, run `then` (--sparsity)."""
    _check(fraction, importance, allocation)

    def step(model: nn.Module) -> str:
        from utils.checkpoint import save_checkpoint
        from utils.export_onnx import output_path

        prune_loaded(model, fraction, importance, data, imgsz, calib_images, allocation)
        tag = f"_cp{round(fraction * 100)}"
        weights_path = Path(weights)
        pt = output_path(weights_path.with_name(f"{weights_path.stem}{tag}.pt"), suffix=".pt", log=LOGGER.info)
        meta = {k: v for k, v in (getattr(model, "checkpoint_meta", None) or {}).items()
                if k in ("names", "epoch")}
        save_checkpoint(pt, model, **meta)
        LOGGER.info(f"export: channel-pruned checkpoint {pt} (fine-tune it with train.py --weights {pt})")
        return tag + (then(model) if then else "")

    return step


def pruned_model(weights: str | Path, fraction: float, importance: str, data: dict | str | None, imgsz: int,
                 calib_images: int, allocation: str = "global") -> nn.Module:
    """val.py --channel-prune: the checkpoint, pruned one-shot, ready for any engine wrapper."""
    from utils.checkpoint import load_model

    if str(weights).endswith((".onnx", ".xml")) or Path(weights).is_dir():
        raise ValueError(f"--channel-prune needs a PyTorch checkpoint (.pt), not {weights}")
    model = load_model(weights)
    prune_loaded(model, fraction, importance, data, imgsz, calib_images, allocation)
    return model.eval()
