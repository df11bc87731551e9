"""One-shot pruning and BN re-calibration on tiny YOLOv5-shaped Conv-BN nets."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from utils.sparsity.measure import global_sparsity, prunable_parameters
from utils.sparsity.oneshot import (
    DEFAULT_EXCLUDE,
    DETECT_HEAD,
    bn_recalibrate,
    following_batchnorms,
    prune_oneshot,
    split_targets,
)


class Conv(nn.Module):
    """YOLOv5 Conv layout: .conv then .bn siblings."""

    def __init__(self, c1: int, c2: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Head(nn.Module):
    """Detect-like: a ModuleList `m` of 1x1 output convs with bias and no BN."""

    def __init__(self, c1: int, no: int) -> None:
        super().__init__()
        self.m = nn.ModuleList([nn.Conv2d(c1, no, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m[0](x)


class TinyYolo(nn.Module):
    """Names follow YOLOv5 ('model.0.conv.weight', 'model.3.m.0.weight') so the default exclusions apply."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(Conv(3, 8), Conv(8, 16), Conv(16, 16, 1), Head(16, 7))
        with torch.no_grad():  # trained-looking BN: varied gamma and running stats
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def total_zeros(model: nn.Module) -> int:
    return sum(zeros(p) for p in prunable_parameters(model).values())


def n_prunable(model: nn.Module) -> int:
    return sum(p.numel() for p in prunable_parameters(model).values())


@pytest.mark.parametrize("method", ["global", "layerwise"])
@pytest.mark.parametrize("sparsity, exclude", [(0.1, None), (0.5, None), (0.77, None), (0.95, ())])
def test_hits_target_exactly(method, sparsity, exclude):
    model = prune_oneshot(TinyYolo(), sparsity, method=method, exclude=exclude)
    assert abs(total_zeros(model) - sparsity * n_prunable(model)) <= 1
    assert global_sparsity(model) == pytest.approx(sparsity, abs=1 / n_prunable(model))


def test_default_exclusion_is_the_stem_only():
    _, excluded = split_targets(TinyYolo())
    assert set(excluded) == {"model.0.conv.weight"}
    _, excluded = split_targets(TinyYolo(), exclude=())
    assert not excluded


@pytest.mark.parametrize("method", ["global", "layerwise"])
def test_excluded_layers_untouched(method):
    model = TinyYolo()
    _, excluded = split_targets(model, (*DEFAULT_EXCLUDE, DETECT_HEAD))
    assert set(excluded) == {"model.0.conv.weight", "model.3.m.0.weight"}
    before = {n: p.detach().clone() for n, p in excluded.items()}
    prune_oneshot(model, 0.6, method=method, exclude=(*DEFAULT_EXCLUDE, DETECT_HEAD))
    assert all(torch.equal(p, before[n]) for n, p in excluded.items())
    assert global_sparsity(model) == pytest.approx(0.6, abs=1 / n_prunable(model))


def test_layerwise_gives_equal_fraction_per_layer():
    model = prune_oneshot(TinyYolo(), 0.5, method="layerwise", exclude=())
    for name, p in prunable_parameters(model).items():
        assert abs(zeros(p) - 0.5 * p.numel()) <= 1, name


def test_layerwise_matches_torch_l1_unstructured():
    """Ultralytics' prune() baseline: l1_unstructured per conv, then prune.remove."""
    ours = prune_oneshot(TinyYolo(), 0.5, method="layerwise", exclude=())
    ref = TinyYolo()
    for m in ref.modules():
        if isinstance(m, nn.Conv2d):
            torch_prune.l1_unstructured(m, name="weight", amount=0.5)
            torch_prune.remove(m, "weight")
    for (name, a), b in zip(prunable_parameters(ours).items(), prunable_parameters(ref).values()):
        assert torch.equal(a, b), name  # every layer has an even size, so rounding cannot differ


def test_global_prefers_channels_with_tiny_gamma():
    model = TinyYolo()
    conv, bn = model.model[1].conv, model.model[1].bn
    with torch.no_grad():
        conv.weight[:4] *= 10  # large raw weights: |w| alone would keep these channels
        bn.weight[:4] = 1e-6  # but BN silences their outputs, so they matter least
    share = conv.weight[:4].numel() / n_prunable(model)
    prune_oneshot(model, share, method="global", exclude=())
    assert zeros(conv.weight[:4]) == conv.weight[:4].numel()
    assert zeros(conv.weight[4:]) == 0


def test_global_without_bn_uses_raw_magnitude():
    model = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(0.01)
    prune_oneshot(model, 0.5, method="global", exclude=())
    assert zeros(model[2].weight) == 16 and zeros(model[0].weight) == 0


def test_following_batchnorms_finds_yolo_conv_and_sequential_pairs():
    model = TinyYolo()
    found = following_batchnorms(model)
    assert found["model.1.conv.weight"] is model.model[1].bn
    assert "model.3.m.0.weight" not in found  # Detect-like head: no BN, falls back to |w|
    seq = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1), nn.BatchNorm2d(3))
    assert set(following_batchnorms(seq)) == {"0.weight"}  # channel count must match


def test_no_hooks_or_reparametrisation_remain():
    model = TinyYolo()
    torch_prune.random_unstructured(model.model[2].conv, name="weight", amount=0.3)  # leftover torch pruning
    prune_oneshot(model, 0.6)
    for m in model.modules():
        assert not m._forward_pre_hooks
        assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask")
    assert isinstance(model.model[2].conv.weight, nn.Parameter)
    assert global_sparsity(model) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("method", ["global", "layerwise"])
def test_pruning_is_idempotent(method):
    model = prune_oneshot(TinyYolo(), 0.7, method=method)
    first = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    prune_oneshot(model, 0.7, method=method)
    assert all(torch.equal(p, first[n]) for n, p in prunable_parameters(model).items())


