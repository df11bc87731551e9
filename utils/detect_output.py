"""Everything detect.py writes: annotated images/videos, YOLO-format label txt, crops, and the console line."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.boxes import xyxy2xywh
from utils.plots import Annotator, colors, save_one_box
from utils.streams import capture_fps


def summary(det: np.ndarray, names: list[str]) -> str:
    """'4 persons, 1 bus' (Ultralytics wording) or '(no detections)'."""
    if not len(det):
        return "(no detections)"
    counts = Counter(int(c) for c in det[:, 5])
    return ", ".join(f"{n} {names[c]}{'s' * (n > 1)}" for c, n in sorted(counts.items()))


def label_lines(det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> list[str]:
    """Rows 'cls cx cy w h [conf]' normalized to the original image, in float32 and '%g' like Ultralytics' files."""
    h, w = shape
    gn = np.array([w, h, w, h], dtype=np.float32)
    lines = []
    for *xyxy, conf, cls in np.asarray(det, dtype=np.float32).tolist():
        xywh = (xyxy2xywh(np.array([xyxy], dtype=np.float32))[0] / gn).tolist()
        row = (int(cls), *xywh, conf) if save_conf else (int(cls), *xywh)
        lines.append(("%g " * len(row)).rstrip() % row)
    return lines


def write_labels(file: Path, det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> None:
    """One YOLO label txt; no file at all for an image without detections, as Ultralytics' detect and val do."""
    if len(det):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("".join(f"{ln}\n" for ln in label_lines(det, shape, save_conf)))


@dataclass
class DetectionWriter:
    """Saves per-source outputs under save_dir; one instance per detect run."""

    save_dir: Path
    names: list[str]
    save_img: bool = True
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False
    _videos: dict = field(default_factory=dict)

    def write(self, path: str, im0: np.ndarray, det: np.ndarray, cap=None, frame: int = 0) -> np.ndarray:
        """Write every requested output for one image or video frame; returns the annotated image."""
        p = Path(path)
        if self.save_txt:
            stem = p.stem if cap is None else f"{p.stem}_{frame}"
            # lowest confidence first: Ultralytics' detect.py walks reversed(det), so its files list rows that way
            write_labels(self.save_dir / "labels" / f"{stem}.txt", det[::-1], im0.shape[:2], self.save_conf)
        if self.save_crop:
            for *xyxy, conf, cls in det.tolist():
                crop = self.save_dir / "crops" / self.names[int(cls)] / f"{p.stem}.jpg"
                save_one_box(xyxy, im0, file=crop, BGR=True)
        annotated = self.annotate(im0, det)
        if self.save_img:
            self._save(p, annotated, cap)
        return annotated

    def annotate(self, im0: np.ndarray, det: np.ndarray) -> np.ndarray:
        """Boxes with 'name conf' tags, Ultralytics style."""
        ann = Annotator(im0.copy(), line_width=self.line_thickness)
        for *xyxy, conf, cls in det.tolist():
            c = int(cls)
            label = None if self.hide_labels else (self.names[c] if self.hide_conf else f"{self.names[c]} {conf:.2f}")
            ann.box_label(xyxy, label or "", color=colors(c, True))
        return ann.result()

    def _save(self, p: Path, im: np.ndarray, cap) -> None:
        """Images to save_dir/name; video frames appended to save_dir/stem.mp4."""
        if cap is None:
            cv2.imwrite(str(self.save_dir / p.name), im)
            return
        if str(p) not in self._videos:
            fps = capture_fps(cap)
            out = str((self.save_dir / p.stem).with_suffix(".mp4"))
            self._videos[str(p)] = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (im.shape[1], im.shape[0]))
        self._videos[str(p)].write(im)

    def close(self) -> None:
        """Finish video files so they are playable."""
        for vw in self._videos.values():
            vw.release()
        self._videos.clear()
