"""Pre/post-processing overhead end to end, old path against new, interleaved call by call (issue 21).

Batch 1: for each engine, three pipelines over the same images, called in turn (medians per stage):
  old   letterbox + copyMakeBorder + OpenCV blob (float32), the float file, NMS (scoring in torch) + rescale
  new   letterbox_chw: one resize, then one pass per channel straight into the float32 blob, the float file, NMS
        (scoring in numpy) + rescale
  u8    the same into a uint8 NCHW blob, the --uint8-input twin of the file (its graph does the /255)
and checks that all three give the same detections on every image.
NMS (--nms FILE...): non_max_suppression on each file's real batch-1 outputs for bus.jpg and zidane.jpg, candidate
scoring in torch (before issue 21) against numpy (now), interleaved; detections must be equal.
Batch 64 (--b64 FILE): the old pipeline, the new one (sync) and the new one pipelined (pre/post overlapping the
engine on a second thread), alternating blocks of --blocks batches, items/s medians, same detections check.

Usage:
    python tools/e2e_overhead.py --pair yolov5s.onnx yolov5s_u8.onnx --engines onnxruntime openvino deepsparse
    python tools/e2e_overhead.py --nms yolov5s.onnx yolov5n.onnx --runs 300
    python tools/e2e_overhead.py --pre-only --runs 300
    python tools/e2e_overhead.py --b64 yolov5s_cp50_int8_b64.onnx --engines deepsparse --rounds 6
Files: any FP32 file and its `export.py --uint8-input` twin (same weights, same static shape).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.augmentations import letterbox, to_blob  # noqa: E402
from utils.benchmark.machine import ForeignLoadMeter  # noqa: E402
from utils.benchmark.pipeline import Pipeline, fill_batch, load_images  # noqa: E402
from utils.benchmark.runner import run_pipelined  # noqa: E402
from utils.assets import assets_dir  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.predict import Letterboxer  # noqa: E402
from utils import nms  # noqa: E402


def torch_candidates(prediction, conf_thres, multi_label, labels):
    """utils.nms._candidates before issue 21: objectness filter and scoring in torch (intra-op threads)."""
    img, row = (prediction[..., 4] > conf_thres).nonzero(as_tuple=True)
    if not len(img):
        return prediction.new_zeros((0, 6)), img
    x, src = nms._score(prediction[img, row], conf_thres, multi_label)
    return x, img[src]


def nms_ab(files: list[str], images: list[np.ndarray], runs: int) -> None:
    new_candidates = nms._candidates
    for f in files:
        eng = load_engine(f, "onnxruntime", batch_size=1, imgsz=(640, 640))
        pipe = Pipeline(eng, (640, 640))
        for name, im in zip(("bus", "zidane"), images):
            x, meta = pipe.preprocess([im])
            pred = torch.from_numpy(eng(x).copy())
            t: dict[str, list[float]] = {"torch": [], "numpy": []}
            out = {}
            with ForeignLoadMeter() as meter:
                for _ in range(runs):
                    for k, fn in (("torch", torch_candidates), ("numpy", new_candidates)):
                        nms._candidates = fn
                        s = time.perf_counter()
                        out[k] = nms.non_max_suppression(pred, 0.25, 0.45, max_det=1000)
                        t[k].append((time.perf_counter() - s) * 1e3)
            nms._candidates = new_candidates
            same = all(torch.equal(a, b) for a, b in zip(out["torch"], out["numpy"]))
            med = {k: statistics.median(v) for k, v in t.items()}
            p90 = {k: float(np.percentile(v, 90)) for k, v in t.items()}
            print(f"NMS {Path(f).name} {name}: {int((pred[..., 4] > 0.25).sum())} rows pass objectness, "
                  f"{len(out['numpy'][0])} kept, equal {same}; median torch {med['torch']:.3f} ms, numpy "
                  f"{med['numpy']:.3f} ms ({med['numpy'] / med['torch']:.2f}x); p90 {p90['torch']:.3f} -> "
                  f"{p90['numpy']:.3f} ms; foreign load {meter.foreign:.1%}")


class OldPipeline(Pipeline):
    """The pipeline before issue 21: letterbox (resize, copyMakeBorder) then OpenCV's blob; NMS scoring in torch."""

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
        batch, meta = [], []
        for im0 in images:
            im, ratio, pad = letterbox(im0, self.imgsz, auto=False, stride=self.engine.stride)
            batch.append(im)
            meta.append((im.shape[:2], im0.shape[:2], (ratio, pad)))
        return to_blob(batch), meta

    def postprocess(self, pred: np.ndarray, meta: list[tuple]) -> list[np.ndarray]:
        """NMS with the candidate scoring in torch, as before issue 21."""
        new, nms._candidates = nms._candidates, torch_candidates
        try:
            return super().postprocess(pred, meta)
        finally:
            nms._candidates = new


