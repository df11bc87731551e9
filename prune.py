"""One-shot prune a YOLOv5 checkpoint, sweep mAP against sparsity, or measure per-layer sensitivity.

Usage:
    python prune.py --weights yolov5n.pt --method global --sparsity 0.5                  # -> runs/prune/exp/yolov5n_global50.pt
    python prune.py --weights yolov5n.pt --method obc --sparsity 0.5 --data coco128.yaml  # OBS reconstruction
    python prune.py --weights yolov5n.pt --method blocks --sparsity 0.6 --block 4         # 1x4 blocks (VNNI)
    python prune.py --weights yolov5s.pt --method channel --sparsity 0.5 --data coco128.yaml  # 50% of conv FLOPs
    python prune.py --weights yolov5n.pt --data coco128.yaml --sweep 0,0.3,0.5,0.7 --method global obc+recal
    python prune.py --weights yolov5n.pt --data coco128.yaml --sensitivity --recipe-sparsity 0.5 0.75

The pruned .pt validates with val.py, exports with export.py and fine-tunes with train.py --weights (sparse transfer
learning with recipes/yolov5.transfer_learn_pruned.yaml keeps its zeros).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils.cli import exit_on_user_error  # noqa: E402
from utils.data_config import check_dataset  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, setup_logging  # noqa: E402
from utils.sparsity.channel import ALLOCATIONS, IMPORTANCE  # noqa: E402
from utils.sparsity.methods import METHOD_CHOICES, methods_help  # noqa: E402
from utils.sparsity.tasks import ShotSpec, check_spec, prune_checkpoint, run_sensitivity, run_sweep  # noqa: E402
from utils.sparsity.zoo import weights_path  # noqa: E402


def run(weights: str = "yolov5n.pt", data: str | None = None, method: list[str] | str = ("global",),
        sparsity: float = 0.5, sweep: list[float] | None = None, sensitivity: bool = False, imgsz: int = 640,
        calib_images: int = 128, calib_batches: int = 0, mask_type: str = "unstructured", block: int = 4,
        channel_importance: str = "bn", channel_allocation: str = "global", sensitivity_levels: list[float] | None = None,
        sensitivity_images: int = 16, sensitivity_table: str | None = None, recipe_sparsity: list[float] | None = None,
        batch_size: int = 32, workers: int = 8, project: str = "runs/prune", name: str = "exp",
        exist_ok: bool = False, allow_download_code: bool = False) -> Path | dict | list:
    """Prune once (returns the new .pt), sweep levels (returns rows per method) or measure sensitivity (rows)."""
    methods = [method] if isinstance(method, str) else list(method)
    specs = [ShotSpec(m, data, imgsz, calib_images, calib_batches, mask_type, block, channel_importance,
                      channel_allocation, sensitivity_table) for m in methods]
    for s in specs:
        check_spec(s)
    if (sweep or sensitivity) and not data:
        raise ValueError("--sweep and --sensitivity validate/calibrate on a dataset: pass --data your_dataset.yaml")
    if not sweep and not sensitivity and not 0.0 < sparsity < 1.0:
        raise ValueError(f"--sparsity must be in (0, 1), got {sparsity}")
    weights = weights_path(weights)
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: checkpoint not found; pass a .pt file")
    data_dict = check_dataset(data, allow_code=allow_download_code) if data else None
    for s in specs:
        s.data = data_dict
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    if sensitivity:
        return run_sensitivity(weights, data_dict, imgsz, save_dir, sensitivity_levels, sensitivity_images,
                               recipe_sparsity, mask_type)
    if sweep:
        return run_sweep(weights, data_dict, sweep, specs, save_dir, batch_size, workers)
    if len(specs) > 1:
        LOGGER.warning(f"prune: one checkpoint per run; using --method {methods[0]} (several methods: use --sweep)")
    return prune_checkpoint(weights, sparsity, specs[0], save_dir)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(",", " ").split()]


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default="yolov5n.pt", help="checkpoint to prune (.pt or zoo: stub)")
    p.add_argument("--data", type=str, default=None, help="dataset yaml: calibration images (obc, +recal, channel "
                   "refit) and validation for --sweep")
    p.add_argument("--method", nargs="+", choices=METHOD_CHOICES, default=["global"],
                   help=f"{methods_help()}; +recal re-estimates BatchNorm on --data images")
    p.add_argument("--sparsity", type=float, default=0.5,
                   help="target: fraction of prunable weights zeroed (channel: fraction of conv FLOPs removed)")
    p.add_argument("--sweep", type=_floats, default=None, help="levels to prune and validate, e.g. 0,0.3,0.5,0.7")
    p.add_argument("--sensitivity", action="store_true",
                   help="prune each layer alone to several levels; write sensitivity.csv/png (and recipes)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="calibration/validation size")
    p.add_argument("--calib-images", type=int, default=128, help="unlabeled --data train images for calibration")
    p.add_argument("--calib-batches", type=int, default=0, help="re-estimate BatchNorm on this many batches after "
                   "every method (0 = only for +recal methods)")
    p.add_argument("--mask-type", choices=["unstructured", "block4"], default="unstructured",
                   help="obc sparsity pattern: block4 = [1,4] blocks of input channels (VNNI / DeepSparse INT8)")
    p.add_argument("--block", type=int, default=4, help="N of the 1xN blocks of --method blocks")
    p.add_argument("--channel-importance", choices=IMPORTANCE, default="bn",
                   help="channel ranking: BN |gamma|, filter L1, or Taylor on labelled --data images")
    p.add_argument("--channel-allocation", choices=ALLOCATIONS, default="global",
                   help="how channel pruning spreads the cut: global (one score threshold), uniform (same fraction per "
                   "layer), sensitivity (measured on --data images) or latency (more from layers that ONNX Runtime "
                   "runs slowly per FLOP)")
    p.add_argument("--sensitivity-levels", type=_floats, default=None, help="levels for --sensitivity, e.g. 0.5,0.7,0.9")
    p.add_argument("--sensitivity-images", type=int, default=16, help="calibration images for --sensitivity")
    p.add_argument("--sensitivity-table", type=str, default=None,
                   help="sensitivity.csv from an earlier --sensitivity run for obc's allocation (else measured)")
    p.add_argument("--recipe-sparsity", type=float, nargs="+", default=None,
                   help="with --sensitivity: write a per-layer GMP recipe for each of these global sparsities")
    p.add_argument("--batch-size", type=int, default=32, help="validation batch size for --sweep")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--project", default="runs/prune", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--allow-download-code", action="store_true",
                   help="let a dataset yaml's Python 'download:' snippet run when its images are missing")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> Path | dict | list:
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
