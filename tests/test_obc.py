"""OBS/SparseGPT reconstruction pruning: the update is exact least squares, targets are hit, [1,4] blocks hold."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.sparsity.measure import global_sparsity, prunable_parameters
from utils.sparsity.obc import (ObcConfig, dense_target, inverse_cholesky, layer_columns, obc_prune, prune_layer,
                                sparsegpt)
from utils.sparsity.oneshot import split_targets


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs are dominated by thread hand-offs on a shared 2-core box (17 ms vs 0.8 ms each): run them on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_yolo(nc: int = 2) -> nn.Module:
    """A real YOLOv5 graph (C3, SPPF, Concat skips, Detect) at 1/8 width of yolov5n so it runs in milliseconds."""
    from models.yolo import DetectionModel, load_yaml_cfg

    cfg = load_yaml_cfg("yolov5n.yaml")
    cfg.update(width_multiple=0.125, nc=nc)
    torch.manual_seed(0)
    model = DetectionModel(cfg).eval()
    with torch.no_grad():  # trained-looking BN so BN-gain weighting matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def images(n: int = 4, size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g) for _ in range(n // 2)]


def row_lstsq(w: torch.Tensor, X: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Brute force: the best row with `pruned` entries zero, min ||w' X - w X||^2 over the kept entries."""
    keep = ~pruned
    sol = torch.linalg.lstsq(X[keep].T, (w @ X).unsqueeze(1)).solution.squeeze(1)
    out = torch.zeros_like(w)
    out[keep] = sol
    return out


@pytest.mark.parametrize("kernel, stride, pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (6, 2, 2)])
def test_layer_columns_reproduce_the_conv(kernel, stride, pad):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, kernel, stride, pad, bias=False)
    x = torch.randn(2, 5, 11, 13)
    cols = layer_columns(conv, x)
    y = conv(x).flatten(2)
    for b in range(2):
        torch.testing.assert_close(conv.weight.flatten(1) @ cols[b], y[b], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blocksize", [8, 3, 1])
def test_update_is_exact_least_squares_for_prefix_masks(blocksize):
    """With each row's pruned set a prefix of the column order, the sequential OBS update is the optimum itself."""
    torch.manual_seed(1)
    d, n = 8, 64
    X = torch.randn(d, n, dtype=torch.float64)
    X[1] += 0.8 * X[0]  # correlated inputs: compensation actually matters
    W = torch.randn(4, d, dtype=torch.float64)
    mask = torch.zeros(4, d, dtype=torch.bool)
    for r, k in enumerate([1, 2, 3, 5]):
        mask[r, :k] = True
    new, pruned = sparsegpt(W, X @ X.T, 0, blocksize=blocksize, damp=0.0, mask=mask)
    assert torch.equal(pruned, mask)
    for r in range(4):
        torch.testing.assert_close(new[r], row_lstsq(W[r], X, mask[r]), atol=1e-9, rtol=1e-7)


def test_single_weight_matches_the_obs_formula():
    """Removing w_q alone: delta = -w_q / [H^-1]_qq * H^-1[:, q] (Hassibi & Stork), here for q = the first column."""
    torch.manual_seed(2)
    X = torch.randn(6, 40, dtype=torch.float64)
    H = X @ X.T
    w = torch.randn(1, 6, dtype=torch.float64)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 0] = True
    new, _ = sparsegpt(w, H, 0, damp=0.0, mask=mask)
    Hinv = torch.linalg.inv(H)
    expected = w[0] - w[0, 0] / Hinv[0, 0] * Hinv[:, 0]
    torch.testing.assert_close(new[0], expected, atol=1e-10, rtol=1e-8)
    assert new[0, 0] == 0


def test_saliency_and_compensation_beat_magnitude():
    torch.manual_seed(3)
    d = 32
    X = torch.randn(d, 400, dtype=torch.float64) * torch.linspace(0.1, 3, d).view(-1, 1).double()
    X[5:10] += X[:5]
    H = X @ X.T / 400
    W = torch.randn(16, d, dtype=torch.float64)
    k = W.numel() // 2
    new, pruned = sparsegpt(W, H, k, blocksize=8)
    mag = W.clone()
    mag.view(-1)[W.abs().flatten().argsort()[:k]] = 0

    def err(A: torch.Tensor) -> float:
        return float(torch.trace((A - W) @ H @ (A - W).T))

    assert int(pruned.sum()) == k and int((new == 0).sum()) == k
    assert err(new) < 0.5 * err(mag)  # input scales differ by 30x: magnitude ignores them


def test_dense_target_is_identity_when_inputs_are_exact():
    torch.manual_seed(4)
    X = torch.randn(5, 30, dtype=torch.float64)
    H = X @ X.T / 30
    W = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(dense_target(W, H, H.clone()), W)
    Xp = X + 0.1 * torch.randn_like(X)  # pruned-model input: the refit maps it back onto the dense output
    Hp, G = Xp @ Xp.T / 30, X @ Xp.T / 30
    W_star = dense_target(W, Hp, G, damp=0.0)
    torch.testing.assert_close(W_star, torch.linalg.lstsq(Xp.T, (W @ X).T).solution.T, atol=1e-8, rtol=1e-6)


def test_inverse_cholesky_survives_dead_inputs():
    H = torch.zeros(4, 4, dtype=torch.float64)
    H[0, 0] = H[1, 1] = 2.0
    U = inverse_cholesky(H)
    assert torch.isfinite(U).all() and torch.allclose(U, torch.triu(U))


