"""Export a YOLOv5 checkpoint (dense, pruned or our own) to ONNX and OpenVINO for CPU engines.

Usage:
    python export.py --weights yolov5n.pt --include onnx                 # -> yolov5n.onnx
    python export.py --weights yolov5n.pt --include onnx openvino         # + yolov5n_openvino_model/
    python export.py --weights best.pt --imgsz 320 --batch-size 1 --dynamic --opset 13
    python export.py --weights yolov5n.pt --sparsity 0.5 --prune-method obc --data coco128.yaml  # -> yolov5n_obc50.onnx
    python export.py --weights yolov5s.pt --channel-prune 0.5 --data coco128.yaml  # -> yolov5s_cp50.onnx + .pt

The ONNX file carries names/stride/imgsz/sparsity in its metadata, so val.py/detect.py need nothing else:
    python detect.py --weights yolov5n.onnx --engine deepsparse
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
from utils.checkpoint import resolve_weights  # noqa: E402
from utils.export_onnx import DEFAULT_OPSET, export_weights  # noqa: E402
from utils.sparsity.channel.allocate import ALLOCATIONS  # noqa: E402
from utils.sparsity.pipeline import METHOD_CHOICES, export_step  # noqa: E402

FORMATS = ("onnx", "openvino")


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
    parser.add_argument("--sparsity", type=float, default=0.0, help="one-shot prune to this global sparsity first")
    parser.add_argument("--prune-method", choices=METHOD_CHOICES, default="obc", help="one-shot method for --sparsity")
    parser.add_argument("--data", type=str, default=None, help="dataset yaml whose train images calibrate obc/+recal")
    parser.add_argument("--calib-images", type=int, default=128, help="calibration images for --sparsity")
    parser.add_argument("--mask-type", choices=["unstructured", "block4"], default="unstructured",
                        help="obc sparsity pattern (block4 = [1,4] VNNI blocks)")
    parser.add_argument("--channel-prune", type=float, default=0.0,
                        help="one-shot remove this fraction of conv FLOPs by whole channels (structured; also writes "
                             "<stem>_cpNN.pt); --data refits the pruned layers on its images")
    parser.add_argument("--channel-importance", choices=["bn", "l1", "taylor"], default="bn",
                        help="channel ranking for --channel-prune: BN |gamma|, filter L1, or Taylor (needs --data)")
    parser.add_argument("--channel-allocation", choices=ALLOCATIONS,
                        default="global",
                        help="how --channel-prune spreads the cut: global (one score threshold), uniform (same "
                        "fraction per layer), sensitivity (measured on --data images) or latency (more from layers "
                        "that ONNX Runtime runs slowly per FLOP)")
    return parser.parse_args(argv)


def run(weights: str = "yolov5n.pt", imgsz: list[int] | int = (640,), batch_size: int = 1, device: str = "cpu",
        include: list[str] | tuple[str, ...] = ("onnx",), dynamic: bool = False, simplify: bool = False,
        opset: int = DEFAULT_OPSET, sparsity: float = 0.0, prune_method: str = "obc", data: str | None = None,
        calib_images: int = 128, mask_type: str = "unstructured", channel_prune: float = 0.0,
        channel_importance: str = "bn", channel_allocation: str = "global") -> list[Path]:
    """Export and return the written paths (ONNX file first); --sparsity prunes one-shot before exporting."""
    include = tuple(f.lower() for f in include)
    unknown = [f for f in include if f not in FORMATS]
    if unknown:
        raise SystemExit(f"export: unknown --include {unknown}; choose from {', '.join(FORMATS)}")
    weights = resolve_weights(weights)  # zoo: stub -> mirror/SparseZoo checkpoint
    if not Path(weights).is_file():
        raise SystemExit(f"export: weights file {weights} not found; pass --weights path/to/model.pt")
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    hw = (sizes[0], sizes[-1])
    prune = export_step(sparsity, prune_method, data, max(hw), calib_images, mask_type) if sparsity else None
    if channel_prune:  # structured first, then --sparsity on the smaller model
        from utils.sparsity.channel.cli import channel_export_step
        prune = channel_export_step(channel_prune, channel_importance, data, max(hw), calib_images, weights, prune,
                                    channel_allocation)
    return export_weights(weights, include, hw, batch_size, dynamic, opset, simplify, device, prune=prune)["files"]


def main(opt: argparse.Namespace) -> list[Path]:
    return run(**vars(opt))


if __name__ == "__main__":
    from utils.cli import exit_on_user_error

    with exit_on_user_error():
        main(parse_opt())
