"""detect.py details Ultralytics users rely on: --data class names, and label txt files byte-for-byte in its format."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

import detect
from utils.boxes import xyxy2xywh
from utils.detect_output import label_lines

INT8_ONNX = "reference_onnx/yolov5n_pistols1cls_qat_int8_416.onnx"


def test_data_names_a_model_without_names(tmp_path: Path, assets: Path, bus_jpg: Path, project_log) -> None:
    onnx = assets / INT8_ONNX
    plain = detect.run(weights=str(onnx), source=str(bus_jpg), conf_thres=0.01, project=str(tmp_path), name="plain",
                       save_crop=True)
    assert [p.name for p in (plain / "crops").iterdir()] == ["class0"]  # the file carries no names
    named = detect.run(weights=str(onnx), source=str(bus_jpg), conf_thres=0.01, project=str(tmp_path), name="named",
                       save_crop=True, data=str(assets / "pistols" / "pistols.yaml"))
    assert [p.name for p in (named / "crops").iterdir()] == ["pistol"]
    assert not [r for r in project_log.records if "class names but the model" in r.getMessage()]


def test_data_with_another_class_count_warns_once(tmp_path: Path, yolov5n_pt: Path, bus_jpg: Path,
                                                  assets: Path, project_log) -> None:
    out = detect.run(weights=str(yolov5n_pt), source=str(bus_jpg), imgsz=320, project=str(tmp_path),
                     save_crop=True, data=str(assets / "pistols" / "pistols.yaml"))
    warned = {r.getMessage() for r in project_log.records if "class names but the model" in r.getMessage()}
    assert len(warned) == 1 and "pistols.yaml: 1 class names but the model predicts 80" in warned.pop()
    assert "person" in [p.name for p in (out / "crops").iterdir()]  # the model's own names are kept


def test_no_label_file_without_detections(tmp_path: Path, yolov5n_pt: Path, bus_jpg: Path) -> None:
    blank = tmp_path / "src" / "blank.jpg"
    blank.parent.mkdir()
    cv2.imwrite(str(blank), np.full((320, 320, 3), 114, np.uint8))
    (tmp_path / "src" / "bus.jpg").symlink_to(bus_jpg)
    out = detect.run(weights=str(yolov5n_pt), source=str(tmp_path / "src"), imgsz=320, save_txt=True,
                     project=str(tmp_path), name="exp")
    assert [p.name for p in (out / "labels").iterdir()] == ["bus.txt"]  # Ultralytics writes none for blank.jpg
    rows = [line.split() for line in (out / "labels" / "bus.txt").read_text().splitlines()]
    assert all(len(r) == 5 and r[0].isdigit() for r in rows)


def _ultralytics_lines(det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> list[str]:
    """Ultralytics v7.0 detect.py's label rows, its code verbatim apart from names (torch float32 throughout)."""
    gn = torch.tensor((shape[1], shape[0], shape[1], shape[0]))
    lines = []
    for *xyxy, conf, cls in reversed(torch.from_numpy(det)):
        xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
        line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
        lines.append(("%g " * len(line)).rstrip() % line)
    return lines


def test_label_rows_like_ultralytics(tmp_path: Path, yolov5n_pt: Path, bus_jpg: Path) -> None:
    det = np.array([[10.5, 20.25, 110.125, 220.0, 0.87654321, 5], [0, 0, 33.3, 44.4, 0.5, 0]], np.float32)
    assert label_lines(det, (480, 640), True) == [
        "5 0.0942383 0.25026 0.155664 0.416146 0.876543", "0 0.0260156 0.04625 0.0520312 0.0925 0.5"]
    assert label_lines(det[:1], (480, 640), False) == ["5 0.0942383 0.25026 0.155664 0.416146"]
    for save_conf in (True, False):
        assert label_lines(det[::-1], (480, 640), save_conf) == _ultralytics_lines(det, (480, 640), save_conf)
    out = detect.run(weights=str(yolov5n_pt), source=str(bus_jpg), save_txt=True, save_conf=True,
                     project=str(tmp_path), name="exp")
    confs = [float(line.split()[-1]) for line in (out / "labels" / "bus.txt").read_text().splitlines()]
    assert len(confs) == 5 and confs == sorted(confs)  # reversed(det): lowest confidence first
