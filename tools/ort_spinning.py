"""ORT e2e with and without intra-op spinning, yolov5s dense vs cp50, batch 1, interleaved.

Needs the ONNX files a benchmark run leaves in runs/benchmark/readme2/models (the README command, --name readme2).
"""
import sys, time, statistics as st
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import onnxruntime as ort
from utils.engines import load_engine
from utils.benchmark.pipeline import Pipeline, load_images, fill_batch
M = str(ROOT / 'runs/benchmark/readme2/models') + '/'
imgs = fill_batch(load_images(str(__import__('utils.assets', fromlist=['assets_dir']).assets_dir() / 'images')), 1)
res = {}
for spin in ('1', '0'):
    orig = ort.SessionOptions
    class SO(orig):
        def __init__(self):
            super().__init__(); self.add_session_config_entry('session.intra_op.allow_spinning', spin)
    ort.SessionOptions = SO
    pipes = {n: Pipeline(load_engine(M + f'yolov5s_{n}_fp32_b1_640x640.onnx', 'onnxruntime', batch_size=1, imgsz=640), (640, 640), 0.25, 0.45, 1000) for n in ('dense', 'cp50')}
    ort.SessionOptions = orig
    t = {n: [] for n in pipes}
    for i in range(50):
        for n, p in pipes.items():
            t0 = time.perf_counter(); _, parts = p(imgs); t[n].append((time.perf_counter() - t0, parts))
    for n in pipes:
        xs = t[n][5:]
        res[(spin, n)] = st.median(x[0] for x in xs) * 1e3
        parts = [st.median(x[1][k] for x in xs) for k in range(3)]
        print(f'spin={spin} {n}: e2e median {res[(spin, n)]:.1f} ms, parts pre/inf/post {parts}', flush=True)
    print(f'spin={spin} ratio dense/cp50 = {res[(spin, "dense")] / res[(spin, "cp50")]:.2f}')
