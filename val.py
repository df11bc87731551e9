"""Validate a YOLOv5 model on a detection dataset with any engine; prints mAP and the model's global sparsity.

Usage:
    python val.py --weights yolov5n.pt --data coco128.yaml --img 640
    python val.py --weights yolov5n.onnx --engine deepsparse --data coco128.yaml

Pruning sweeps, sensitivity analysis and one-shot channel pruning moved to prune.py (the old val.py flags still work
for now and print the prune.py command to use instead).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.augmentations import check_img_size  # noqa: E402
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils.sparsity.zoo import weights_path  # noqa: E402
from utils.cli import check_model_classes, check_options, exit_on_user_error, warn_fixed_imgsz  # noqa: E402
from utils.data_config import check_dataset  # noqa: E402
from utils.engines import ENGINES, load_engine  # noqa: E402
from utils.evaluate import evaluate, val_dataloader  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, setup_logging  # noqa: E402
from utils.sparsity import deprecated  # noqa: E402
from utils.val_outputs import model_sparsity, save_metrics, save_predictions  # noqa: E402


def run(data: str = "data/coco128.yaml", weights: str = "yolov5n.pt", batch_size: int = 32, imgsz: int = 640,
        conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300, task: str = "val", device: str = "cpu",
        workers: int = 8, single_cls: bool = False, verbose: bool = False, save_txt: bool = False,
        save_conf: bool = False, save_json: bool = False, project: str = "runs/val", name: str = "exp",
        exist_ok: bool = False, engine: str | None = None, plots: bool = True, rect: bool | None = None,
        allow_download_code: bool = False, threads: int | None = None) -> dict:
    """Validate once; returns the metrics dict written to metrics.json."""
    check_options(imgsz=imgsz, batch_size=batch_size, device=device, threads=threads)
    data_dict = check_dataset(data, allow_code=allow_download_code)
    weights = weights_path(weights, engine)
    eng = load_engine(weights, engine, batch_size=batch_size, imgsz=imgsz, device=device, num_threads=threads)
    check_model_classes(eng.names, data_dict, weights, single_cls)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)  # only once the weights load
    warn_fixed_imgsz(imgsz, eng.imgsz, weights)
    imgsz = eng.imgsz[0] if eng.imgsz else check_img_size(imgsz, s=eng.stride)
    rect = eng.dynamic if rect is None else rect and eng.dynamic
    loader, dataset = val_dataloader(data_dict, task, imgsz, batch_size, eng.stride, rect, workers, single_cls)
    LOGGER.info(model_sparsity(eng))
    keep = save_json or save_txt
    res = evaluate(eng.torch_module or eng, loader, data_dict["names"], conf_thres, iou_thres, max_det, plots=plots,
                   save_dir=save_dir, single_cls=single_cls, keep_predictions=keep, verbose=verbose)
    pre, inf, nms = res["speed"]
    LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape "
                f"({batch_size}, 3, {imgsz}, {imgsz}) with {eng.name} {eng.version()}")
    if keep:
        res.update(save_predictions(res["predictions"], dataset, save_dir, save_txt, save_conf, save_json, weights,
                                    data_dict))
    metrics = save_metrics(res, eng, save_dir, {"data": str(data), "weights": str(weights), "imgsz": imgsz})
    LOGGER.info(f"Results saved to {save_dir}")
    return metrics


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
    p.add_argument("--engine", choices=list(ENGINES), default=None,
                   help="inference engine (default: by file suffix)")
    p.add_argument("--rect", action=argparse.BooleanOptionalAction, default=None,
                   help="rectangular batches (default: on for .pt and dynamic-shape models); --no-rect letterboxes "
                        "every image to the square imgsz, as a static ONNX model sees it, to compare engines fairly")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the engine (torch, ONNX Runtime intra-op, OpenVINO, DeepSparse cores)")
    deprecated.add_val_args(p)  # old pruning flags: aliases of prune.py
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict | list:
    setup_logging()
    kw = vars(opt).copy()
    old = {k: kw.pop(k) for k in deprecated.VAL_FLAGS}
    done, result = deprecated.val_alias(kw, old)
    return result if done else run(**kw)


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
