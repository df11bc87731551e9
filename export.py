"""Export a YOLOv5 checkpoint (dense, pruned or our own) to ONNX and OpenVINO for CPU engines.

Usage:
    python export.py --weights yolov5n.pt --include onnx                 # -> yolov5n.onnx
    python export.py --weights yolov5n.pt --include onnx openvino         # + yolov5n_openvino_model/
    python export.py --weights best.pt --imgsz 320 --batch-size 1 --dynamic --opset 13
    python export.py --weights best.pt --int8 --data my.yaml      # + best_int8.onnx (QDQ, calibrated on 128 images)
    python export.py --weights best.pt --include ultralytics       # best_ultralytics.pt for Ultralytics' own tools
    python export.py --weights yolov5n.pt --uint8-input            # graph takes uint8 pixels, does the /255 itself

One-shot pruning is prune.py's job (export its .pt); export.py's old --sparsity/--channel-prune flags still work for
now and print the prune.py command to use instead.

The ONNX file carries names/stride/imgsz/sparsity in its metadata, so val.py/detect.py need nothing else:
    python detect.py --weights yolov5n.onnx --engine deepsparse
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from torch import nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils.sparsity.zoo import weights_path  # noqa: E402
from utils.data_config import check_dataset  # noqa: E402
from utils.export import DEFAULT_OPSET, export_weights  # noqa: E402
from utils.export.head import HEADS  # noqa: E402
from utils.export.int8 import INT8_FORMATS  # noqa: E402
from utils.export.pipeline import check_int8_options  # noqa: E402
from utils.export.qdq import DEFAULT_METHOD, METHODS as QDQ_METHODS  # noqa: E402
from utils.sparsity import deprecated  # noqa: E402

FORMATS = ("onnx", "openvino", "ultralytics")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a YOLOv5 checkpoint to ONNX / OpenVINO")
    parser.add_argument("--weights", type=str, default="yolov5n.pt", help="checkpoint path (.pt)")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image size h [w]")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the exported input")
    parser.add_argument("--device", default="cpu", help="device to trace on (cpu)")
    parser.add_argument("--include", nargs="+", default=["onnx"], help=f"formats: {', '.join(FORMATS)}")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width axes")
    parser.add_argument("--simplify", action="store_true", help="run onnx-simplifier (only if onnxsim is installed)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--int8", action="store_true",
                        help="also write <stem>_int8.onnx: post-training INT8 calibrated on --data images (QDQ: ONNX "
                        "Runtime and OpenVINO run it as INT8, OpenCV loads it; a QAT checkpoint exports as INT8 "
                        "already)")
    parser.add_argument("--data", type=str, default=None,
                        help="dataset yaml: --int8 calibration images, and the images export checks the file on")
    parser.add_argument("--calib-images", type=int, default=128, help="--int8 calibration images (train split)")
    parser.add_argument("--int8-format", choices=INT8_FORMATS, default="qdq",
                        help="qdq: Q/DQ on every activation (every engine; ONNX Runtime's fastest), qdq-inputs: only "
                        "on what the convs read (OpenVINO's fastest and most accurate), qoperator: qdq as QLinearConv "
                        "etc. (what OpenCV DNN runs as INT8; ONNX Runtime too), convinteger: SparseML's form "
                        "(DeepSparse's fastest)")
    parser.add_argument("--calib-method", choices=QDQ_METHODS, default=DEFAULT_METHOD,
                        help="how QDQ activation ranges are set from the calibration images")
    parser.add_argument("--int8-float", type=int, default=0, metavar="K",
                        help="QDQ mixed precision: leave the K activation units whose INT8 error reaches the "
                        "detections most (measured on 16 calibration images) in float; more accuracy, less speed")
    parser.add_argument("--allow-download-code", action="store_true",
                        help="let a dataset yaml's Python 'download:' snippet run when its images are missing")
    parser.add_argument("--uint8-input", action="store_true",
                        help="the graph takes uint8 NCHW RGB pixels and does the /255 itself (engines are fed bytes, "
                        "pre-processing skips the float conversion; INT8 files: the pixels are their quantized input)")
    parser.add_argument("--nhwc", action="store_true",
                        help="the graph takes uint8 NHWC BGR frames as OpenCV reads them: layout change, channel "
                        "order and /255 run inside the engine, the host only letterboxes (any format, --int8 too)")
    parser.add_argument("--head", choices=HEADS, default="decoded",
                        help="decoded: output (batch, anchors, 5+nc) as Ultralytics writes it; raw: the file ends at "
                        "Detect's convs and our engines decode only cells that pass objectness (faster end to end)")
    parser.add_argument("--verify-strict", action="store_true",
                        help="exit non-zero when the exported file disagrees with PyTorch on the check image")
    deprecated.add_export_args(parser)  # old one-shot flags: aliases of prune.py
    return parser.parse_args(argv)


def run(weights: str = "yolov5n.pt", imgsz: list[int] | int = (640,), batch_size: int = 1, device: str = "cpu",
        include: list[str] | tuple[str, ...] = ("onnx",), dynamic: bool = False, simplify: bool = False,
        opset: int = DEFAULT_OPSET, verify_strict: bool = False, int8: bool = False, data: str | None = None,
        calib_images: int = 128, int8_format: str = "qdq", calib_method: str = DEFAULT_METHOD,
        allow_download_code: bool = False, prune: Callable[[nn.Module], str] | None = None,
        uint8_input: bool = False, head: str = "decoded", nhwc: bool = False, int8_float: int = 0) -> list[Path]:
    """Export and return the written paths (ONNX file first, unless only ultralytics); `prune` edits the model first."""
    include = tuple(f.lower() for f in include)
    unknown = [f for f in include if f not in FORMATS]
    if unknown:
        raise SystemExit(f"export: unknown --include {unknown}; choose from {', '.join(FORMATS)}")
    weights = weights_path(weights)  # zoo: stub -> mirror/SparseZoo checkpoint
    if not Path(weights).is_file():
        raise SystemExit(f"export: weights file {weights} not found; pass --weights path/to/model.pt")
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    hw = (sizes[0], sizes[-1])
    check_int8_options(int8, data, int8_format, dynamic, int8_float, include)
    data_dict = check_dataset(data, allow_code=allow_download_code) if data else None
    return export_weights(weights, include, hw, batch_size, dynamic, opset, simplify, device, prune=prune,
                          verify_strict=verify_strict, int8=int8, data=data_dict, calib_images=calib_images,
                          int8_format=int8_format, calib_method=calib_method, uint8_input=uint8_input,
                          head=head, nhwc=nhwc, int8_float=int8_float)["files"]


def main(opt: argparse.Namespace) -> list[Path]:
    kw = vars(opt).copy()
    old = {k: kw.pop(k) for k in deprecated.EXPORT_FLAGS}
    sizes = kw["imgsz"] if isinstance(kw["imgsz"], list) else [kw["imgsz"]]
    prune = deprecated.export_alias(old, weights_path(kw["weights"]), max(sizes), kw["data"], kw["calib_images"])
    return run(**kw, prune=prune)


if __name__ == "__main__":
    from utils.cli import exit_on_user_error

    with exit_on_user_error():
        main(parse_opt())
