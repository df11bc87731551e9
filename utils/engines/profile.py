"""Per-layer time from ONNX Runtime's own profiler, summed per YOLOv5 layer (model.N), to see where time goes.

    python -m utils.engines.profile yolov5s.onnx yolov5s_cp50.onnx --runs 10
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from utils.engines.onnxruntime_engine import import_onnxruntime, session_options

LAYER = re.compile(r"model[./](\d+)")


def layer_of(node_name: str) -> str:
    """'model.17' for '/model/model.17/cv3/conv/Conv_output_0_nchwc_kernel_time'; 'other' when no layer is named."""
    m = LAYER.findall(node_name)
    return f"model.{m[-1]}" if m else "other"


def profile_onnxruntime(path: str | Path, runs: int = 10, warmup: int = 2, threads: int | None = None) -> dict:
    """{layer: ms per run} from ORT's profiler (same session settings as our engine), plus 'total'."""
    ort = import_onnxruntime()
    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"{Path(path).stem}_ortprofile")  # removed after
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    for _ in range(warmup + runs):
        session.run(None, {inp.name: x})
    return summarize_trace(session.end_profiling(), runs, warmup)


def summarize_trace(trace: str | Path, runs: int, warmup: int) -> dict:
    """Node kernel times of the last `runs` model runs, summed per layer, in ms per run; the trace file is removed."""
    events = json.loads(Path(trace).read_text())
    os.remove(trace)
    starts = [e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first = sorted(starts)[warmup] if len(starts) > warmup else 0
    per_layer: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first:
            per_layer[layer_of(e["name"])] += e["dur"] / 1e3 / runs
    per_layer["total"] = sum(per_layer.values())
    return dict(per_layer)


def format_layers(profiles: dict[str, dict]) -> str:
    """Markdown table: one row per layer, ms per run for each file (and its share of that file's total)."""
    names = list(profiles)
    layers = sorted({k for p in profiles.values() for k in p if k != "total"},
                    key=lambda k: (k == "other", int(k.split(".")[1]) if k != "other" else 0))
    lines = ["| layer | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in layers + ["total"]:
        cells = [f"{p.get(k, 0):.1f} ms ({p.get(k, 0) / p['total']:.0%})" for p in profiles.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", nargs="+", help="ONNX files (static shapes, e.g. from benchmark.py runs/*/models)")
    ap.add_argument("--runs", type=int, default=10, help="profiled runs after 2 warm-up runs")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's)")
    a = ap.parse_args()
    from utils.cli import exit_on_user_error
    from utils.engines import check_onnx_file

    with exit_on_user_error():  # a missing or non-ONNX file: one line naming it
        for f in a.onnx:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{f}: ONNX file not found; export one with `python export.py --weights x.pt`")
            check_onnx_file(f)
        print(format_layers({Path(f).stem: profile_onnxruntime(f, a.runs, threads=a.threads) for f in a.onnx}))