def same_detections(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max((float(np.abs(x - y).max()) for x, y in zip(a, b) if x.size), default=0.0)


def batch1(files: tuple[str, str], engines: list[str], images: list[np.ndarray], runs: int, warmup: int,
           threads: int | None) -> None:
    for engine in engines:
        f32 = load_engine(files[0], engine, batch_size=1, imgsz=(640, 640), num_threads=threads)
        u8 = load_engine(files[1], engine, batch_size=1, imgsz=(640, 640), num_threads=threads)
        pipes = {"old": OldPipeline(f32, (640, 640)), "new": Pipeline(f32, (640, 640)), "u8": Pipeline(u8, (640, 640))}
        checks = []
        for im in images:
            d = {k: p([im])[0] for k, p in pipes.items()}
            checks.append((same_detections(d["old"], d["new"]), max_diff(d["old"], d["u8"]),
                           sum(len(x) for x in d["old"])))
        t: dict[str, list] = {k: [] for k in pipes}
        for _ in range(warmup):
            for p in pipes.values():
                p([images[0]])
        with ForeignLoadMeter() as meter:
            for i in range(runs):
                im = images[i % len(images)]
                for k, p in pipes.items():
                    s = time.perf_counter()
                    _, stages = p([im])
                    t[k].append((*stages, (time.perf_counter() - s) * 1e3))
        print(f"\n{engine} {Path(files[0]).name} vs {Path(files[1]).name}: {runs} interleaved calls, foreign load "
              f"{meter.foreign:.1%}; detections old==new {[c[0] for c in checks]}, old vs u8 max |diff| "
              f"{[round(c[1], 6) for c in checks]}, boxes {[c[2] for c in checks]}")
        med = {k: [statistics.median(x[j] for x in v) for j in range(4)] for k, v in t.items()}
        for k, (pre, eng, post, tot) in med.items():
            share = (pre + post) / tot
            print(f"  {k:4s} pre {pre:6.2f}  engine {eng:7.2f}  post {post:5.2f}  total {tot:7.2f} ms  "
                  f"pre+post {share:5.1%}  total/old {tot / med['old'][3]:.3f}  pre+engine/old "
                  f"{(pre + eng) / (med['old'][0] + med['old'][1]):.3f}")


def batch64(file: str, engines: list[str], images: list[np.ndarray], rounds: int, blocks: int, warmup: int,
            threads: int | None) -> None:
    batch = fill_batch(images, 64)
    for engine in engines:
        eng = load_engine(file, engine, batch_size=64, imgsz=(640, 640), num_threads=threads)
        pipe, before = Pipeline(eng, (640, 640)), OldPipeline(eng, (640, 640))
        plain = [pipe(batch)[0] for _ in range(2)]
        piped = [d for d, _ in run_pipelined(pipe, [batch, batch])]
        ok = all(same_detections(a, b) for a, b in zip(plain, piped)) and same_detections(before(batch)[0], plain[0])
        for _ in range(warmup):
            pipe(batch)
        rates: dict[str, list[float]] = {"old": [], "sync": [], "pipelined": []}
        stages: dict[str, list[tuple]] = {"old": [], "sync": []}
        with ForeignLoadMeter() as meter:
            for _ in range(rounds):
                for k, p in (("old", before), ("sync", pipe)):
                    s = time.perf_counter()
                    for _ in range(blocks):
                        stages[k].append(p(batch)[1])
                    rates[k].append(blocks * 64 / (time.perf_counter() - s))
                s = time.perf_counter()
                for _ in run_pipelined(pipe, (batch for _ in range(blocks))):
                    pass
                rates["pipelined"].append(blocks * 64 / (time.perf_counter() - s))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\n{engine} {Path(file).name} batch 64: {rounds} rounds of {blocks} batches per arm, foreign load "
              f"{meter.foreign:.1%}; detections old == new == pipelined: {ok}")
        for k, v in stages.items():
            pre, eng_ms, post = (statistics.median(x[j] for x in v) for j in range(3))
            print(f"  {k:9s} pre {pre:5.0f}  engine {eng_ms:5.0f}  post {post:4.0f} ms/batch")
        for k in rates:
            print(f"  {k:9s} {med[k]:6.2f} items/s  {med[k] / med['old']:.2f}x old  {med[k] / med['sync']:.2f}x sync")


