"""Recipe loading: .yaml/.md/text forms, variables, and one clear message per broken-recipe case."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.yolo import DetectionModel
from utils.sparsity.recipes import RecipeError, front_matter, load_recipe, parse_recipe_args, unmatched_targets

GMP = """
num_epochs: 4
end: eval(num_epochs - 1)
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: eval(end)
    update_frequency: 0.5
    params: ["re:model.*.conv.weight"]
"""


@pytest.fixture(scope="module")
def tiny_model() -> DetectionModel:
    return DetectionModel("models/yolov5n.yaml")


@pytest.fixture(scope="module")
def v6_model() -> DetectionModel:
    return DetectionModel("models/yolov5s.yaml")


def _mods(rec) -> list[str]:
    return sorted(type(m).__name__ for m in rec.modifiers())


def test_text_yaml_and_md_forms_agree(tmp_path: Path):
    (tmp_path / "r.yaml").write_text(GMP)
    (tmp_path / "r.md").write_text("<!-- licence -->\n\n---" + GMP + "---\n\n# A recipe card\nSome text: here\n")
    for src in (GMP, tmp_path / "r.yaml", tmp_path / "r.md"):
        rec = load_recipe(src)
        assert _mods(rec) == ["EpochRangeModifier", "GMPruningModifier"]
        assert rec.manager.max_epochs == 4


def test_variables_and_eval(tmp_path: Path):
    rec = load_recipe(GMP, '{"num_epochs": 10}')
    gmp = next(m for m in rec.modifiers() if type(m).__name__ == "GMPruningModifier")
    assert rec.manager.max_epochs == 10 and gmp.end_epoch == 9
    assert parse_recipe_args("num_epochs: 3") == {"num_epochs": 3}


def test_front_matter_plain_yaml_unchanged():
    assert front_matter(GMP) == GMP


@pytest.mark.parametrize("text, parts", [
    ("modifiers:\n  - !GMPruningModifier\n    params: [a\n", ["YAML error", "line"]),
    ("modifiers:\n  - !FooModifier\n    start_epoch: 0\n", ["unknown modifier 'FooModifier'", "#0", "GMPruningModifier"]),
    (GMP.replace("update_frequency: 0.5", "update_frequency: 0.5\n    foo: 3"),
     ["GMPruningModifier", "field 'foo'", "unknown field"]),
    (GMP.replace("final_sparsity: 0.5", "final_sparsity: abc"), ["GMPruningModifier", "field 'final_sparsity'"]),
    (GMP.replace("    final_sparsity: 0.5\n", ""), ["GMPruningModifier", "field 'final_sparsity'", "missing"]),
    ("- just\n- a list\n", ["expected a YAML mapping"]),
])
def test_broken_recipes_name_modifier_and_field(text: str, parts: list[str]):
    with pytest.raises(RecipeError) as e:
        load_recipe(text)
    msg = str(e.value)
    assert "recipe <recipe text>" in msg
    for p in parts:
        assert p in msg, msg


def test_unknown_recipe_arg_and_missing_file():
    with pytest.raises(RecipeError, match="num_epoch.*not variables"):
        load_recipe(GMP, {"num_epoch": 3})
    with pytest.raises(RecipeError, match="nope.yaml: file not found"):
        load_recipe("nope.yaml")


def test_layer_names_matching_nothing(tiny_model):
    bad = GMP.replace('["re:model.*.conv.weight"]', '["model.3.conv.weight", "model.99.conv.weight"]')
    with pytest.raises(RecipeError) as e:
        load_recipe(bad, model=tiny_model)
    msg = str(e.value)
    assert "GMPruningModifier" in msg and "field 'params'" in msg and "model.99.conv.weight" in msg
    assert "model.3.conv.weight" not in msg  # that one exists
    load_recipe(GMP, model=tiny_model)  # regexes that match pass


def test_reference_recipes_load_and_report_v5_names(assets: Path, v6_model):
    files = sorted((assets / "reference_recipes").glob("*/*"))
    assert len(files) >= 10
    unmatched = {}
    for f in files:
        rec = load_recipe(f)
        assert rec.modifiers(), f
        unmatched[f.name] = unmatched_targets(rec, v6_model)
    # v6 SparseZoo recipes are written for these layer names; the v5.0-era s recipes name the old SPP/C3 layout
    assert unmatched["yolov5s.pruned75_quant-none.recipe.yaml"] == []
    assert unmatched["yolov5s.pruned75_quant-none.transfer_learn.recipe.yaml"] == []
    old = " ".join(unmatched["yolov5s.pruned.md"])
    assert "model.9.cv3.conv.weight" in old and "model.4.m.2.cv1.conv.weight" in old


@pytest.mark.parametrize("size", ["n", "s", "m", "l"])
def test_our_recipes_fit_v6_models(size: str):
    model = DetectionModel(f"models/yolov5{size}.yaml")
    root = Path(__file__).resolve().parents[1] / "recipes"
    files = [root / f"yolov5{size}.pruned.yaml", root / f"yolov5{size}.pruned_quantized.yaml"]
    if size == "n":
        files += [root / "demo.pruned.yaml", root / "yolov5.transfer_learn_pruned.yaml",
                  root / "yolov5.transfer_learn_pruned_quantized.yaml"]
    for f in files:
        rec = load_recipe(f, model=model)  # raises when a layer regex matches nothing
        assert rec.manager.max_epochs > 0
        again = load_recipe(str(rec.manager), model=model)  # the form stored in checkpoints round-trips
        assert again.manager.max_epochs == rec.manager.max_epochs


def test_zoo_stub_from_local_mirror(tmp_path: Path, monkeypatch):
    """Recipe-card stubs (more in test_zoo.py); the older recipes/ folder of our mirror still resolves."""
    monkeypatch.setenv("YOLOV5_SPARSE_ZOO", str(tmp_path))
    monkeypatch.setenv("SPARSEZOO_MODELS_PATH", str(tmp_path / "sparsezoo"))
    monkeypatch.setenv("YOLOV5_SPARSE_ZOO_OFFLINE", "1")
    stub = "zoo:yolov5-n-coco128-pruned50"
    with pytest.raises(RecipeError, match=f"--recipe {stub}: no recipe found.*{tmp_path}/yolov5-n-coco128-pruned50/"):
        load_recipe(stub)
    folder = tmp_path / "yolov5-n-coco128-pruned50/recipes"
    folder.mkdir(parents=True)
    (folder / "recipe_transfer_learn.md").write_text("---" + GMP + "---\n# card\n")
    assert load_recipe(stub + "?recipe_type=transfer_learn").manager.max_epochs == 4


def test_phases_come_from_what_each_modifier_is() -> None:
    """Phase logic reads SparseML's sparsification types (and our `gradual` attribute), not class-name lists: the
    project's own !ChannelPruningModifier reports 'pruning' while its schedule runs, a GMP+QAT recipe reports QAT."""
    from utils.sparsity.manager import SparsificationCallback
    from utils.sparsity.modifiers import modifier_kind

    root = Path(__file__).resolve().parents[1] / "recipes"
    channel = load_recipe(root / "yolov5s.channel_pruned.yaml")
    kinds = {type(m).__name__: modifier_kind(m) for m in channel.modifiers()}
    assert kinds == {"EpochRangeModifier": "other", "LearningRateFunctionModifier": "lr",
                     "ChannelPruningModifier": "gradual_pruning"}
    assert channel.has("lr") and channel.has("gradual_pruning") and not channel.has("qat", "constant_pruning")
    cb = SparsificationCallback(root / "yolov5s.channel_pruned.yaml")
    cb.rec = channel
    assert cb._phase_at(None, 1.0) == "pruning"  # pruning_start_epoch 0, pruning_end_epoch 20
    qat = load_recipe(root / "yolov5n.pruned_quantized.yaml")
    assert {modifier_kind(m) for m in qat.modifiers()} >= {"qat", "gradual_pruning", "lr"}
    transfer = load_recipe(root / "yolov5.transfer_learn_pruned.yaml")
    assert transfer.has("constant_pruning") and not transfer.has("gradual_pruning")


