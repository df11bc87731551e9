"""Two export layouts that could cut fixed costs (issue 21), timed interleaved call by call on every engine.

head: Detect's decode inside the graph (export.py's default) against `--head raw`, where the file ends at Detect's
      convs and NMS decodes only the cells that pass objectness; end to end (pre + engine + post), same detections.
stem: YOLOv5's 6x6 stride-2 stem conv against the same conv as SpaceToDepth(2) + 3x3 stride-1 on 12 channels
      (identical outputs up to float rounding: Focus's layout); engine only.

Usage:
    python tools/head_stem.py --engines onnxruntime openvino deepsparse --runs 40
    python tools/head_stem.py --weights yolov5n.pt --cfg models/yolov5s.yaml     # official and random-weight models
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401  (sets NM_DISABLE_ANALYTICS before any Neural Magic import)
from tools.common import DEFAULT_SOURCE, export_b1, random_model, time_interleaved  # noqa: E402
from utils.assets import asset  # noqa: E402
from utils.benchmark.machine import ForeignLoadMeter  # noqa: E402
from utils.benchmark.pipeline import Pipeline, load_images  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.export.head import model_head, strip_decode  # noqa: E402
from utils.raw_head import as_dense  # noqa: E402


def space_to_depth_stem(src: Path, dst: Path) -> Path:
    """Rewrite the first Conv (6x6, stride 2, pad 2) as SpaceToDepth(2) + 3x3 stride-1 pad-1 conv, same math."""
    proto = onnx.load(str(src))
    graph = proto.graph
    index, conv = next((i, n) for i, n in enumerate(graph.node) if n.op_type == "Conv")
    init = next(i for i in graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init)
    if w.shape[2:] != (6, 6):
        raise ValueError(f"{src}: the first conv is {w.shape[2]}x{w.shape[3]}, not YOLOv5's 6x6 stem")
    c = w.shape[1]
    w3 = np.zeros((w.shape[0], 4 * c, 3, 3), np.float32)
    for r in range(2):  # SpaceToDepth channel (r * 2 + s) * C + c holds input pixel (2i + r, 2j + s) of channel c
        for s in range(2):
            w3[:, (r * 2 + s) * c:(r * 2 + s + 1) * c] = w[:, :, r::2, s::2]
    init.CopyFrom(numpy_helper.from_array(w3, init.name))
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}
    for a in conv.attribute:
        if a.name in attrs:
            a.ints[:] = attrs[a.name]
    graph.node.insert(index, helper.make_node("SpaceToDepth", [conv.input[0]], ["stem_s2d"], blocksize=2))
    conv.input[0] = "stem_s2d"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return dst


def engine_ms(engines: dict, x: np.ndarray, runs: int, warmup: int) -> dict[str, float]:
    """Median ms of each engine's call on x, called in turn."""
    times: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(warmup + runs):
        for k, eng in engines.items():
            t0 = time.perf_counter()
            eng(x)
            if i >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same detections: same count, boxes/scores within float rounding of pixel coordinates."""
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-3))


def files_for(name: str, model, imgsz: int, save_dir: Path) -> dict[str, Path]:
    """decoded, raw and raw + space-to-depth stem files of one model (batch 1, static)."""
    dec = export_b1(model, save_dir / f"{name}.onnx", imgsz)
    raw = strip_decode(Path(shutil.copy(dec, save_dir / f"{name}_raw.onnx")), model_head(model))
    return {"decoded": dec, "raw": raw, "raw_s2d": space_to_depth_stem(raw, save_dir / f"{name}_raw_s2d.onnx")}


def measure(name: str, files: dict[str, Path], engine: str, images: list, imgsz: int, runs: int, warmup: int,
            threads: int | None) -> dict:
    """One model on one engine: head (end to end) and stem (engine only), with the foreign load of each window."""
    eng = {k: load_engine(f, engine, num_threads=threads) for k, f in files.items()}
    pipes = {k: Pipeline(eng[k], (imgsz, imgsz)) for k in ("decoded", "raw")}
    same = all(_same(pipes["decoded"]([im])[0][0], pipes["raw"]([im])[0][0]) for im in images)
    x = pipes["raw"].preprocess(images[:1])[0]
    stem_diff = max(float(np.abs(a - b).max()) for a, b in zip(eng["raw"](x).maps, eng["raw_s2d"](x).maps))
    with ForeignLoadMeter() as m1:
        head = time_interleaved(pipes, images[:1], runs, warmup)
    with ForeignLoadMeter() as m2:
        stem = engine_ms({k: eng[k] for k in ("raw", "raw_s2d")}, x, runs, warmup)
    return {"model": name, "engine": engine, "head": head, "raw_vs_decoded_e2e": head["raw"]["e2e_ms"] /
            head["decoded"]["e2e_ms"], "same_detections": bool(same), "stem_ms": stem,
            "s2d_vs_6x6_engine": stem["raw_s2d"] / stem["raw"], "stem_max_abs_diff": stem_diff,
            "foreign_load": [round(m1.foreign, 3), round(m2.foreign, 3)],
            "decoded_dense_equal": bool(np.allclose(as_dense(eng["raw"](x)), eng["decoded"](x), atol=1e-2))}


def run(weights: list[str] | None = None, cfg: list[str] | None = None, engines: tuple[str, ...] = ("onnxruntime",),
        imgsz: int = 640, runs: int = 40, warmup: int = 5, threads: int | None = None, source: str = DEFAULT_SOURCE,
        save_dir: str = "runs/head_stem") -> list[dict]:
    """Every model x engine; prints one line each and writes results.json to save_dir."""
    out_dir = Path(save_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = [(Path(w).stem, load_model(w)) for w in weights or []]
    models += [(Path(c).stem + "_random", random_model(c, imgsz)) for c in cfg or []]
    images = load_images(source)
    rows = []
    for name, model in models:
        files = files_for(name, model, imgsz, out_dir)
        for engine in engines:
            r = measure(name, files, engine, images, imgsz, runs, warmup, threads)
            rows.append(r)
            print(f"{name} {engine}: end to end decoded {r['head']['decoded']['e2e_ms']:.2f} ms, raw "
                  f"{r['head']['raw']['e2e_ms']:.2f} ms ({r['raw_vs_decoded_e2e']:.3f}x, same detections "
                  f"{r['same_detections']}); engine 6x6 stem {r['stem_ms']['raw']:.2f} ms, space-to-depth "
                  f"{r['stem_ms']['raw_s2d']:.2f} ms ({r['s2d_vs_6x6_engine']:.3f}x); foreign load "
                  f"{r['foreign_load']}", flush=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="*", default=[str(asset("weights/yolov5n.pt"))], help="trained checkpoints")
    p.add_argument("--cfg", nargs="*", default=[str(ROOT / "models/yolov5s.yaml")],
                   help="model yamls (random weights, calibrated BN and head, as benchmark.py builds them)")
    p.add_argument("--engines", nargs="+", default=["onnxruntime"], help="onnxruntime, openvino, deepsparse")
    p.add_argument("--imgsz", "--img", type=int, default=640, help="square input size")
    p.add_argument("--runs", type=int, default=40, help="timed calls per file, after --warmup")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per file first")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: the engine's own)")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="image file or folder")
    p.add_argument("--save-dir", default="runs/head_stem", help="where the ONNX files and results.json go")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> list[dict]:
    return run(**vars(opt))


if __name__ == "__main__":
    main(parse_opt())
