"""benchmark.py --data: validate the file each row timed, on the same engine and pre-processing, so speed and accuracy
come from one model; plus what every variant keeps of the dense model's mAP50 and its compressed size.

Each (variant, engine) is validated once, at batch 1 on the batch-1 file that row timed (square letterbox to the
benchmark size, as the timing loop does), with val.py's settings (conf 0.001, IoU 0.6, max 300 detections): the same
numbers `val.py --weights FILE --engine E --img S --batch-size 1 --no-rect` prints. Larger-batch rows reuse them.
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Any

from utils.cli import check_model_classes
from utils.data_config import check_dataset
from utils.engines.base import Engine
from utils.evaluate import evaluate, val_dataloader

from .variants import Variant

VAL_CONF, VAL_IOU, VAL_MAX_DET = 0.001, 0.6, 300
ACCURACY_KEYS = ("map50", "map50_95", "P", "R")


class AccuracyProbe:
    """mAP of each (variant, engine) on one dataset's val split, measured once and cached."""

    def __init__(self, data: str, imgsz: tuple[int, int], workers: int = 2, allow_download_code: bool = False):
        self.data_dict = check_dataset(data, allow_code=allow_download_code)
        self.data, self.imgsz, self.workers = data, imgsz, workers
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}  # variant names are unique (build_variants)
        self._loaders: dict[tuple[int, int], Any] = {}

    def _dataloader(self, size: tuple[int, int], stride: int) -> Any:
        """Square letterbox at the size the row was timed at (the timing loop's pre-processing)."""
        if size[0] != size[1]:
            raise ValueError(f"--data validates square inputs; this row ran at {size[0]}x{size[1]} (use --img S)")
        if size not in self._loaders:
            self._loaders[size], _ = val_dataloader(self.data_dict, "val", size[0], 1, stride, False, self.workers,
                                                    False)
        return self._loaders[size]

    def measure(self, v: Variant, engine: str, eng: Engine, size: tuple[int, int]) -> dict[str, Any]:
        """mAP50, mAP50-95, P and R of the batch-1 engine `eng` that runs variant v's file at `size`."""
        key = (v.name, engine)
        if key not in self._cache:
            check_model_classes(eng.names, self.data_dict, v.source or v.name)
            res = evaluate(eng.torch_module or eng, self._dataloader(tuple(size), eng.stride),
                           self.data_dict["names"], VAL_CONF, VAL_IOU, VAL_MAX_DET, prefix=f"{v.name} | {engine}: ")
            self._cache[key] = {"map50": res["map50"], "map50_95": res["map"], "P": res["precision"],
                                "R": res["recall"]}
        return dict(self._cache[key])

    def cached(self, v: Variant, engine: str) -> dict[str, Any] | None:
        hit = self._cache.get((v.name, engine))
        return dict(hit) if hit else None


def gzip_mb(path: Any) -> float | None:
    """Size of a model file (or an OpenVINO IR folder's .bin) after gzip -9: what sparsity saves on disk."""
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    if p.is_dir():  # an IR folder written by export.py holds one model
        p = next(iter(sorted(p.glob("*.bin"))), p)
    elif p.suffix == ".xml":
        p = p.with_suffix(".bin")
    if not p.is_file():
        return None
    with tempfile.TemporaryFile() as tmp:
        with open(p, "rb") as src, gzip.GzipFile(fileobj=tmp, mode="wb", compresslevel=9) as gz:
            shutil.copyfileobj(src, gz)
        return tmp.tell() / 1e6


def add_accuracy_ratios(rows: list[dict], engine: str, variant: str) -> str | None:
    """map50_kept = mAP50 over the baseline row's (same batch size, same model group first), as the speed ratio;
    a note when there is no baseline row with an mAP."""
    missing = False
    for row in rows:
        row["map50_kept"] = None
        if row.get("map50") is None:
            continue
        ref = [b for b in rows if b["engine"] == engine and variant in b["variant"] and b.get("map50")
               and b["batch_size"] == row["batch_size"]]
        ref.sort(key=lambda b: b["model"] != row["model"])
        if ref:
            row["map50_kept"] = row["map50"] / ref[0]["map50"]
        else:
            missing = True
    return (f"no '{engine}' + '{variant}' row with an mAP (is {engine} in --engines?): '% of dense' is blank"
            if missing else None)
