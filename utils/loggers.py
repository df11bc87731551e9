"""Training loggers: TensorBoard events (losses, metrics, LR, sparsity) and sparsity.csv, fed by the trainer's hooks.

TensorBoard is what Ultralytics YOLOv5 and SparseML log to (`tensorboard --logdir runs/train`); it is optional here.
Per-layer sparsity also goes to sparsity.csv in the run folder, readable without any tool installed.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.callbacks import Callback
from utils.logger import LOGGER
from utils.sparsity.measure import layer_sparsity_table
from utils.torch_utils import de_parallel
from utils.trainer import drop_rows_from_epoch

try:  # optional: TensorBoard events only when the tensorboard package is installed (requirements.txt pins it)
    from torch.utils.tensorboard import SummaryWriter
except ImportError:
    SummaryWriter = None

if TYPE_CHECKING:
    from utils.trainer import Trainer

SPARSITY_CSV = "sparsity.csv"
SPARSITY_COLUMNS = ("epoch", "layer", "params", "sparsity")
GLOBAL_ROW = "all_prunable"  # the `layer` of the row with the global sparsity (same number as sparsity/global)
LAYER_TAG = "layer_sparsity/"  # TensorBoard tag prefix of per-layer sparsity, followed by the parameter name


def sparsity_rows(model: Any, epoch: int) -> list[tuple[int, str, int, float]]:
    """One (epoch, layer, params, sparsity) row per prunable weight plus the global row, as SparseML logs per layer."""
    table = layer_sparsity_table(de_parallel(model))
    total = sum(n for _, _, n, _ in table)
    zeros = sum(n * s for _, _, n, s in table)
    rows = [(epoch, name, n, s) for name, _, n, s in table]
    return rows + [(epoch, GLOBAL_ROW, total, zeros / total if total else 0.0)]


class TrainLogger(Callback):
    """Per epoch: every results.csv value and per-layer sparsity to TensorBoard, per-layer sparsity to sparsity.csv."""

    name = "train_logger"

    def __init__(self, tensorboard: bool = True):
        self.use_tensorboard = tensorboard
        self.writer: Any = None
        self.csv: Path | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Open the writers on the main process; a resumed run drops the rows of epochs it trains again."""
        if not trainer.main:
            return
        self.csv = trainer.save_dir / SPARSITY_CSV
        if trainer.resume:
            drop_rows_from_epoch(self.csv, trainer.start_epoch)
        if self.use_tensorboard and SummaryWriter is None:
            LOGGER.info("TensorBoard: not installed (pip install -r requirements.txt); per-layer sparsity goes to "
                        f"{self.csv} only")
        elif self.use_tensorboard:
            self.writer = SummaryWriter(str(trainer.save_dir))
            LOGGER.info(f"TensorBoard: start with 'tensorboard --logdir {trainer.save_dir.parent}', "
                        f"view at http://localhost:6006/")

    def on_fit_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        rows = sparsity_rows(trainer.model, int(metrics["epoch"]))
        self._write_csv(rows)
        if self.writer is not None:
            self._write_events(metrics, rows)

    def _write_csv(self, rows: list[tuple[int, str, int, float]]) -> None:
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(SPARSITY_COLUMNS)
            w.writerows((e, name, n, f"{s:.6f}") for e, name, n, s in rows)

    def _write_events(self, metrics: dict, rows: list[tuple[int, str, int, float]]) -> None:
        """Flushed every epoch: a killed run keeps what it logged."""
        epoch = int(metrics["epoch"])
        for k, v in metrics.items():
            if k != "epoch":
                self.writer.add_scalar(k, v, epoch)
        for _, name, _, s in rows[:-1]:  # the global row is metrics' sparsity/global already
            self.writer.add_scalar(LAYER_TAG + name, s, epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
