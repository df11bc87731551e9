"""Channel pruning: coupled groups, exact physical removal, layouts that checkpoints rebuild, ONNX, recipe modifier."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from models.common import Conv
from models.yolo import DetectionModel
from utils.sparsity.channel import (MASKS_KEY, WIDTHS_KEY, Budget, ChannelGraph, apply_masks, channel_prune,
                                    plan_channels, remove_channels, remove_masked_channels)
from utils.sparsity.channel.surgery import kept_outputs


def _randomized(cfg: str = "yolov5n.yaml", seed: int = 0) -> DetectionModel:
    """A model whose BN layers do something (random affine and statistics), in eval mode."""
    torch.manual_seed(seed)
    m = DetectionModel(cfg).eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def v5n() -> DetectionModel:
    return _randomized()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def _raw(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([r.flatten() for r in model(x)[1]])


def _layer_out(model: nn.Module, x: torch.Tensor, i: int) -> torch.Tensor:
    out = []
    h = model.model[i].register_forward_hook(lambda m, inp, o: out.append(o))
    try:
        _raw(model, x)
    finally:
        h.remove()
    return out[0]


def _consumers(graph: ChannelGraph, key: str) -> list[tuple[str, int]]:
    return sorted((c, off) for c, off, _ in graph.consumers()[graph.by_key[key].id])


# ------------------------------------------------------------------------------------------------ analysis
def _expected_groups(model: nn.Module) -> int:
    """Counted from the modules, not the graph: every Conv block opens a channel group, except the cv2 of a
    residual Bottleneck, whose output is added to (so shares the group of) the bottleneck input."""
    from models.common import Bottleneck, Conv
    blocks = sum(isinstance(m, Conv) for m in model.modules())
    residual = sum(isinstance(m, Bottleneck) and m.add for m in model.modules())
    return blocks - residual


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5s.yaml"])
def test_group_count_follows_the_modules(cfg: str) -> None:
    model = DetectionModel(cfg)
    expected = _expected_groups(model)
    assert expected == 57 - 7  # v5 v6.0+: 57 Conv blocks; residual bottlenecks 1 + 2 + 3 + 1 in the backbone C3s
    g = ChannelGraph(model)
    assert len(g.groups) == expected and len(g.prunable()) == expected  # nothing unknown or grouped to freeze
    assert sum(len(gr.sources) for gr in g.groups.values()) == sum(isinstance(m, Conv) for m in model.modules())


def test_groups_follow_yolov5_structure() -> None:
    model = DetectionModel("yolov5s.yaml")
    g = ChannelGraph(model)
    assert len(g.groups) == len(g.prunable()) == _expected_groups(model)
    # backbone C3 with 2 residual bottlenecks: C3.cv1 and both cv2 outputs are one group, read by m.*.cv1 and cv3
    assert g.by_key["model.4.cv1"].sources == ["model.4.cv1", "model.4.m.0.cv2", "model.4.m.1.cv2"]
    assert _consumers(g, "model.4.cv1") == [("model.4.cv3.conv", 0), ("model.4.m.0.cv1.conv", 0),
                                            ("model.4.m.1.cv1.conv", 0)]
    assert _consumers(g, "model.4.cv2") == [("model.4.cv3.conv", 64)]  # second half of the C3 concat
    # head C3 (shortcut=False): the bottleneck's cv2 is a group of its own
    assert g.by_key["model.13.m.0.cv2"].sources == ["model.13.m.0.cv2"]
    # SPPF: cv1's 256 channels are read 4 times (x and three max-pools) by cv2
    assert _consumers(g, "model.9.cv1") == [("model.9.cv2.conv", o) for o in (0, 256, 512, 768)]
    # Concat offsets: layer 10 is the second input of concat 22 ([21, 10]: 256 + 256) and the first of concat 12
    # after an Upsample ([11, 6]), so it is read at offset 256 by layer 23 and at 0 by layer 13
    assert _consumers(g, "model.10") == [("model.13.cv1.conv", 0), ("model.13.cv2.conv", 0),
                                         ("model.23.cv1.conv", 256), ("model.23.cv2.conv", 256)]
    assert _consumers(g, "model.17.cv3") == [("model.18.conv", 0), ("model.24.m.0", 0)]  # Detect reads P3
    assert _consumers(g, "model.4.cv3") == [("model.17.cv1.conv", 128), ("model.17.cv2.conv", 128),
                                            ("model.5.conv", 0)]


def test_unsupported_structures_are_frozen() -> None:
    m = DetectionModel("yolov5n.yaml")
    m.fuse()  # fused Conv blocks have no BN to prune by
    assert not ChannelGraph(m).prunable()
    with pytest.raises(ValueError, match="unfused"):
        channel_prune(m, flops_target=0.3)


# ------------------------------------------------------------------------------------------------ removal
def _zero_channels(model: nn.Module, graph: ChannelGraph, keys: list[str], step: int = 3) -> dict:
    """Zero BN gamma and beta of every `step`-th channel of the given groups (in every source): they output 0."""
    plan = {}
    for key in keys:
        g = graph.by_key[key]
        plan[key] = list(range(1, g.size, step))
        for src in g.sources:
            bn = model.get_submodule(src).bn
            bn.weight.data[plan[key]] = 0
            bn.bias.data[plan[key]] = 0
    return plan


KEYS = ["model.0", "model.2.cv1", "model.4.cv1", "model.4.cv2", "model.8.cv3", "model.9.cv1", "model.10",
        "model.13.m.0.cv1", "model.17.cv3", "model.20.cv3", "model.23.cv3", "model.21"]


@pytest.mark.parametrize("compensate", [True, False])
def test_removing_zeroed_channels_keeps_outputs(v5n: DetectionModel, x: torch.Tensor, compensate: bool) -> None:
    model = copy.deepcopy(v5n)
    plan = _zero_channels(model, ChannelGraph(model), KEYS)
    before = _raw(model, x)
    params = sum(p.numel() for p in model.parameters())
    changed = remove_channels(model, plan, compensate=compensate)
    assert sum(p.numel() for p in model.parameters()) < params
    assert model.model[4].cv1.conv.out_channels == 32 - len(plan["model.4.cv1"])
    assert model.model[4].m[0].cv2.conv.out_channels == model.model[4].cv1.conv.out_channels  # residual kept tied
    assert model.model[9].cv2.conv.in_channels == 4 * model.model[9].cv1.conv.out_channels
    assert model.model[24].m[0].in_channels == 64 - len(plan["model.17.cv3"])
    assert model.yaml[WIDTHS_KEY] == changed
    torch.testing.assert_close(_raw(model, x), before, atol=1e-5, rtol=1e-5)


def test_constant_channels_are_folded_into_consumers(v5n: DetectionModel, x: torch.Tensor) -> None:
    """Zero filters (not BN): each channel outputs the constant act(bn(0)); 1x1 consumers absorb it exactly."""
    model = copy.deepcopy(v5n)
    chans = [0, 5, 9]
    model.model[8].cv2.conv.weight.data[chans] = 0  # C3.cv2 is read only by the 1x1 cv3
    before = _layer_out(model, x, 8)
    folded, dropped = copy.deepcopy(model), copy.deepcopy(model)
    remove_channels(folded, {"model.8.cv2": chans}, compensate=True)
    remove_channels(dropped, {"model.8.cv2": chans}, compensate=False)
    torch.testing.assert_close(_layer_out(folded, x, 8), before, atol=1e-5, rtol=1e-5)
    assert (_layer_out(dropped, x, 8) - before).abs().max() > 1e-2


def test_bad_plans_name_the_group(v5n: DetectionModel) -> None:
    with pytest.raises(ValueError, match="no channel group 'model.99'"):
        remove_channels(copy.deepcopy(v5n), {"model.99": [0]})
    with pytest.raises(ValueError, match="has 16 channels"):
        remove_channels(copy.deepcopy(v5n), {"model.0": list(range(16))})
    with pytest.raises(ValueError, match="exactly one of"):
        Budget()
    with pytest.raises(ValueError, match="must be in"):
        Budget(flops_target=1.5)


# ---------------------------------------------------------------------------------------------- allocation
def test_flops_target_is_met_with_simd_friendly_widths() -> None:
    model = _randomized("yolov5s.yaml")
    graph = ChannelGraph(model)
    sizes = {k: g.size for k, g in graph.by_key.items()}
    report = channel_prune(model, flops_target=0.5, max_ratio=0.75)
    assert 0.45 <= 1 - report["macs_left"] <= 0.52
    assert ChannelGraph(model).macs() == pytest.approx(report["macs_left"] * report["conv_macs_before"], rel=1e-6)
    for key, removed in report["plan"].items():
        kept = sizes[key] - len(removed)
        assert kept % 16 == 0 and kept >= max(16, sizes[key] * 0.25)
    assert report["params_after"] < 0.6 * report["params_before"]


def test_importances_and_allocations_rank_low_channels_first(v5n: DetectionModel) -> None:
    model = copy.deepcopy(v5n)
    model.model[9].cv1.bn.weight.data[:8] = 1e-3  # eight near-dead channels in the SPPF input
    for importance in ("bn", "l1"):
        for allocation in ("global", "uniform"):
            plan = plan_channels(model, Budget(channel_ratio=0.2, round_to=8, min_channels=8), importance, allocation)
            removed = sum(len(v) for v in plan.values())
            total = sum(g.size for g in ChannelGraph(model).prunable())
            assert 0.1 <= removed / total <= 0.25, (importance, allocation)
    plan = plan_channels(model, Budget(channel_ratio=0.1, round_to=8, min_channels=8), "bn", "global")
    assert plan["model.9.cv1"][:8] == list(range(8))
    plan = plan_channels(model, Budget(channel_ratio=0.3), "bn", "global", ignore=["model.0", "re:model[.]9[.]"])
    assert "model.0" not in plan and "model.9.cv1" not in plan and "model.9.cv2" not in plan


def test_sensitivity_allocation_spares_the_sensitive_group(v5n: DetectionModel) -> None:
    model = copy.deepcopy(v5n)
    images = [torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))]
    budget = Budget(flops_target=0.2, round_to=8, min_channels=8)
    plan = plan_channels(model, budget, allocation="sensitivity", images=images)
    graph = ChannelGraph(model)
    left = graph.macs({graph.by_key[k].id: graph.by_key[k].size - len(v) for k, v in plan.items()}) / graph.macs()
    assert 0.7 <= left <= 0.8
    with pytest.raises(ValueError, match="calibration images"):
        plan_channels(model, budget, allocation="sensitivity")


def test_latency_allocation_cuts_slow_layers_more_and_keeps_the_flops_target() -> None:
    """Layers profiled 2x slower per MAC lose a larger fraction than under uniform allocation; FLOPs still 50%."""
    from utils.sparsity.channel.latency import group_weights, layer_macs

    model = _randomized("yolov5s.yaml")
    graph = ChannelGraph(model)
    macs = layer_macs(graph)
    assert sum(macs.values()) == pytest.approx(graph.macs())
    layer_ms = {k: v * (2e-6 if k in ("model.0", "model.2") else 1e-6) for k, v in macs.items()}
    weights = group_weights(graph, layer_ms)
    assert weights[graph.by_key["model.2.cv1"].id] == pytest.approx(2 * weights[graph.by_key["model.6.cv1"].id],
                                                                    abs=0.1)
    partial = group_weights(graph, {k: v for k, v in layer_ms.items() if k != "model.6"})
    assert partial[graph.by_key["model.6.cv1"].id] == 1.0  # not in the profile: plain uniform share
    with pytest.raises(ValueError, match="names none"):
        group_weights(graph, {"model.99": 1.0})
    budget = Budget(flops_target=0.5)
    plans = {a: plan_channels(model, budget, "l1", a, layer_ms=layer_ms) for a in ("uniform", "latency")}
    for name, plan in plans.items():
        left = graph.macs({graph.by_key[k].id: graph.by_key[k].size - len(v) for k, v in plan.items()}) / graph.macs()
        assert (0.48 if name == "latency" else 0.45) <= left <= 0.5, name  # latency gives back rounding overshoot
    assert len(plans["latency"].get("model.2.cv1", [])) > len(plans["uniform"].get("model.2.cv1", []))
    assert len(plans["latency"].get("model.0", [])) > len(plans["uniform"].get("model.0", []))
    with pytest.raises(ValueError, match="profile"):
        plan_channels(model, Budget(flops_target=0.5), "l1", "latency")


def test_latency_allocation_profiles_the_dense_model_with_onnxruntime() -> None:
    """Without a given profile, channel_prune exports the dense model and times its layers with ONNX Runtime."""
    model = _randomized("yolov5n.yaml")
    report = channel_prune(model, flops_target=0.3, allocation="latency", imgsz=128, round_to=8, min_channels=8)
    assert 0.6 <= report["macs_left"] <= 0.7 and report["channels_removed"] > 0
    assert report["layer_ms"]["model.0"] > 0  # the profile it used, for the record
    assert model(torch.rand(1, 3, 128, 128))[0].shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4), 85)


def test_taylor_importance_uses_the_loss(v5n: DetectionModel) -> None:
    from utils.loss import ComputeLoss
    from utils.trainer import load_hyp

    model = copy.deepcopy(v5n)
    model.hyp = load_hyp(Path(__file__).resolve().parents[1] / "data/hyps/hyp.scratch-low.yaml")
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 3, 0.3, 0.6, 0.2, 0.2]])
    batches = [(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)), targets)]
    report = channel_prune(model, flops_target=0.3, importance="taylor", labelled=batches, loss_fn=ComputeLoss(model))
    assert report["channels_removed"] > 0 and model(torch.rand(1, 3, 64, 64))[0].shape[-1] == 85
    with pytest.raises(ValueError, match="labelled"):
        channel_prune(copy.deepcopy(v5n), flops_target=0.3, importance="taylor")


def test_reconstruction_fits_pruned_layers_to_dense_outputs(v5n: DetectionModel) -> None:
    from utils.sparsity.channel.reconstruct import reconstruct

    images = [torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    dense = copy.deepcopy(v5n)
    plan = plan_channels(dense, Budget(flops_target=0.3))
    plain, fitted = copy.deepcopy(dense), copy.deepcopy(dense)
    remove_channels(plain, plan)
    keep, blocks = kept_outputs(fitted, ChannelGraph(fitted), plan)
    remove_channels(fitted, plan)
    assert reconstruct(fitted, dense, images, keep, blocks) == sum(isinstance(m, nn.Conv2d) for m in dense.modules())
    ref = _raw(dense, probe)
    err = lambda m: float((_raw(m, probe) - ref).norm() / ref.norm())  # noqa: E731
    assert err(fitted) < 0.7 * err(plain)


# -------------------------------------------------------------------------------------- checkpoints, ONNX
@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory, v5n: DetectionModel) -> tuple[Path, DetectionModel]:
    from utils.checkpoint import save_checkpoint

    model = copy.deepcopy(v5n)
    channel_prune(model, flops_target=0.4)
    path = save_checkpoint(tmp_path_factory.mktemp("cp") / "pruned.pt", model)
    return path, model


def test_checkpoint_rebuilds_pruned_layout_without_pickled_code(pruned_ckpt, x: torch.Tensor) -> None:
    from utils.checkpoint import load_model

    path, model = pruned_ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["yaml"][WIDTHS_KEY]["model.9.cv1.conv"] == list(model.model[9].cv1.conv.weight.shape[1::-1])
    loaded = load_model(path)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(_raw(loaded, x), _raw(model, x))


def test_pruned_checkpoint_exports_to_onnx(pruned_ckpt) -> None:
    import onnx

    from utils.export import export_weights

    path, model = pruned_ckpt
    res = export_weights(path, imgsz=64, log=lambda *a: None)
    assert res["verify"]["max_abs"] < 1e-3
    convs = [n for n in onnx.load(str(res["files"][0])).graph.initializer if n.dims and len(n.dims) == 4]
    assert any(tuple(i.dims) == tuple(model.model[9].cv1.conv.weight.shape) for i in convs)


def test_trainer_callback_reshapes_model_before_weights_load(pruned_ckpt) -> None:
    from types import SimpleNamespace

    from utils.sparsity.channel.training import ChannelLayoutCallback

    path, model = pruned_ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    trainer = SimpleNamespace(opt=SimpleNamespace(cfg=""), model=DetectionModel(ckpt["yaml"], nc=3))
    ChannelLayoutCallback().on_checkpoint_load(trainer, ckpt)
    shapes = {k: v.shape for k, v in trainer.model.state_dict().items()}
    assert all(shapes[k] == v.shape for k, v in ckpt["model"].items() if not k.startswith("model.24."))
    assert trainer.model.model[24].m[0].out_channels == 3 * 8  # nc=3 transfer: Detect outputs follow nc


def test_trainer_callback_fine_tunes_soft_masked_checkpoint_as_smaller_model(tmp_path: Path, v5n: DetectionModel,
                                                                             x: torch.Tensor) -> None:
    """train.py --weights <recipe run's last.pt>: masked channels are removed before the weights load (same outputs,
    fewer parameters); with --resume the dense masked layout stays so the recipe can go on."""
    from types import SimpleNamespace

    from utils.checkpoint import save_checkpoint
    from utils.sparsity.channel.training import ChannelLayoutCallback

    model = copy.deepcopy(v5n)
    apply_masks(model, plan_channels(model, Budget(flops_target=0.3)))
    path = save_checkpoint(tmp_path / "masked.pt", model)
    for resume in (False, True):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        trainer = SimpleNamespace(opt=SimpleNamespace(cfg="", weights=str(path)), resume=resume,
                                  model=DetectionModel(ckpt["yaml"]).eval())
        ChannelLayoutCallback().on_checkpoint_load(trainer, ckpt)
        trainer.model.load_state_dict(ckpt["model"], strict=True)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        if resume:
            assert n_params == sum(p.numel() for p in model.parameters()) and MASKS_KEY in trainer.model.yaml
        else:
            assert n_params < 0.85 * sum(p.numel() for p in model.parameters()) and MASKS_KEY not in trainer.model.yaml
        torch.testing.assert_close(_raw(trainer.model, x), _raw(model, x), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ masks, recipes
def test_soft_masks_become_physical_removal_on_load(tmp_path: Path, v5n: DetectionModel, x: torch.Tensor) -> None:
    from utils.checkpoint import load_model, save_checkpoint

    model = copy.deepcopy(v5n)
    plan = plan_channels(model, Budget(flops_target=0.3))
    apply_masks(model, plan)
    for key in list(plan)[:3]:  # an EMA leaves small BN remainders behind: still removed exactly (filters are 0)
        for src in ChannelGraph(model).by_key[key].sources:
            model.get_submodule(src).bn.bias.data[plan[key]] = 0.01
    masked = _raw(model, x)
    assert model.yaml[MASKS_KEY] == plan
    loaded = load_model(save_checkpoint(tmp_path / "masked.pt", model))
    assert MASKS_KEY not in loaded.yaml and WIDTHS_KEY in loaded.yaml
    assert sum(p.numel() for p in loaded.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(_raw(loaded, x), masked, atol=1e-4, rtol=1e-4)


def test_regrown_masked_channels_are_kept(v5n: DetectionModel) -> None:
    model = copy.deepcopy(v5n)
    apply_masks(model, {"model.8.cv2": [0, 1, 2, 3, 4, 5, 6, 7]})
    model.model[8].cv2.conv.weight.data[3] = 0.5  # trained without its mask
    remove_masked_channels(model)
    assert model.model[8].cv2.conv.out_channels == 128 - 7


RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 4
  - !ChannelPruningModifier
    start_epoch: 0
    end_epoch: 2
    update_frequency: 1.0
    flops_target: 0.4
    importance: {importance}
    round_to: 8
    min_channels: 8
"""