SHORT = ["yolov5n.pruned.short.yaml", "yolov5n.pruned_quantized.short.yaml", "yolov5n.channel_pruned.short.yaml"]


@pytest.mark.parametrize("name", SHORT)
@pytest.mark.parametrize("epochs", [3, 5, 8, 20, 41])
def test_short_recipes_derive_every_epoch_from_num_epochs(name: str, epochs: int, tiny_model) -> None:
    """Any budget gives a valid schedule that ends at num_epochs (the long recipes fail at num_epochs 5)."""
    root = Path(__file__).resolve().parents[1] / "recipes"
    rec = load_recipe(root / name, {"num_epochs": epochs}, model=tiny_model)
    assert rec.manager.max_epochs == epochs
    ends = [float(m.end_epoch) for m in rec.modifiers() if float(getattr(m, "end_epoch", -1)) >= 0]
    assert max(ends) <= epochs
    qat = [m for m in rec.modifiers() if type(m).__name__ == "QuantizationModifier"]
    prune_end = max((float(m.end_epoch) for m in rec.modifiers() if "Pruning" in type(m).__name__), default=0)
    for q in qat:  # QAT starts after pruning has finished; BN and observers freeze in that order before the end
        start, bn, obs = (float(x) for x in (q.start_epoch, q.freeze_bn_stats_epoch,
                                              q.disable_quantization_observer_epoch))
        assert prune_end <= start < bn < obs < epochs
    if epochs == 5:
        with pytest.raises(RecipeError, match="end_epoch of 3.0 must be greater"):
            load_recipe(root / "yolov5n.pruned.yaml", {"num_epochs": 5}, model=tiny_model)


@pytest.mark.parametrize("name", SHORT[:2])
def test_short_pruning_recipes_reach_sixty_percent(name: str, tiny_model) -> None:
    """The per-group targets weighted by each group's conv weights give >= 60% global conv sparsity (62.6%)."""
    root = Path(__file__).resolve().parents[1] / "recipes"
    rec = load_recipe(root / name, model=tiny_model)
    convs = {n: p.numel() for n, p in tiny_model.named_parameters() if p.dim() == 4}
    zeros = 0.0
    for m in rec.modifiers():
        if type(m).__name__ == "GMPruningModifier":
            pattern = m.params[0].removeprefix("re:")
            zeros += sum(size * float(m.final_sparsity) for n, size in convs.items() if re.match(pattern, n))
    assert zeros / sum(convs.values()) == pytest.approx(0.626, abs=0.001)


def test_a_comment_with_a_dot_after_a_tag_still_loads() -> None:
    """SparseML skips `!Tag` lines that contain a '.' (e.g. '# see train.py'); our loader drops such comments first."""
    text = GMP.replace("  - !GMPruningModifier", "  - !GMPruningModifier  # see train.py --recipe (v6.0 names)")
    assert _mods(load_recipe(text)) == ["EpochRangeModifier", "GMPruningModifier"]