def test_prune_layer_linear_exact_count():
    torch.manual_seed(5)
    lin = nn.Linear(12, 6, bias=False)
    X = torch.randn(200, 12)
    assert prune_layer(lin, (X.T @ X).double() / 200, 30) == 30
    assert int((lin.weight == 0).sum()) == 30


@pytest.mark.parametrize("sequential", ["layer", "stage"])
@pytest.mark.parametrize("sparsity", [0.3, 0.6])
def test_obc_prune_hits_the_global_target(sequential, sparsity):
    model = tiny_yolo()
    n = sum(p.numel() for p in prunable_parameters(model).values())
    obc_prune(model, sparsity, images(), allocation="uniform", config=ObcConfig(sequential=sequential))
    zeros = sum(int((p == 0).sum()) for p in prunable_parameters(model).values())
    assert abs(zeros - sparsity * n) <= 1
    included, excluded = split_targets(model, None)
    assert all(int((p == 0).sum()) == 0 for p in excluded.values())  # stem stays dense
    assert global_sparsity(model) == pytest.approx(sparsity, abs=1 / n)


def test_obc_prune_generic_module_and_global_allocation():
    """A plain Sequential (no YOLOv5 stages) is reconstructed as one stage; global allocation also sums exactly."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.SiLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 4)).eval()
    batches = [torch.rand(4, 3, 16, 16) for _ in range(2)]
    obc_prune(model, 0.5, batches, exclude=())
    n = sum(p.numel() for p in prunable_parameters(model).values())
    assert abs(global_sparsity(model) * n - 0.5 * n) <= 1


def test_obc_reconstruction_beats_magnitude_on_the_output():
    from utils.sparsity.oneshot import prune_oneshot

    dense = tiny_yolo()
    batches = images(8)
    x = batches[0].float() / 255
    with torch.no_grad():
        ref = dense(x)[0]
    errs = {}
    for name in ("magnitude", "obc"):
        m = tiny_yolo()
        if name == "obc":
            obc_prune(m, 0.5, batches, allocation="uniform")
        else:
            prune_oneshot(m, 0.5, method="layerwise")
        with torch.no_grad():
            errs[name] = float(((m(x)[0] - ref) ** 2).mean())
    assert errs["obc"] < errs["magnitude"]


def test_block4_groups_are_whole():
    """[1,4]: in every (out, ky, kx) position, input channels 4c..4c+3 are all zero or all kept (SparseML layout)."""
    model = tiny_yolo()
    obc_prune(model, 0.5, images(), allocation="uniform", config=ObcConfig(block4=True))
    included, _ = split_targets(model, None)
    n = sum(p.numel() for p in prunable_parameters(model).values())
    for name, p in included.items():
        blocks = p.detach().permute(0, 2, 3, 1).reshape(-1, 4) == 0
        assert torch.all(blocks.all(1) | ~blocks.any(1)), name
    assert abs(global_sparsity(model) - 0.5) <= 2 * len(included) / n


@pytest.mark.slow
def test_prune_sweep_with_obc_and_recal(tmp_path, coco128_dir, yolov5n_pt):
    import csv

    import prune
    from tests.test_val import coco128_yaml

    data = coco128_yaml(tmp_path, coco128_dir, n=8)
    res = prune.run(data=str(data), weights=str(yolov5n_pt), imgsz=128, batch_size=8, sweep=[0.0, 0.5],
                    method=["obc", "layerwise+recal"], calib_images=8, project=str(tmp_path), name="s", workers=0)
    assert set(res) == {"obc", "layerwise+recal"}
    for rows in res.values():
        assert [round(r["sparsity"], 3) for r in rows] == [0.0, 0.5]
    assert res["obc"][1]["map50"] > res["layerwise+recal"][1]["map50"]
    with open(tmp_path / "s" / "sparsity_map.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"obc", "layerwise+recal"}


@pytest.mark.slow
def test_export_deprecated_sparsity_alias_prunes_before_export(tmp_path, yolov5n_pt, project_log):
    """export.py --sparsity still works: it names the prune.py command and prunes through the same registry."""
    import shutil

    import onnx

    import export

    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)  # beside a writable copy, so the ONNX lands in tmp_path
    files = export.main(export.parse_opt(["--weights", str(weights), "--img", "96", "--sparsity", "0.5",
                                          "--prune-method", "global"]))
    assert files[0] == tmp_path / "yolov5n_global50.onnx"
    assert "python prune.py --weights" in project_log.text and "deprecated" in project_log.text
    meta = {p.key: p.value for p in onnx.load(str(files[0])).metadata_props}
    assert abs(float(meta["sparsity"]) - 0.5) < 1e-3
    with pytest.raises(ValueError, match="--data"):
        export.main(export.parse_opt(["--weights", str(weights), "--img", "96", "--sparsity", "0.5",
                                      "--prune-method", "obc"]))


def test_layer_stats_position_subset_estimates_h_and_pairs_dense_columns():
    """A random subset of output positions estimates H; the dense input uses the very same positions (G == H)."""
    from utils.sparsity.obc import LayerStats

    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, 1, 1, bias=False)
    x = torch.randn(4, 4, 32, 32)
    full, sub = LayerStats(36), LayerStats(36, cross=True, max_positions=256)
    full.add(conv, x)
    sub.add(conv, x, x.clone())
    assert full.n == 4 * 1024 and sub.n == 4 * 256
    H_full, _ = full.mean()
    H_sub, G_sub = sub.mean()
    assert torch.allclose(G_sub, H_sub)  # same columns for the pruned and the dense input
    assert (H_sub - H_full).norm() / H_full.norm() < 0.25  # 1/4 of the positions: sampling error only
