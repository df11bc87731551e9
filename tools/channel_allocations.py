"""yolov5s at 640, batch 1, ONNX Runtime end to end: dense vs 50% of conv FLOPs removed by channels, 'uniform' vs
'latency' allocation. Built models are random-init with calibrated BN and head (as benchmark.py builds them);
the pipelines are called interleaved and medians are reported.

    python docs/results/channel640/allocations.py 60 > docs/results/channel640/allocations.txt
"""
import copy, statistics as st, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import torch
from models.yolo import DetectionModel
from utils.assets import assets_dir
from utils.benchmark.pipeline import Pipeline, fill_batch, load_images
from utils.benchmark.variants import calibrate_bn
from utils.engines import load_engine
from utils.export import export_onnx, prepare_model
from utils.sparsity.channel import channel_prune

OUT = ROOT / 'runs/channel640'
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
base = calibrate_bn(DetectionModel(str(ROOT / 'models/yolov5s.yaml')).eval(), 640)
files = {}
for name in ('dense', 'uniform', 'latency'):
    m = copy.deepcopy(base)
    if name != 'dense':
        rep = channel_prune(m, flops_target=0.5, importance='l1', allocation=name, imgsz=640)
        calibrate_bn(m, 640)
        print(f"{name}: conv MACs left {rep['macs_left']:.3f}, widths of the first groups "
              f"{ {k: m.get_submodule(k).conv.out_channels for k in ('model.0', 'model.1', 'model.2.cv1', 'model.3')} }")
    files[name] = OUT / f'yolov5s_{name}.onnx'
    export_onnx(prepare_model(m), files[name], 640, 1)
imgs = fill_batch(load_images(str(assets_dir() / 'images')), 1)
pipes = {n: Pipeline(load_engine(str(f), 'onnxruntime', batch_size=1, imgsz=640), (640, 640)) for n, f in files.items()}
t = {n: [] for n in pipes}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 60):
    for n, p in pipes.items():
        t0 = time.perf_counter(); _, parts = p(imgs); t[n].append((time.perf_counter() - t0, parts))
for n in pipes:
    xs = t[n][5:]
    e2e = st.median(x[0] for x in xs) * 1e3
    parts = [round(st.median(x[1][k] for x in xs), 1) for k in range(3)]
    dense = dense if n != 'dense' else e2e
    print(f'{n}: end to end {e2e:.1f} ms (pre/engine/post {parts}), {dense / e2e:.2f}x dense')
