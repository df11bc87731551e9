"""Validate a YOLOv5 model on a detection dataset with any engine; optionally sweep one-shot sparsity levels.

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights yolov5n.onnx --engine deepsparse --data coco128.yaml
    python val.py --weights yolov5n.pt --data coco128.yaml --sparsity 0,0.1,0.2,0.3,0.4,0.5 --prune-method global layerwise
    python val.py --weights yolov5n.pt --data coco128.yaml --sparsity 0,0.3,0.5,0.7 --prune-method obc global+recal
    python val.py --weights yolov5n.pt --data coco128.yaml --sensitivity --recipe-sparsity 0.5 0.75
    python val.py --weights yolov5n.pt --data coco128.yaml --img 320 --channel-prune 0.3   # structured, one-shot
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.augmentations import check_img_size  # noqa: E402
from utils.checkpoint import resolve_weights  # noqa: E402
from utils.cli import check_model_classes, check_options, exit_on_user_error  # noqa: E402
from utils.data_config import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.evaluate import evaluate  # noqa: E402
from utils.files import LOGGER, increment_path, setup_logging  # noqa: E402
from utils.sparsity.channel.allocate import ALLOCATIONS  # noqa: E402
from utils.sparsity.pipeline import METHOD_CHOICES  # noqa: E402
from utils.val_outputs import model_sparsity, save_metrics, save_predictions  # noqa: E402


def _dataloader(data: dict, task: str, imgsz: int, batch_size: int, stride: int, rect: bool, workers: int,
                single_cls: bool):
    """Ultralytics val loader: rectangular batches (pad 0.5) for dynamic engines, square for fixed-shape ones."""
    split = task if task in ("train", "val", "test") else "val"
    if split not in data:
        raise ValueError(f"dataset has no '{split}' split; add '{split}:' to the data yaml or use --task val")
    pad = 0.0 if task == "speed" else 0.5
    return create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect and task != "speed",
                             workers=workers, prefix=f"{split}: ", nc=len(data["names"]))


def run(data: str = "data/coco128.yaml", weights: str = "yolov5n.pt", batch_size: int = 32, imgsz: int = 640,
        conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300, task: str = "val", device: str = "cpu",
        workers: int = 8, single_cls: bool = False, verbose: bool = False, save_txt: bool = False,
        save_conf: bool = False, save_json: bool = False, project: str = "runs/val", name: str = "exp",
        exist_ok: bool = False, engine: str | None = None, sparsity: list[float] | None = None,
        prune_method: list[str] | None = None, calib_batches: int = 0, plots: bool = True, calib_images: int = 128,
        mask_type: str = "unstructured", sensitivity: bool = False, sensitivity_levels: list[float] | None = None,
        sensitivity_images: int = 16, sensitivity_table: str | None = None,
        recipe_sparsity: list[float] | None = None, rect: bool | None = None, channel_prune: float = 0.0,
        channel_importance: str = "bn", channel_allocation: str = "global",
        allow_download_code: bool = False) -> dict | list:
    """Validate once (or once per sparsity level and method); returns the metrics dict written to metrics.json."""
    check_options(imgsz=imgsz, batch_size=batch_size, device=device)
    data_dict = check_dataset(data, allow_code=allow_download_code)
    source = weights = resolve_weights(weights, engine)
    if channel_prune:  # one-shot structured pruning of the checkpoint, then validate it like any model
        from utils.sparsity.channel.cli import pruned_model
        source = pruned_model(weights, channel_prune, channel_importance, data_dict, imgsz, calib_images,
                              channel_allocation)
    eng = load_engine(source, engine, batch_size=batch_size, imgsz=imgsz, device=device)
    check_model_classes(eng.names, data_dict, weights, single_cls)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)  # only once the weights load
    imgsz = eng.imgsz[0] if eng.imgsz else check_img_size(imgsz, s=eng.stride)
    names = data_dict["names"]
    if sensitivity:
        from utils.val_outputs import run_sensitivity

        return run_sensitivity(eng, data_dict, imgsz, save_dir, sensitivity_levels, sensitivity_images,
                               recipe_sparsity, mask_type)
    rect = eng.dynamic if rect is None else rect and eng.dynamic
    loader, dataset = _dataloader(data_dict, task, imgsz, batch_size, eng.stride, rect, workers, single_cls)
    if sparsity:
        from utils.val_outputs import run_sweep

        return run_sweep(eng, loader, names, sparsity, prune_method or ["global"], calib_batches, save_dir,
                         data=data_dict, imgsz=imgsz, calib_images=calib_images, mask_type=mask_type,
                         sensitivity_table=sensitivity_table, conf_thres=conf_thres, iou_thres=iou_thres,
                         max_det=max_det, single_cls=single_cls)
    LOGGER.info(model_sparsity(eng))
    keep = save_json or save_txt
    res = evaluate(eng.model if eng.name == "torch" else eng, loader, names, conf_thres, iou_thres, max_det,
                   plots=plots, save_dir=save_dir, single_cls=single_cls, keep_predictions=keep, verbose=verbose)
    pre, inf, nms = res["speed"]
    LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape "
                f"({batch_size}, 3, {imgsz}, {imgsz}) with {eng.name} {eng.version()}")
    if keep:
        res.update(save_predictions(res["predictions"], dataset, save_dir, save_txt, save_conf, save_json, weights))
    metrics = save_metrics(res, eng, save_dir, {"data": str(data), "weights": str(weights), "imgsz": imgsz})
    LOGGER.info(f"Results saved to {save_dir}")
    return metrics


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(",", " ").split()]


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=str, default=str(ROOT / "data/coco128.yaml"), help="dataset.yaml path")
    p.add_argument("--weights", type=str, default="yolov5n.pt", help=".pt, .onnx or OpenVINO model")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--allow-download-code", action="store_true",
                   help="let a data yaml's Python 'download:' snippet run when the dataset is missing (off: refused)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=["train", "val", "test", "speed"], help="split or speed")
    p.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save COCO-JSON predictions and run pycocotools")
    p.add_argument("--project", default="runs/val", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--engine", choices=["torch", "onnxruntime", "deepsparse", "openvino"], default=None,
                   help="inference engine (default: by file suffix)")
    p.add_argument("--sparsity", type=_floats, default=None,
                   help="one-shot prune to each level and validate, e.g. 0,0.1,0.2,0.3,0.4,0.5 (.pt weights only)")
    p.add_argument("--prune-method", nargs="+", choices=METHOD_CHOICES, default=["global"],
                   help="one-shot method(s) for --sparsity: layerwise = Ultralytics prune() baseline, global = BN-folded "
                        "magnitude, obc = OBS reconstruction + sensitivity allocation; +recal re-estimates BatchNorm")
    p.add_argument("--calib-batches", type=int, default=0,
                   help="re-estimate BatchNorm statistics on this many calibration batches after every method (0 = off)")
    p.add_argument("--calib-images", type=int, default=128,
                   help="unlabeled images from the data yaml's train split for obc and +recal")
    p.add_argument("--mask-type", choices=["unstructured", "block4"], default="unstructured",
                   help="obc sparsity pattern: block4 = [1,4] blocks of input channels (VNNI / DeepSparse INT8)")
    p.add_argument("--sensitivity", action="store_true",
                   help="prune each layer alone to several levels; write sensitivity.csv/png (and recipes)")
    p.add_argument("--sensitivity-levels", type=_floats, default=None, help="levels for --sensitivity, e.g. 0.5,0.7,0.9")
    p.add_argument("--sensitivity-images", type=int, default=16, help="calibration images for --sensitivity")
    p.add_argument("--sensitivity-table", type=str, default=None,
                   help="sensitivity.csv from an earlier --sensitivity run for obc's allocation (else measured)")
    p.add_argument("--recipe-sparsity", type=float, nargs="+", default=None,
                   help="with --sensitivity: write a per-layer GMP recipe for each of these global sparsities")
    p.add_argument("--rect", action=argparse.BooleanOptionalAction, default=None,
                   help="rectangular batches (default: on for .pt and dynamic-shape models); --no-rect letterboxes "
                        "every image to the square imgsz, as a static ONNX model sees it, to compare engines fairly")
    p.add_argument("--channel-prune", type=float, default=0.0,
                   help="one-shot remove this fraction of conv FLOPs by whole channels, refit on --calib-images "
                        "train images, then validate (.pt weights only)")
    p.add_argument("--channel-importance", choices=["bn", "l1", "taylor"], default="bn",
                   help="channel ranking for --channel-prune: BN |gamma|, filter L1, or Taylor on labelled images")
    p.add_argument("--channel-allocation", choices=ALLOCATIONS, default="global",
                   help="how --channel-prune spreads the cut: global (one score threshold), uniform (same fraction "
                   "per layer), sensitivity (measured on --data images) or latency (more from layers that ONNX "
                   "Runtime runs slowly per FLOP)")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict:
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
