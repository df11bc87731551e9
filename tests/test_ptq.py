"""Post-training INT8: the benchmark's INT8 twins and a quick INT8 file without a QAT run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from utils.checkpoint import load_model
from utils.sparsity.oneshot import prune_oneshot
from utils.export.int8 import export_convinteger
from utils.export.metadata import export_metadata
from utils.sparsity.ptq import calibration_batches, quantize_ptq


@pytest.fixture(scope="module")
def yolov5n(yolov5n_pt):
    return load_model(str(yolov5n_pt))


def test_calibration_batches_are_letterboxed_real_images(bus_jpg):
    import cv2

    im = cv2.imread(str(bus_jpg))
    (b,) = calibration_batches((96, 128), [im, im], batch_size=4)
    assert b.shape == (2, 3, 96, 128) and 0 <= b.min() and b.max() <= 1 and b.std() > 0.1


def _unwrapped(key: str) -> str:
    """State-dict key of the float model for a key of the QAT copy (Conv's conv becomes conv.module, BN moves inside)."""
    return key.replace(".conv.module.bn.", ".bn.").replace(".module.", ".")


def test_ptq_keeps_bn_statistics_and_zeros(yolov5n):
    m = prune_oneshot(load_model_copy(yolov5n), 0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n_bn = sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    convs = [k for k, v in before.items() if k.endswith(".weight") and v.ndim == 4]
    zeros = sum(int((before[k] == 0).sum()) for k in convs) / sum(before[k].numel() for k in convs)
    assert n_bn > 50 and abs(zeros - 0.5) < 0.01  # the pruned input really is half zeros

    q = quantize_ptq(m, [torch.rand(1, 3, 64, 64) for _ in range(2)])  # train-mode forwards would move the stats
    assert any(type(x).__name__ == "FakeQuantize" for x in q.modules())
    after = {_unwrapped(k): v for k, v in q.state_dict().items()}

    # every BN statistic and every conv weight survives under its mapped name, bit for bit
    stats = [k for k in before if k.endswith((".running_mean", ".running_var"))]
    assert len(stats) == 2 * n_bn and all(k in after for k in stats)
    assert [k for k in stats if not torch.equal(before[k], after[k])] == []
    assert all(k in after for k in convs) and len(convs) >= n_bn
    assert [k for k in convs if not torch.equal(before[k], after[k])] == []

    # the zeros stay zeros: in the float weights and in what the INT8 export reads (the fake-quantized weight)
    q_zeros = sum(int((after[k] == 0).sum()) for k in convs) / sum(after[k].numel() for k in convs)
    assert abs(q_zeros - zeros) < 1e-9
    n_fq = 0
    for name, mod in q.named_modules():
        if hasattr(mod, "weight_fake_quant"):
            n_fq += 1
            with torch.no_grad():
                wq = mod.weight_fake_quant(mod.weight)
            assert bool((wq[mod.weight == 0] == 0).all()), name
    assert n_fq >= n_bn  # every conv+BN is quantized


def load_model_copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.slow
def test_int8_onnx_runs_in_onnxruntime_and_matches_fp32_detections(yolov5n, bus_jpg, tmp_path):
    import cv2
    import onnxruntime as ort

    im = cv2.imread(str(bus_jpg))
    meta = export_metadata(yolov5n, (320, 320), 1, False, 0.0)
    f = export_convinteger(yolov5n, tmp_path / "int8.onnx", (320, 320), 1, meta, images=[im])
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(f)).graph.node}
    x = calibration_batches((320, 320), [im])[0].numpy()
    y = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0][0]
    with torch.no_grad():
        yolov5n.eval()
        ref = yolov5n(torch.from_numpy(x))[0][0].numpy()
    top = ref[:, 4].argsort()[-5:]  # the most confident anchors: INT8 must agree on them
    assert np.abs(y[top, :2] - ref[top, :2]).max() < 4  # centres within a few pixels at 320
    assert (np.abs(y[top, 2:4] - ref[top, 2:4]) / ref[top, 2:4]).max() < 0.1  # sizes within 10%
    assert np.abs(y[top, 4] - ref[top, 4]).max() < 0.15
