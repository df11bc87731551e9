"""val.py on layouts users bring: COCO val2017 with its official annotations, and a Roboflow export as it is."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
import yaml

import val
from utils.coco_eval import coco80_to_coco91_class, coco_map
from utils.data_config import check_dataset

STEMS = ("000000000009", "000000000025", "000000000030")  # bowls/broccoli/pizza, giraffes, a vase: varied classes


def _copy_images(coco128_dir: Path, images: Path, labels: Path) -> None:
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for stem in STEMS:
        shutil.copy(coco128_dir / "images" / "train2017" / f"{stem}.jpg", images)
        shutil.copy(coco128_dir / "labels" / "train2017" / f"{stem}.txt", labels)


def _names() -> list[str]:
    return check_dataset("data/coco128-local.yaml")["names"]


def _official_json(root: Path, drop_last: bool, file: Path | None = None) -> Path:
    """instances_val2017.json in COCO's format (91-id categories) from the YOLO labels; drop_last leaves the last
    image's boxes out, so a score against this file differs from one against the labels."""
    coco91 = coco80_to_coco91_class()
    images, anns = [], []
    for stem in STEMS:
        h, w = cv2.imread(str(root / "images" / "val2017" / f"{stem}.jpg")).shape[:2]
        images.append({"id": int(stem), "file_name": f"{stem}.jpg", "height": h, "width": w})
        if drop_last and stem == STEMS[-1]:
            continue
        for line in (root / "labels" / "val2017" / f"{stem}.txt").read_text().splitlines():
            c, cx, cy, bw, bh = map(float, line.split())
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": int(stem), "category_id": coco91[int(c)], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": i, "name": n} for i, n in zip(coco91, _names())]
    file = file or root / "annotations" / "instances_val2017.json"
    file.parent.mkdir(exist_ok=True)
    file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return file


@pytest.fixture()
def fake_coco(tmp_path: Path, coco128_dir: Path) -> tuple[Path, Path]:
    """tmp/coco/{images,labels}/val2017, val2017.txt, annotations/instances_val2017.json and a coco.yaml."""
    root = tmp_path / "coco"
    _copy_images(coco128_dir, root / "images" / "val2017", root / "labels" / "val2017")
    (root / "val2017.txt").write_text("".join(f"./images/val2017/{s}.jpg\n" for s in STEMS))
    ann = _official_json(root, drop_last=True)
    data = tmp_path / "coco.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "val2017.txt", "val": "val2017.txt",
                                    "names": dict(enumerate(_names()))}))
    return data, ann


def test_coco_save_json_uses_coco_ids_and_official_annotations(fake_coco, yolov5n_pt: Path, tmp_path: Path) -> None:
    data, ann = fake_coco
    m = val.run(data=str(data), weights=str(yolov5n_pt), imgsz=320, batch_size=3, workers=0, save_json=True,
                plots=False, project=str(tmp_path / "runs"))
    assert m["coco_annotations"] == str(ann)
    run_dir = tmp_path / "runs" / "exp"
    assert not (run_dir / "ground_truth.json").exists()
    preds = json.loads((run_dir / "yolov5n_predictions.json").read_text())
    ids = {p["category_id"] for p in preds}
    assert ids <= set(coco80_to_coco91_class()) and 0 not in ids
    assert {p["image_id"] for p in preds} == {int(s) for s in STEMS}
    assert m["coco_map"] == pytest.approx(coco_map(ann, run_dir / "yolov5n_predictions.json", verbose=False)[0])
    labels_gt = _official_json(ann.parents[1], False, tmp_path / "from_labels.json")  # every image's labels
    assert m["coco_map"] != pytest.approx(coco_map(labels_gt, run_dir / "yolov5n_predictions.json", False)[0])


def test_other_datasets_keep_class_index_ids(tmp_path: Path, yolov5n_pt: Path, coco128_dir: Path) -> None:
    root = tmp_path / "mine"
    _copy_images(coco128_dir, root / "images", root / "labels")
    data = tmp_path / "mine.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": _names()}))
    m = val.run(data=str(data), weights=str(yolov5n_pt), imgsz=320, batch_size=3, workers=0, save_json=True,
                plots=False, project=str(tmp_path / "runs"))
    assert m["coco_annotations"].endswith("ground_truth.json")
    preds = json.loads((tmp_path / "runs" / "exp" / "yolov5n_predictions.json").read_text())
    assert 0 in {p["category_id"] for p in preds}  # persons, as class index 0


def test_roboflow_export_as_it_is(tmp_path: Path, yolov5n_pt: Path, coco128_dir: Path, monkeypatch) -> None:
    root = tmp_path / "My-Project-1"  # Roboflow 'YOLOv5 PyTorch' zip: data.yaml + train/ valid/ test/ folders
    for split in ("train", "valid"):
        _copy_images(coco128_dir, root / split / "images", root / split / "labels")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\n\nnc: 80\nnames: " + json.dumps(_names()) + "\n\n"
        "roboflow:\n  workspace: someone\n  project: my-project\n  version: 1\n  license: CC BY 4.0\n"
        "  url: https://universe.roboflow.com/someone/my-project/dataset/1\n")
    monkeypatch.chdir(tmp_path)  # users run from anywhere; the paths are relative to data.yaml
    m = val.run(data=str(root / "data.yaml"), weights=str(yolov5n_pt), imgsz=320, batch_size=3, workers=0,
                plots=False, project=str(tmp_path / "runs"))
    assert m["images"] == len(STEMS) and m["map50"] > 0
