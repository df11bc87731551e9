"""Sensitivity analysis, per-layer allocation for a global target, and the per-layer SparseML recipe."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.test_obc import images, one_thread, tiny_yolo  # noqa: F401  (autouse fixture)
from utils.sparsity.weight_allocation import global_allocation, sensitivity_allocation, uniform_allocation
from utils.sparsity.oneshot import split_targets, zeros_to_reach
from utils.sparsity.recipe_writer import group_targets, write_recipe
from utils.sparsity.weight_sensitivity import (head_distortion, layer_sensitivity, plot_sensitivity, read_table, save_table,
                                        table_from_rows)


def params(*sizes: int) -> dict[str, nn.Parameter]:
    return {f"model.{i}.conv.weight": nn.Parameter(torch.randn(n)) for i, n in enumerate(sizes)}


@pytest.mark.parametrize("k", [0, 1, 777, 5000])
def test_uniform_allocation_sums_exactly(k):
    p = params(1000, 3000, 2500)
    counts = uniform_allocation(p, k)
    assert sum(counts.values()) == k
    assert max(abs(c / v.numel() - k / 6500) for c, v in zip(counts.values(), p.values())) < 1e-3


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_global_allocation_sums_exactly_and_respects_the_cap(sparsity):
    model = tiny_yolo()
    included, excluded = split_targets(model, None)
    k = zeros_to_reach(included, excluded, sparsity)
    counts = global_allocation(model, included, k, max_layer=0.9)
    assert sum(counts.values()) == k
    assert all(counts[n] <= int(0.9 * p.numel()) for n, p in included.items())


def test_sensitivity_allocation_hits_target_and_spares_sensitive_layers():
    p = params(4000, 4000, 2000)
    names = list(p)
    levels = [0.25, 0.5, 0.75, 0.9]
    table = {names[0]: {lv: 10 * lv**2 for lv in levels},  # sensitive
             names[1]: {lv: 0.1 * lv**2 for lv in levels},  # robust
             names[2]: {lv: 1.0 * lv**2 for lv in levels}}
    for k in (3000, 5000, 7000):
        counts = sensitivity_allocation(p, k, table, max_layer=0.95)
        assert sum(counts.values()) == k
        frac = {n: counts[n] / p[n].numel() for n in names}
        assert frac[names[0]] <= frac[names[2]] <= frac[names[1]] <= 0.95
    assert 0 < frac[names[0]] < frac[names[2]]  # at 70% even the sensitive layer gives some, but least


def test_sensitivity_allocation_fills_unknown_layers_with_the_mean_curve():
    p = params(1000, 1000)
    table = {"model.0.conv.weight": {0.5: 0.1, 0.9: 1.0}}
    counts = sensitivity_allocation(p, 1000, table)
    assert sum(counts.values()) == 1000
    # the unknown layer gets the mean curve, here the one known curve: two identical layers split the zeros evenly
    assert counts == {"model.0.conv.weight": 500, "model.1.conv.weight": 500}
    # with a sensitive and a robust known layer, the unknown one gets their mean: pruned in between
    p = params(1000, 1000, 1000)
    levels = [0.25, 0.5, 0.75, 0.9]
    table = {"model.0.conv.weight": {lv: 10 * lv**2 for lv in levels},
             "model.1.conv.weight": {lv: 0.1 * lv**2 for lv in levels}}
    counts = sensitivity_allocation(p, 1500, table, max_layer=0.95)
    assert sum(counts.values()) == 1500
    assert counts["model.0.conv.weight"] < counts["model.2.conv.weight"] < counts["model.1.conv.weight"], counts


def test_head_distortion_is_zero_for_identical_and_grows_with_change():
    torch.manual_seed(0)
    dense = [torch.rand(1, 3, 4, 4, 7)]
    assert head_distortion(dense, dense) == 0.0
    small, big = [dense[0] + 0.01], [dense[0] + 0.1]
    assert 0 < head_distortion(dense, small) < head_distortion(dense, big)


@pytest.fixture(scope="module")
def sensitivity_rows() -> list[dict]:
    model = tiny_yolo()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = layer_sensitivity(model, images(2), levels=(0.5, 0.9))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    return rows


def test_layer_sensitivity_rows(sensitivity_rows):
    model = tiny_yolo()
    included, _ = split_targets(model, None)
    assert len(sensitivity_rows) == 2 * len(included)
    table = table_from_rows(sensitivity_rows)
    assert set(table) == set(included)
    worse = sum(t[0.9] >= t[0.5] for t in table.values())
    assert worse >= 0.9 * len(table)  # pruning a layer harder hurts more (rare ties at tiny sizes)
    assert sum(t[0.9] for t in table.values()) > 0


def test_table_roundtrip_plot_and_allocation(sensitivity_rows, tmp_path: Path):
    csv_file = save_table(sensitivity_rows, tmp_path / "sensitivity.csv")
    rows = read_table(csv_file)
    assert [r["layer"] for r in rows] == [r["layer"] for r in sensitivity_rows]
    assert plot_sensitivity(rows, tmp_path / "sensitivity.png").stat().st_size > 5_000
    model = tiny_yolo()
    included, excluded = split_targets(model, None)
    k = zeros_to_reach(included, excluded, 0.6)
    assert sum(sensitivity_allocation(included, k, table_from_rows(rows)).values()) == k


def test_read_table_rejects_other_csv(tmp_path: Path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a sensitivity table"):
        read_table(bad)
    with pytest.raises(FileNotFoundError, match="--sensitivity"):
        read_table(tmp_path / "missing.csv")


def test_recipe_loads_in_sparseml(tmp_path: Path):
    from utils.compat import import_sparseml

    fractions = {"model.1.conv.weight": 0.42, "model.2.cv1.conv.weight": 0.42, "model.24.m.0.weight": 0.8,
                 "model.3.conv.weight": 0.0}
    sizes = {"model.0.conv.weight": 100, "model.1.conv.weight": 1000, "model.2.cv1.conv.weight": 1000,
             "model.24.m.0.weight": 500, "model.3.conv.weight": 400}
    file = write_recipe(tmp_path / "recipe.yaml", fractions, sizes, mask_type="block4", epochs=10)
    text = file.read_text()
    assert "Global sparsity 0.413" in text  # (420 + 420 + 400) / 3000 zeros
    manager = import_sparseml().from_yaml(str(file))
    pruning = [m for m in manager.modifiers if type(m).__name__ == "GMPruningModifier"]
    got = {round(m.final_sparsity, 2): sorted(m.params) for m in pruning}
    assert got == {0.42: ["model.1.conv.weight", "model.2.cv1.conv.weight"], 0.8: ["model.24.m.0.weight"]}
    assert all(str(m.mask_type) in ("[1, 4]", "block4") for m in pruning)
    assert manager.max_epochs == 10
    assert group_targets(fractions) == {0.42: ["model.1.conv.weight", "model.2.cv1.conv.weight"],
                                        0.8: ["model.24.m.0.weight"]}


@pytest.mark.slow
def test_prune_sensitivity_writes_table_plot_and_recipe(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path):
    import prune
    from tests.test_val import coco128_yaml
    from utils.compat import import_sparseml

    data = coco128_yaml(tmp_path, coco128_dir, n=4)
    rows = prune.run(data=str(data), weights=str(yolov5n_pt), imgsz=96, sensitivity=True, sensitivity_levels=[0.5, 0.9],
                     sensitivity_images=4, recipe_sparsity=[0.6], project=str(tmp_path), name="sens", workers=0)
    out = tmp_path / "sens"
    assert len(read_table(out / "sensitivity.csv")) == len(rows) == 2 * 59
    assert (out / "sensitivity.png").stat().st_size > 10_000
    manager = import_sparseml().from_yaml(str(out / "recipe_sparsity60.yaml"))
    pruning = [m for m in manager.modifiers if type(m).__name__ == "GMPruningModifier"]
    assert pruning and all(0 < m.final_sparsity <= 0.9 for m in pruning)
