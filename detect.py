"""Run YOLOv5 detection on images, folders, globs, list files and videos with any engine.

Usage:
    python detect.py --weights yolov5n.pt --source data/images/bus.jpg
    python detect.py --weights yolov5n.onnx --engine deepsparse --source path/to/folder --save-txt
    python detect.py --weights yolov5n.onnx --engine openvino --source video.mp4
    python detect.py --weights yolov5n.onnx --source 0                          # webcam
    python detect.py --weights yolov5n.onnx --source rtsp://user:pass@camera/stream --vid-stride 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.assets import assets_dir  # noqa: E402
from utils.augmentations import check_img_size  # noqa: E402
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils.sparsity.zoo import weights_path  # noqa: E402
from utils.data_config import names_for_model  # noqa: E402
from utils.cli import check_options, exit_on_user_error, warn_fixed_imgsz, warn_unknown_classes  # noqa: E402
from utils.detect_output import DetectionWriter, summary  # noqa: E402
from utils.engines import ENGINES, load_engine  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, setup_logging  # noqa: E402
from utils.predict import Predictor  # noqa: E402
from utils.streams import load_source  # noqa: E402


def run(weights: str = "yolov5n.pt", source: str | None = None, imgsz: int | list[int] = 640, conf_thres: float = 0.25,
        iou_thres: float = 0.45, max_det: int = 1000, engine: str | None = None, device: str = "cpu",
        classes: list[int] | None = None, agnostic_nms: bool = False, save_txt: bool = False, save_conf: bool = False,
        save_crop: bool = False, nosave: bool = False, project: str = "runs/detect", name: str = "exp",
        exist_ok: bool = False, line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False,
        vid_stride: int = 1, data: str | None = None, threads: int | None = None) -> Path:
    """Detect objects in every image/frame of source; returns the run folder."""
    check_options(imgsz=imgsz, device=device, threads=threads)
    source = source or str(assets_dir() / "images")
    imgsz = [imgsz, imgsz] if isinstance(imgsz, int) else (imgsz * 2 if len(imgsz) == 1 else imgsz)
    imgsz = check_img_size(list(imgsz), s=32)  # YOLOv5 P5 models; re-checked against the engine's own stride below
    eng = load_engine(weights_path(weights, engine), engine, batch_size=1, imgsz=tuple(imgsz), device=device,
                      num_threads=threads)
    if data:  # a file without class names (e.g. a third-party ONNX) shows class0..; the data yaml has the real ones
        eng.names = names_for_model(data, eng.names)
    warn_fixed_imgsz(imgsz, eng.imgsz, weights)
    imgsz = check_img_size(list(eng.imgsz or imgsz), s=eng.stride)
    predictor = Predictor(eng, tuple(imgsz), conf_thres, iou_thres, classes, agnostic_nms, max_det)
    eng.warmup()  # first call pays for allocation; keep it out of the reported times
    warn_unknown_classes(classes, eng.names)
    dataset = load_source(source, imgsz, eng.stride, vid_stride)  # a bad file or unreachable stream: no run folder
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    writer = DetectionWriter(save_dir, eng.names, not nosave, save_txt, save_conf, save_crop, line_thickness,
                             hide_labels, hide_conf)
    for path, _, im0, cap, s in dataset:
        before = predictor.timings.infer
        det = predictor([im0])[0]
        writer.write(path, im0, det, cap, getattr(predictor.timings, "images", 0))
        LOGGER.info(f"{s}{summary(det, eng.names)}, {predictor.timings.infer - before:.1f}ms")
    writer.close()
    pre, inf, nms = predictor.timings.per_image()
    LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape "
                f"{(1, *imgsz, 3) if eng.channels_last else (1, 3, *imgsz)} with {eng.name} {eng.version()}")
    LOGGER.info(f"Results saved to {save_dir}" + (f"\n{len(list((save_dir / 'labels').glob('*.txt')))} labels saved "
                                                  f"to {save_dir / 'labels'}" if save_txt else ""))
    return save_dir


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default=str(assets_dir() / "weights" / "yolov5n.pt"),
                   help=".pt, .onnx or OpenVINO model")
    p.add_argument("--source", type=str, default=None, help="file/dir/glob/.txt list/video, webcam index 0, rtsp/rtmp/http(s) stream URL "
                        "(default: shared demo images)")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--engine", choices=list(ENGINES), default=None,
                   help="inference engine (default: by file suffix)")
    p.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--project", default="runs/detect", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    p.add_argument("--data", type=str, default=None,
                   help="dataset.yaml whose class names label the boxes (for models whose file carries none)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the engine (torch, ONNX Runtime intra-op, OpenVINO, DeepSparse cores)")
    opt = p.parse_args(argv)
    opt.imgsz = opt.imgsz * 2 if len(opt.imgsz) == 1 else opt.imgsz
    return opt


def main(opt: argparse.Namespace) -> Path:
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
