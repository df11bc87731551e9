"""What val.py writes besides the table: metrics.json, label txts, COCO json + pycocotools."""
from __future__ import annotations

import json
from pathlib import Path

from utils.coco_eval import (
    COCO_ANNOTATIONS,
    coco80_to_coco91_class,
    coco_map,
    ground_truth_json,
    is_coco,
    official_annotations,
    predictions_json,
)
from utils.detect_output import write_labels
from utils.logger import LOGGER
from utils.sparsity.measure import all_param_sparsity, global_sparsity
from utils.sparsity.sweep import sparsity_header


def model_sparsity(eng) -> str:
    """Sparsity header for torch models; exported files carry it in their metadata."""
    if eng.torch_module is not None:
        return sparsity_header(eng.torch_module)
    meta = getattr(eng, "metadata", {}) or {}
    value = meta.get("sparsity")
    return f"Global sparsity: {value} of prunable weights (from {Path(eng.file).name} metadata)" if value is not None \
        else "Global sparsity: unknown (no 'sparsity' in the model metadata; re-export with export.py)"


def save_predictions(predictions: list, dataset, save_dir: Path, save_txt: bool, save_conf: bool,
                     save_json: bool, weights: str, data: dict | None = None) -> dict:
    """labels/*.txt (normalized xywh) and/or COCO json + pycocotools mAP for any dataset."""
    out: dict = {}
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
        for path, shape, predn in predictions:
            write_labels(save_dir / "labels" / f"{Path(path).stem}.txt", predn.cpu().numpy(), shape, save_conf)
    if save_json:
        dataset.names = getattr(dataset, "names", None)
        coco = data is not None and is_coco(data)
        class_map = coco80_to_coco91_class() if coco else None  # COCO: official category ids, as Ultralytics
        pred_file = predictions_json(predictions, dataset, save_dir / f"{Path(weights).stem}_predictions.json",
                                     class_map)
        gt_file = official_annotations(data) if coco else None
        if gt_file is None:
            if coco:
                LOGGER.warning(f"WARNING ⚠️ {data['path']}: no {COCO_ANNOTATIONS}; scoring against ground truth "
                               "built from the YOLO labels (put the official file there to score as COCO does)")
            gt_file = ground_truth_json(dataset, save_dir / "ground_truth.json", class_map)
        LOGGER.info(f"\nEvaluating pycocotools mAP... saving {pred_file}... against {gt_file}")
        out["coco_map"], out["coco_map50"] = coco_map(gt_file, pred_file)
        out["coco_annotations"] = str(gt_file)
    return out


def save_metrics(res: dict, eng, save_dir: Path, extra: dict) -> dict:
    """metrics.json in the run folder: numbers a script or CI can read back."""
    metrics = {k: res[k] for k in ("precision", "recall", "map50", "map", "images", "instances")}
    metrics.update({k: res[k] for k in ("coco_map", "coco_map50", "coco_annotations") if k in res})
    metrics["speed_ms"] = dict(zip(("pre", "inference", "nms"), res["speed"]))
    if eng.torch_module is not None:
        metrics["sparsity"] = global_sparsity(eng.torch_module)
        metrics["sparsity_all_params"] = all_param_sparsity(eng.torch_module)
    metrics["engine"] = eng.info()
    metrics.update(extra)
    (save_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