@pytest.mark.parametrize("importance", ["bn", "taylor"])
def test_modifier_masks_gradually_and_holds_masks(v5n: DetectionModel, importance: str) -> None:
    from utils.sparsity.recipes import load_recipe

    model = copy.deepcopy(v5n).train()
    rec = load_recipe(RECIPE.format(importance=importance), model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    manager = rec.manager
    manager.initialize(model, epoch=0.0)
    masked = []
    for step in range(6):  # 2 steps per epoch, epochs 0..2.5
        epoch = step / 2
        loss = sum(r.square().mean() for r in model(torch.rand(2, 3, 64, 64)))
        loss.backward()
        manager.update(model, opt, epoch, 2)
        manager.optimizer_pre_step(model, opt, epoch, 2)
        opt.step()
        opt.zero_grad()
        manager.optimizer_post_step(model, opt, epoch, 2)
        masked.append(sum(len(v) for v in model.yaml.get(MASKS_KEY, {}).values()))
    assert 0 < masked[2] < masked[4] == masked[5]  # grows over epochs 0-2, then held
    plan = model.yaml[MASKS_KEY]
    graph = ChannelGraph(model)
    for key, chans in plan.items():
        for src in graph.by_key[key].sources:
            blk = model.get_submodule(src)
            assert blk.conv.weight[chans].abs().sum() == 0 and blk.bn.weight[chans].abs().sum() == 0
    state = manager.state_dict()
    mod = [m for m in manager.iter_modifiers() if type(m).__name__ == "ChannelPruningModifier"][0]
    assert state[mod.identifier()]["plan"] == plan
    shrunk = copy.deepcopy(model).eval()
    remove_masked_channels(shrunk)
    macs = ChannelGraph(shrunk).macs() / graph.macs()
    assert 0.55 <= macs <= 0.65


def test_modifier_sparsity_l1_pushes_bn_scales_to_zero(v5n: DetectionModel) -> None:
    from utils.sparsity.recipes import load_recipe

    model = copy.deepcopy(v5n).train()
    rec = load_recipe(RECIPE.format(importance="bn").replace("round_to: 8", "round_to: 8\n    sparsity_l1: 0.01"))
    rec.manager.initialize(model, epoch=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    rec.manager.update(model, opt, 0.0, 2)
    rec.manager.optimizer_pre_step(model, opt, 0.0, 2)
    bn = model.model[2].cv2.bn
    live = bn.weight != 0
    torch.testing.assert_close(bn.weight.grad[live], 0.01 * torch.sign(bn.weight[live]))


def test_modifier_fields_are_validated() -> None:
    from utils.sparsity.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="importance"):
        load_recipe(RECIPE.format(importance="magic"))
    with pytest.raises(RecipeError):
        load_recipe(RECIPE.replace("flops_target: 0.4", "flops_target: 0.4\n    channel_ratio: 0.2").format(
            importance="bn"))


TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import train
train.main(train.parse_opt())
"""


@pytest.mark.slow
def test_recipe_training_masks_then_loads_smaller(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    """train.py with a ChannelPruningModifier recipe: masks in last.pt's yaml; load_model gives the smaller model."""
    import os
    import subprocess
    import sys

    import yaml

    from utils.checkpoint import load_model

    root = Path(__file__).resolve().parents[1]
    images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:16]
    (tmp_path / "images.txt").write_text("".join(f"{p}\n" for p in images))
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": str(tmp_path / "images.txt"),
                                    "val": str(tmp_path / "images.txt"),
                                    "names": (coco128_dir / "classes.txt").read_text().splitlines()}))
    recipe = tmp_path / "cp.yaml"
    recipe.write_text(RECIPE.format(importance="bn").replace("end_epoch: 4", "end_epoch: 3"))
    script = tmp_path / "train_cp.py"
    script.write_text(TRAIN_SCRIPT.format(root=str(root)))
    cmd = [sys.executable, str(script), "--weights", str(yolov5n_pt), "--data", str(data), "--img", "96",
           "--batch-size", "8", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "cp", "--noplots",
           "--noautoanchor", "--noval", "--recipe", str(recipe)]
    r = subprocess.run(cmd, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    last = tmp_path / "runs/cp/weights/last.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["yaml"][MASKS_KEY] and "ChannelPruningModifier" in ckpt["recipe"]
    dense = DetectionModel(ckpt["yaml"]).eval()
    dense.load_state_dict(ckpt["model"])
    small = load_model(last)
    assert WIDTHS_KEY in small.yaml and MASKS_KEY not in small.yaml
    assert 0.5 <= ChannelGraph(small).macs() / ChannelGraph(dense).macs() <= 0.7
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_raw(small, x), _raw(dense, x), atol=1e-4, rtol=1e-4)
