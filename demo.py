"""The offline demo behind `make demo`: synthetic data -> train -> val -> one-shot sparsity sweep -> export -> detect.

Usage:
    python demo.py                       # everything on embedded defaults, no network, no downloads
    python demo.py --epochs 5 --imgsz 160 --out runs/demo

Every step is one of the project's own scripts called through its run() function, so the demo is also a smoke
test of the user-facing commands. A summary table is printed at the end and written to <out>/summary.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.assets import asset  # noqa: E402
from utils.cli import exit_on_user_error  # noqa: E402
from utils.files import LOGGER, increment_path, setup_logging  # noqa: E402


def banner(step: str) -> float:
    """Mark a step in the log; returns its start time."""
    LOGGER.info(f"\n{'=' * 20} demo: {step} {'=' * 20}")
    return time.perf_counter()


def make_dataset(out: Path, imgsz: int, n_train: int, n_val: int) -> Path:
    """Synthetic shapes on textured backgrounds: a detection task yolov5n learns in minutes on a CPU."""
    from utils import synthetic

    return synthetic.run(out=out / "shapes", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=0)


def train_dense(data: Path, out: Path, imgsz: int, epochs: int) -> Path:
    """Fine-tune the official yolov5n.pt (COCO) on the synthetic set; returns best.pt."""
    import train

    train.run(data=str(data), weights=str(asset("weights/yolov5n.pt")), imgsz=imgsz, epochs=epochs, batch_size=16,
              workers=2, seed=0, project=str(out), name="train", exist_ok=True, noplots=True)
    return out / "train" / "weights" / "best.pt"


def validate(data: Path, weights: Path, out: Path, imgsz: int, **kw) -> dict:
    """val.py on the synthetic val split."""
    import val

    return val.run(data=str(data), weights=str(weights), imgsz=imgsz, batch_size=16, workers=2,
                   project=str(out), exist_ok=True, **kw)


def export_and_detect(weights: Path, data: Path, out: Path, imgsz: int) -> dict:
    """ONNX export, then detect.py with ONNX Runtime on a few val images."""
    import detect
    from utils.export_onnx import export_weights

    res = export_weights(weights, imgsz=imgsz, log=LOGGER.info)
    onnx_file = res["files"][0]
    source = sorted((data.parent / "images" / "val").glob("*.jpg"))[:4]
    listing = out / "detect_sources.txt"
    listing.write_text("".join(f"{p}\n" for p in source))
    save_dir = detect.run(weights=str(onnx_file), source=str(listing), imgsz=imgsz, engine="onnxruntime",
                          project=str(out), name="detect", exist_ok=True)
    return {"onnx": str(onnx_file), "onnx_sparsity": res["onnx_sparsity"], "detect_dir": str(save_dir)}


def run(out: str = "runs/demo", imgsz: int = 160, epochs: int = 15, n_train: int = 300, n_val: int = 60,
        sparsity: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)) -> dict:
    """The whole job; returns (and saves) a summary of what each step produced."""
    out = increment_path(Path(out), mkdir=True)
    times, summary = {}, {"out": str(out)}
    t = banner("1/5 synthetic dataset")
    data = make_dataset(out, imgsz, n_train, n_val)
    times["dataset"] = time.perf_counter() - t
    t = banner("2/5 train yolov5n (dense)")
    best = train_dense(data, out, imgsz, epochs)
    times["train"] = time.perf_counter() - t
    t = banner("3/5 validate best.pt")
    m = validate(data, best, out, imgsz, name="val")
    summary["dense"] = {k: round(m[k], 4) for k in ("precision", "recall", "map50", "map")}
    times["val"] = time.perf_counter() - t
    t = banner("4/5 mAP against one-shot global sparsity")
    rows = validate(data, best, out, imgsz, name="sparsity", sparsity=list(sparsity), prune_method=["global"])
    summary["sweep"] = [{k: round(r[k], 4) for k in ("target", "sparsity", "map50", "map")} for r in rows["global"]]
    times["sweep"] = time.perf_counter() - t
    t = banner("5/5 export to ONNX and detect with ONNX Runtime")
    summary["export"] = export_and_detect(best, data, out, imgsz)
    times["export_detect"] = time.perf_counter() - t
    summary["seconds"] = {k: round(v, 1) for k, v in times.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def print_summary(s: dict) -> None:
    """The demo's last words: what was trained, how good it is, what sparsity costs, where files are."""
    d = s["dense"]
    LOGGER.info(f"\n{'=' * 20} demo summary {'=' * 20}")
    LOGGER.info(f"dense yolov5n on synthetic shapes: P {d['precision']:.3f} R {d['recall']:.3f} "
                f"mAP50 {d['map50']:.3f} mAP50-95 {d['map']:.3f}")
    LOGGER.info("one-shot global pruning (no fine-tuning):  target  sparsity  mAP50  mAP50-95")
    for r in s["sweep"]:
        LOGGER.info(f"{'':42}{r['target']:6.2f}  {r['sparsity']:8.3f}  {r['map50']:5.3f}  {r['map']:8.3f}")
    LOGGER.info(f"ONNX: {s['export']['onnx']}  detections: {s['export']['detect_dir']}")
    LOGGER.info(f"time per step (s): {s['seconds']}  (total {sum(s['seconds'].values()):.0f} s)")
    LOGGER.info(f"everything is in {s['out']}")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (incremented: runs/demo2, ...)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=160, help="train/val image size")
    p.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    p.add_argument("--n-train", type=int, default=300, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=60, help="synthetic validation images")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7], help="one-shot sweep levels")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict:
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
