"""Where the Q/DQ pairs go decides which engine runs an INT8 file fast (issue 17): one model, one calibration, every
placement, engine-only time interleaved call by call against the FP32 file on each engine.

Placements (utils.export.qdq layouts; `head` = Detect's three convs get INT8 weights too):
  all          : Q/DQ on every activation (export's `--int8-format qdq`): ONNX Runtime fuses QLinearConv and the SiLU;
  conv         : conv inputs and outputs only;
  inputs       : conv inputs only (with float Detect convs);
  inputs+head  : conv inputs only, Detect's convs INT8 with float outputs (`--int8-format qdq-inputs`): OpenVINO
                 fuses the float SiLU into its INT8 convs.

Usage:
    python tools/qdq_layouts.py --engines openvino onnxruntime            # yolov5s, random weights, 640
    python tools/qdq_layouts.py --weights yolov5n.pt --layouts all inputs+head --engines openvino
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
from tools.common import DEFAULT_CFG, export_b1, random_model  # noqa: E402
from tools.head_stem import engine_ms  # noqa: E402
from utils.assets import assets_dir  # noqa: E402
from utils.benchmark.machine import ForeignLoadMeter  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.export import load_image_batch  # noqa: E402
from utils.export.qdq import calibrate_ranges, image_batches, quantize_qdq  # noqa: E402

PLACEMENTS = {"all": ("all", False), "conv": ("conv", False), "inputs": ("inputs", False),
              "inputs+head": ("inputs", True)}


def write_files(fp32: Path, calib: list[str], imgsz: int, layouts: list[str]) -> dict[str, Path]:
    """The FP32 file and one QDQ twin per placement, all from one set of calibrated ranges."""
    model = onnx.load(str(fp32))
    ranges = calibrate_ranges(model, image_batches(calib, imgsz))
    files = {"fp32": fp32}
    for name in layouts:
        layout, head = PLACEMENTS[name]
        out = fp32.with_name(f"{fp32.stem}_{name.replace('+', '_')}.onnx")
        onnx.save(quantize_qdq(model, ranges, quantize_head=head, layout=layout), str(out))
        files[name] = out
    return files


def run(weights: str | None = None, cfg: str = DEFAULT_CFG, layouts: tuple[str, ...] = tuple(PLACEMENTS),
        engines: tuple[str, ...] = ("openvino", "onnxruntime"), imgsz: int = 640, calib_images: int = 32,
        runs: int = 20, warmup: int = 3, save_dir: str = "runs/qdq_layouts") -> list[dict]:
    """Every placement on every engine; prints one line per engine and writes results.json to save_dir."""
    unknown = [name for name in layouts if name not in PLACEMENTS]
    if unknown:
        raise ValueError(f"--layouts {' '.join(unknown)}: choose from {', '.join(PLACEMENTS)}")
    out_dir = Path(save_dir)
    model = load_model(weights) if weights else random_model(cfg, imgsz)
    name = Path(weights or cfg).stem
    calib = [str(p) for p in sorted((assets_dir() / "coco128" / "images" / "train2017").glob("*.jpg"))[:calib_images]]
    files = write_files(export_b1(model, out_dir / f"{name}.onnx", imgsz), calib, imgsz, list(layouts))
    x = load_image_batch(assets_dir() / "images" / "bus.jpg", (imgsz, imgsz))
    rows = []
    for engine in engines:
        eng = {k: load_engine(f, engine) for k, f in files.items()}
        with ForeignLoadMeter() as meter:
            ms = engine_ms(eng, x, runs, warmup)
        row = {"model": name, "engine": engine, "ms": ms, "speedup": {k: ms["fp32"] / v for k, v in ms.items()},
               "int8_kernels": {k: e.int8_kernels() for k, e in eng.items()}, "foreign_load": round(meter.foreign, 3)}
        rows.append(row)
        print(f"{name} {engine} (engine only, foreign load {row['foreign_load']:.1%}): " + ", ".join(
            f"{k} {v:.1f} ms ({row['speedup'][k]:.2f}x; {row['int8_kernels'][k]})" for k, v in ms.items()), flush=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="a trained checkpoint (default: --cfg with random weights)")
    p.add_argument("--cfg", default=DEFAULT_CFG, help="model yaml (random weights, calibrated BN and head)")
    p.add_argument("--layouts", nargs="+", default=list(PLACEMENTS), help=f"of {', '.join(PLACEMENTS)}")
    p.add_argument("--engines", nargs="+", default=["openvino", "onnxruntime"], help="onnxruntime, openvino")
    p.add_argument("--imgsz", "--img", type=int, default=640, help="square input size")
    p.add_argument("--calib-images", type=int, default=32, help="coco128 train images the ranges come from")
    p.add_argument("--runs", type=int, default=20, help="timed calls per file, after --warmup")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per file first")
    p.add_argument("--save-dir", default="runs/qdq_layouts", help="where the ONNX files and results.json go")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    run(**vars(opt))


if __name__ == "__main__":
    main(parse_opt())