def pre_only(images: list[np.ndarray], runs: int) -> None:
    """Pre-processing alone (no engine between calls): old letterbox + blob, new float32, new uint8, interleaved."""
    lb = Letterboxer()
    arms = {"old": lambda b: to_blob([letterbox(im, (640, 640), auto=False)[0] for im in b]),
            "new": lambda b: lb(b, (640, 640), False, 32), "u8": lambda b: lb(b, (640, 640), False, 32, np.uint8)}
    for n, reps in ((1, runs), (64, max(runs // 20, 3))):
        b = fill_batch(images, n)
        t: dict[str, list[float]] = {k: [] for k in arms}
        with ForeignLoadMeter() as meter:
            for _ in range(reps):
                for k, f in arms.items():
                    s = time.perf_counter()
                    f(b)
                    t[k].append((time.perf_counter() - s) * 1e3)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"pre only, batch {n}: old {med['old']:.2f}, new {med['new']:.2f} ({med['new'] / med['old']:.2f}x), "
              f"uint8 {med['u8']:.2f} ms ({med['u8'] / med['old']:.2f}x); foreign load {meter.foreign:.1%}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=2, help="float ONNX file and its --uint8-input twin (batch 1, 640)")
    p.add_argument("--b64", help="batch-64 file: sync against pipelined")
    p.add_argument("--pre-only", action="store_true", help="time pre-processing alone, batch 1 and 64")
    p.add_argument("--nms", nargs="+", help="batch-1 files whose real outputs NMS is timed on")
    p.add_argument("--engines", nargs="+", default=["onnxruntime"])
    p.add_argument("--source", default=str(assets_dir() / "images"))
    p.add_argument("--runs", type=int, default=60, help="batch-1 calls per pipeline")
    p.add_argument("--rounds", type=int, default=5, help="batch-64 rounds (one block per arm)")
    p.add_argument("--blocks", type=int, default=3, help="batch-64 batches per block")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    opt = p.parse_args(argv)
    images = load_images(opt.source)
    if opt.pair:
        batch1(tuple(opt.pair), opt.engines, images, opt.runs, opt.warmup, opt.threads)
    if opt.pre_only:
        pre_only(images, opt.runs)
    if opt.nms:
        nms_ab(opt.nms, images, opt.runs)
    if opt.b64:
        batch64(opt.b64, opt.engines, images, opt.rounds, opt.blocks, opt.warmup, opt.threads)


if __name__ == "__main__":
    main()
