"""What val.py writes besides the table: metrics.json, label txts, COCO json + pycocotools, and sparsity sweeps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from utils.boxes import xyxy2xywh
from utils.files import LOGGER


def model_sparsity(eng) -> str:
    """Sparsity header for torch models; exported files carry it in their metadata."""
    if eng.name == "torch":
        from utils.sparsity.sweep import sparsity_header

        return sparsity_header(eng.model)
    meta = getattr(eng, "metadata", {}) or {}
    value = meta.get("sparsity")
    return f"Global sparsity: {value} of prunable weights (from {Path(eng.file).name} metadata)" if value is not None \
        else "Global sparsity: unknown (no 'sparsity' in the model metadata; re-export with export.py)"


def save_predictions(predictions: list, dataset, save_dir: Path, save_txt: bool, save_conf: bool,
                     save_json: bool, weights: str) -> dict:
    """labels/*.txt (normalized xywh) and/or COCO json + pycocotools mAP for any dataset."""
    out: dict = {}
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
        for path, (h, w), predn in predictions:
            gn = np.array([w, h, w, h])
            rows = [(int(c), *(xyxy2xywh(np.array([b]))[0] / gn), cf) for *b, cf, c in predn.tolist()]
            fmt = (lambda r: ("%g " * 6).rstrip() % r) if save_conf else (lambda r: ("%g " * 5).rstrip() % r[:5])
            (save_dir / "labels" / f"{Path(path).stem}.txt").write_text("".join(fmt(r) + "\n" for r in rows))
    if save_json:
        from utils.coco_eval import coco_map, ground_truth_json, predictions_json

        dataset.names = getattr(dataset, "names", None)
        pred_file = predictions_json(predictions, dataset, save_dir / f"{Path(weights).stem}_predictions.json")
        gt_file = ground_truth_json(dataset, save_dir / "ground_truth.json")
        LOGGER.info(f"\nEvaluating pycocotools mAP... saving {pred_file}...")
        out["coco_map"], out["coco_map50"] = coco_map(gt_file, pred_file)
    return out


def save_metrics(res: dict, eng, save_dir: Path, extra: dict) -> dict:
    """metrics.json in the run folder: numbers a script or CI can read back."""
    from utils.sparsity.measure import all_param_sparsity, global_sparsity

    metrics = {k: res[k] for k in ("precision", "recall", "map50", "map", "images", "instances")}
    metrics.update({k: res[k] for k in ("coco_map", "coco_map50") if k in res})
    metrics["speed_ms"] = dict(zip(("pre", "inference", "nms"), res["speed"]))
    if eng.name == "torch":
        metrics["sparsity"] = global_sparsity(eng.model)
        metrics["sparsity_all_params"] = all_param_sparsity(eng.model)
    metrics["engine"] = eng.info()
    metrics.update(extra)
    (save_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def _one_shots(methods: list[str], calib_batches: int, mask_type: str, table_file: str | None) -> list:
    """Parsed --prune-method specs; --calib-batches turns BN re-calibration on for all of them (old behaviour)."""
    from utils.sparsity.pipeline import OneShot
    from utils.sparsity.sensitivity import read_table, table_from_rows

    table = table_from_rows(read_table(table_file)) if table_file else None
    shots = []
    for spec in methods:
        shot = OneShot.parse(spec, block4=mask_type == "block4" and spec.startswith("obc"), table=table)
        if calib_batches:
            shot.recal, shot.recal_batches = True, calib_batches
        shots.append(shot)
    return shots


def run_sweep(eng, loader, names: list[str], levels: list[float], methods: list[str], calib_batches: int,
              save_dir: Path, data: dict | str | None = None, imgsz: int = 640, calib_images: int = 128,
              mask_type: str = "unstructured", sensitivity_table: str | None = None, **eval_kw) -> dict:
    """--sparsity: table per method, sparsity_map.csv/png; needs the torch engine (pruning edits weights)."""
    from utils.evaluate import evaluate
    from utils.sparsity.pipeline import calibration_for, sensitivity_table as measure_table, sweep_methods
    from utils.sparsity.sweep import format_table, save_sweep, write_csv

    if eng.name != "torch":
        raise ValueError(f"--sparsity prunes weights and needs a .pt model; {eng.file} runs on {eng.name}")
    from utils.checkpoint import load_model

    model = load_model(eng.file)  # unfused: BN stays separate so it can be re-calibrated after pruning
    shots = _one_shots(methods, calib_batches, mask_type, sensitivity_table)
    calibration = calibration_for(data, imgsz, calib_images) if any(s.needs_calibration() for s in shots) else []
    table = next((s.table for s in shots if s.table is not None), None)
    if table is None and any(s.method == "obc" for s in shots):
        table = measure_table(model, calibration)  # once per sweep: every level and obc variant reuses it
    for shot in shots:
        shot.calibration, shot.table = calibration, shot.table or table
    results = sweep_methods(model, levels, lambda m: evaluate(m, loader, names, plots=False, **eval_kw), shots,
                            on_row=lambda res: write_csv(res, save_dir / "sparsity_map.csv"))
    for label, rows in results.items():
        LOGGER.info(f"\nmAP against global sparsity, one-shot '{label}'\n" + format_table(rows))
    csv_file, png = save_sweep(results, save_dir)
    LOGGER.info(f"\nSweep saved to {csv_file} and {png}")
    return results


def run_sensitivity(eng, data: dict | str, imgsz: int, save_dir: Path, levels: list[float] | None = None,
                    images: int = 16, recipe_sparsity: list[float] | None = None,
                    mask_type: str = "unstructured") -> list[dict]:
    """--sensitivity: sensitivity.csv/png, a per-layer summary, and recipe_sparsityNN.yaml per --recipe-sparsity."""
    from utils.sparsity.pipeline import calibration_for
    from utils.sparsity.sensitivity import DEFAULT_LEVELS, layer_sensitivity, plot_sensitivity, save_table

    if eng.name != "torch":
        raise ValueError(f"--sensitivity prunes weights and needs a .pt model; {eng.file} runs on {eng.name}")
    from utils.checkpoint import load_model

    model = load_model(eng.file)
    calibration = [torch.cat(calibration_for(data, imgsz, images))]  # one batch: fewer, larger forwards
    rows = layer_sensitivity(model, calibration, tuple(levels or DEFAULT_LEVELS))
    csv_file, png = save_table(rows, save_dir / "sensitivity.csv"), plot_sensitivity(rows, save_dir / "sensitivity.png")
    LOGGER.info(format_sensitivity(rows))
    for s in recipe_sparsity or []:
        recipe = write_sensitivity_recipe(model, rows, s, save_dir, mask_type, str(eng.file))
        LOGGER.info(f"Recipe for {s:.2f} global sparsity: {recipe}")
    LOGGER.info(f"Sensitivity saved to {csv_file} and {png}")
    return rows


def format_sensitivity(rows: list[dict]) -> str:
    """Per-layer line: size, then the head-distortion increase at each level (the table val.py prints)."""
    from utils.sparsity.sensitivity import table_from_rows

    table = table_from_rows(rows)
    levels = sorted({lv for t in table.values() for lv in t})
    sizes = {r["layer"]: r["numel"] for r in rows}
    head = "%-28s %9s" % ("layer", "weights") + "".join("%10s" % f"@{lv:.2f}" for lv in levels)
    lines = [head] + ["%-28s %9d" % (n.removesuffix(".weight"), sizes[n]) +
                      "".join("%10.5f" % t.get(lv, float("nan")) for lv in levels) for n, t in table.items()]
    return "\nPer-layer sensitivity (output distortion when only this layer is pruned)\n" + "\n".join(lines)


def write_sensitivity_recipe(model, rows: list[dict], sparsity: float, save_dir: Path, mask_type: str,
                             weights: str) -> Path:
    """Knapsack allocation of the global target over the measured table, written as per-layer GMP modifiers."""
    from utils.sparsity.allocation import sensitivity_allocation
    from utils.sparsity.measure import prunable_parameters
    from utils.sparsity.oneshot import split_targets, zeros_to_reach
    from utils.sparsity.recipe_writer import write_recipe
    from utils.sparsity.sensitivity import table_from_rows

    included, excluded = split_targets(model, None)
    counts = sensitivity_allocation(included, zeros_to_reach(included, excluded, sparsity), table_from_rows(rows))
    fractions = {n: counts[n] / included[n].numel() for n in included}
    sizes = {n: p.numel() for n, p in prunable_parameters(model).items()}
    return write_recipe(save_dir / f"recipe_sparsity{round(sparsity * 100)}.yaml", fractions, sizes,
                        mask_type=mask_type, source="knapsack over sensitivity.csv", weights=Path(weights).name)
