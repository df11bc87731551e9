"""pycocotools COCOeval for ANY YOLO dataset: ground truth JSON built from the YOLO labels, predictions from val."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from utils.boxes import xyxy2xywh


def image_id(path: str | Path, index: int) -> int:
    """COCO-style numeric stem when there is one (000000000009.jpg -> 9), else the dataset index."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else index


def ground_truth_json(dataset, file: Path) -> Path:
    """COCO annotations from a LoadImagesAndLabels dataset (pixel xywh boxes, category = class index)."""
    images, anns = [], []
    for i, (path, (h, w), labels) in enumerate(zip(dataset.im_files, dataset.shapes, dataset.labels)):
        iid = image_id(path, i)
        images.append({"id": iid, "file_name": Path(path).name, "height": int(h), "width": int(w)})
        for cls, cx, cy, bw, bh in np.asarray(labels, dtype=np.float64).reshape(-1, 5):
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": int(cls), "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    names = getattr(dataset, "names", None) or [str(c) for c in range(int(max([a["category_id"] for a in anns], default=0)) + 1)]
    cats = [{"id": i, "name": str(n)} for i, n in enumerate(names)]
    file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return file


def predictions_json(predictions: list, dataset, file: Path) -> Path:
    """COCO results list from (path, shape, predn) tuples (predn in original pixels)."""
    index = {p: i for i, p in enumerate(dataset.im_files)}
    out = []
    for path, _, predn in predictions:
        iid = image_id(path, index[path])
        box = xyxy2xywh(predn[:, :4].clone())
        box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
        for b, conf, cls in zip(box.tolist(), predn[:, 4].tolist(), predn[:, 5].tolist()):
            out.append({"image_id": iid, "category_id": int(cls), "bbox": [round(x, 3) for x in b],
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