def test_lower_target_never_revives_weights():
    model = prune_oneshot(TinyYolo(), 0.7)
    prune_oneshot(model, 0.3)
    assert global_sparsity(model) == pytest.approx(0.7, abs=1e-3)


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="unknown one-shot pruning method"):
        prune_oneshot(TinyYolo(), 0.5, method="random")
    with pytest.raises(ValueError, match="unreachable"):
        prune_oneshot(TinyYolo(), 0.99)  # the stem alone is 12% of this tiny net
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_oneshot(TinyYolo(), 1.0)


def test_bn_recalibrate_reestimates_stats_and_keeps_weights():
    model = TinyYolo()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn = model.model[0].bn
    old_var = bn.running_var.clone()
    torch.manual_seed(1)
    batches = [torch.rand(2, 3, 16, 16) for _ in range(3)]
    used = bn_recalibrate(model, iter(batches), num_batches=3)
    assert used == 3 and not model.training
    assert not torch.allclose(bn.running_var, old_var)
    with torch.no_grad():  # cumulative average of equal-size batch means == mean over all images
        expected = model.model[0].conv(torch.cat(batches)).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.1  # restored after the cumulative pass
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_bn_recalibrate_accepts_uint8_loader_tuples_and_stops_at_num_batches():
    model = TinyYolo()
    loader = [(torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), None) for _ in range(5)]
    assert bn_recalibrate(model, loader, num_batches=2) == 2
    assert int(model.model[0].bn.num_batches_tracked) == 2


def test_bn_recalibrate_with_no_data_restores_stats():
    model = TinyYolo()
    before = model.model[1].bn.running_var.clone()
    with pytest.raises(ValueError, match="no image batches"):
        bn_recalibrate(model, [], num_batches=4)
    assert torch.equal(model.model[1].bn.running_var, before)


def test_yolov5n_default_exclusions_and_exact_target(yolov5n_pt):
    from utils.checkpoint import load_model

    model = load_model(yolov5n_pt)
    included, excluded = split_targets(model, (*DEFAULT_EXCLUDE, DETECT_HEAD))
    assert set(excluded) == {"model.0.conv.weight", "model.24.m.0.weight", "model.24.m.1.weight", "model.24.m.2.weight"}
    assert set(included) <= set(following_batchnorms(model))  # every backbone/neck conv is scored BN-folded
    before = {n: p.detach().clone() for n, p in excluded.items()}
    prune_oneshot(model, 0.6, method="global", exclude=(*DEFAULT_EXCLUDE, DETECT_HEAD))
    assert abs(total_zeros(model) - 0.6 * n_prunable(model)) <= 1
    assert all(torch.equal(p, before[n]) for n, p in excluded.items())


def test_everything_excluded_is_a_no_op_at_zero_and_an_error_above():
    model = TinyYolo()
    prune_oneshot(model, 0.0, exclude=(".",))
    assert global_sparsity(model) == 0.0
    with pytest.raises(ValueError, match="unreachable"):
        prune_oneshot(model, 0.1, exclude=(".",))


def test_sweep_validates_dense_once_and_shares_pruning_with_recal(tmp_path):
    """'global' and 'global+recal' come from one pruning per level; level 0 is validated once for all methods."""
    from utils.sparsity.pipeline import OneShot, sweep_methods
    from utils.sparsity.sweep import merge, read_csv, write_csv

    torch.manual_seed(2)
    calib = [torch.rand(2, 3, 16, 16) for _ in range(2)]
    seen: list[tuple[float, float]] = []

    def validate(m: nn.Module) -> dict:  # a fake metric: falls with sparsity, rises when BN stats were re-estimated
        s = global_sparsity(m)
        recal = float(m.model[1].bn.momentum == 0.1 and not torch.equal(m.model[1].bn.running_var, ref_var))
        seen.append((s, recal))
        return {"precision": 1 - s, "recall": 1 - s, "map50": 1 - s + 0.01 * recal, "map": (1 - s) / 2}

    model = TinyYolo()
    ref_var = model.model[1].bn.running_var.clone()
    shots = [OneShot.parse(spec, calibration=calib) for spec in ("global", "global+recal", "layerwise")]
    rows_seen: list[int] = []
    res = sweep_methods(model, [0.0, 0.3, 0.6], validate, shots, on_row=lambda r: rows_seen.append(len(r)))
    assert len(seen) == 1 + 3 * 2  # dense once, then 3 labels x 2 levels
    assert set(res) == {"global", "global+recal", "layerwise"}
    for label, rows in res.items():
        assert [r["target"] for r in rows] == [0.0, 0.3, 0.6] and rows[0]["rel_map50"] == 1.0
        assert [round(r["sparsity"], 2) for r in rows] == [0.0, 0.3, 0.6]
        assert all(r["prune_s"] >= 0 for r in rows)
    assert res["global+recal"][1]["map50"] > res["global"][1]["map50"]  # recal ran on the shared pruned model
    assert global_sparsity(model) == 0.0  # the input model is never pruned
    # one process per method or range of levels, merged: rows joined, sorted by level, rel_map50 against dense
    a = write_csv({"global": res["global"][2:]}, tmp_path / "a.csv")
    b = write_csv({"layerwise": res["layerwise"], "global": res["global"][:2]}, tmp_path / "b.csv")
    csv_file, png = merge([a, b], tmp_path / "m")
    merged = read_csv(csv_file)
    assert set(merged) == {"global", "layerwise"} and png.stat().st_size > 10_000
    assert [r["target"] for r in merged["global"]] == [0.0, 0.3, 0.6]
    assert merged["global"][2]["rel_map50"] == pytest.approx(res["global"][2]["rel_map50"], abs=1e-4)
