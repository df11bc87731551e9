"""pycocotools COCOeval for ANY YOLO dataset: ground truth JSON built from the YOLO labels, predictions from val.

COCO itself (Ultralytics' test: the val list is coco/val2017.txt, or the root has annotations/instances_val2017.json)
is scored with COCO's 91-id categories against the official annotations, so numbers compare with published ones.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from utils.boxes import xyxy2xywh


COCO_ANNOTATIONS = "annotations/instances_val2017.json"


def coco80_to_coco91_class() -> list[int]:
    """COCO category id of each of the 80 YOLO classes (the official ids skip 11 unused numbers), as Ultralytics."""
    return [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
            34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
            62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def official_annotations(data: dict) -> Path | None:
    """The dataset root's annotations/instances_val2017.json, when it has one."""
    file = Path(data.get("path") or "") / COCO_ANNOTATIONS
    return file if data.get("path") and file.is_file() else None


def is_coco(data: dict) -> bool:
    """COCO val2017, told the way Ultralytics' val.py tells it (plus the annotations file being there)."""
    val = data.get("val")
    return (isinstance(val, str) and val.endswith(f"coco{os.sep}val2017.txt")) or official_annotations(data) is not None


def image_id(path: str | Path, index: int) -> int:
    """COCO-style numeric stem when there is one (000000000009.jpg -> 9), else the dataset index."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else index


def ground_truth_json(dataset, file: Path, class_map: list[int] | None = None) -> Path:
    """COCO annotations from a LoadImagesAndLabels dataset (pixel xywh boxes, category = class_map[class] or the
    class index)."""
    images, anns = [], []
    for i, (path, (h, w), labels) in enumerate(zip(dataset.im_files, dataset.shapes, dataset.labels)):
        iid = image_id(path, i)
        images.append({"id": iid, "file_name": Path(path).name, "height": int(h), "width": int(w)})
        for cls, cx, cy, bw, bh in np.asarray(labels, dtype=np.float64).reshape(-1, 5):
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": _category(cls, class_map), "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    classes = [int(c) for lb in dataset.labels for c in np.asarray(lb).reshape(-1, 5)[:, 0]]
    names = getattr(dataset, "names", None) or [str(c) for c in range(max(classes, default=0) + 1)]
    cats = [{"id": _category(i, class_map), "name": str(n)} for i, n in enumerate(names)]
    file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return file


def _category(cls: float, class_map: list[int] | None) -> int:
    """COCO category id of a YOLO class index."""
    return class_map[int(cls)] if class_map else int(cls)


def predictions_json(predictions: list, dataset, file: Path, class_map: list[int] | None = None) -> Path:
    """COCO results list from (path, shape, predn) tuples (predn in original pixels)."""
    index = {p: i for i, p in enumerate(dataset.im_files)}
    out = []
    for path, _, predn in predictions:
        iid = image_id(path, index[path])
        box = xyxy2xywh(predn[:, :4].clone())
        box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
        for b, conf, cls in zip(box.tolist(), predn[:, 4].tolist(), predn[:, 5].tolist()):
            out.append({"image_id": iid, "category_id": _category(cls, class_map), "bbox": [round(x, 3) for x in b],
                        "score": round(conf, 5)})
    file.write_text(json.dumps(out))
    return file


def coco_map(gt_file: Path, pred_file: Path, verbose: bool = True) -> tuple[float, float]:
    """(mAP50-95, mAP50) from pycocotools; prints its usual table."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(pred_file)) if json.loads(pred_file.read_text()) else None
    if dt is None:
        return 0.0, 0.0
    ev = COCOeval(gt, dt, "bbox")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue().rstrip())
    return float(ev.stats[0]), float(ev.stats[1])
