"""The SparseML 1.8 / torch 2.13 compatibility layer: QConfig shim, recipe modifiers, legacy ONNX export."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import onnx
import torch
import torch.ao.quantization
import torch.quantization
from torch import nn

from utils import compat
from utils.sparsity.measure import global_sparsity, layer_sparsity_table, prunable_parameters

ROOT = Path(__file__).resolve().parents[1]

QAT_RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 2.0

  - !QuantizationModifier
    start_epoch: 0.0
"""

GMP_RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 3.0

  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 1.0
"""


class ConvBnSiLU(nn.Module):
    """YOLOv5's Conv block in miniature (.conv + .bn + .act), the structure SparseML fuses for QAT."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(ConvBnSiLU(3, 8), ConvBnSiLU(8, 16), nn.Conv2d(16, 6, 1))


def train_steps(model: nn.Module, manager, epochs: int, steps_per_epoch: int = 2) -> None:
    """A minimal SGD loop driven by a SparseML manager, the way the trainer will drive it."""
    model.train()
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.01), steps_per_epoch=steps_per_epoch)
    for _ in range(epochs * steps_per_epoch):
        loss = model(torch.randn(2, 3, 16, 16)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    manager.finalize(model)


def test_shim_installs_once_and_leaves_torch_ao_alone():
    assert compat.apply_torch_compat() is True
    assert compat.apply_torch_compat() is True  # second call is a no-op
    assert torch.quantization.QConfig.__name__ == "QConfigWithScheme"  # by name: a module reload makes a new class
    assert torch.ao.quantization.QConfig is not compat.QConfigWithScheme
    qconfig = torch.quantization.QConfig(nn.Identity, nn.Identity)
    qconfig.quantization_scheme = "anything"  # the attribute sparseml needs
    assert isinstance(qconfig, torch.ao.quantization.QConfig)


def test_importing_twice_is_harmless():
    manager_cls = compat.import_sparseml()
    reloaded = importlib.reload(compat)
    assert reloaded.apply_torch_compat() is True  # the earlier shim is recognised, not stacked
    assert reloaded.import_sparseml() is manager_cls
    assert os.environ["NM_DISABLE_ANALYTICS"] == "1"


def test_quantization_modifier_applies_in_train_mode():
    manager = compat.import_sparseml().from_yaml(QAT_RECIPE)
    model = tiny_model()
    train_steps(model, manager, epochs=2)
    names = [type(m).__name__ for m in model.modules()]
    assert "ConvBn2d" in names  # conv+bn fused for QAT
    assert names.count("FakeQuantize") >= 6
    model.eval()
    assert torch.isfinite(model(torch.randn(1, 3, 16, 16))).all()


def test_gmp_recipe_prunes_to_target():
    manager = compat.import_sparseml().from_yaml(GMP_RECIPE)
    model = tiny_model()
    train_steps(model, manager, epochs=3)
    assert global_sparsity(model) == pytest.approx(0.8, abs=1e-2)
    for name, _, numel, sparsity in layer_sparsity_table(model):
        assert abs(sparsity * numel - 0.8 * numel) <= 1, name  # GMP holds every layer at its target


def test_all_prunable_matches_our_prunable_parameters():
    compat.import_sparseml()
    from sparseml.pytorch.utils import get_prunable_layers

    model = nn.Sequential(tiny_model(), nn.Flatten(), nn.Linear(6 * 4, 3))
    theirs = {f"{name}.weight" for name, _ in get_prunable_layers(model)}
    assert theirs == set(prunable_parameters(model))


@pytest.mark.slow
def test_without_shim_sparseml_qat_fails():
    """Guards the reason the shim exists: if a future torch drops __slots__, this test tells us to retire it."""
    code = (
        "import os; os.environ['NM_DISABLE_ANALYTICS']='1'\n"
        "import torch; from torch import nn\n"
        "from sparseml.pytorch.optim import ScheduledModifierManager as M\n"
        "from tests.test_compat import QAT_RECIPE, tiny_model\n"
        "m = tiny_model().train(); M.from_yaml(QAT_RECIPE).apply(m)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "quantization_scheme" in out.stderr


def test_onnx_export_kwargs_pick_legacy_exporter(tmp_path):
    import onnx

    kwargs = compat.onnx_export_kwargs()
    assert kwargs == {"dynamo": False, "opset_version": compat.ONNX_OPSET}
    assert compat.onnx_export_kwargs(13, for_sparseml=True) == {"dynamo": False, "opset": 13}
    model = tiny_model().eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 16, 16), str(path), **kwargs)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == compat.ONNX_OPSET
    assert any(node.op_type == "Conv" for node in proto.graph.node)


def test_sparseml_exporter_accepts_its_kwargs(tmp_path):
    compat.import_sparseml()
    from sparseml.pytorch.utils import ModuleExporter

    model = tiny_model().eval()
    x = torch.randn(1, 3, 16, 16)
    ModuleExporter(model, str(tmp_path)).export_onnx(x, name="tiny.onnx",
                                                     **compat.onnx_export_kwargs(opset=13, for_sparseml=True))
    proto = onnx.load(str(tmp_path / "tiny.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 13  # our opset reached it
    assert {"Conv"} <= {n.op_type for n in proto.graph.node}
    import onnxruntime as ort  # the file computes what the model computes

    y = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {proto.graph.input[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert abs(y - model(x).numpy()).max() < 1e-5


def test_missing_sparseml_gives_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sparseml.pytorch.optim", None)  # makes the import raise ImportError
    with pytest.raises(ImportError, match="pip install -r requirements.txt"):
        compat.import_sparseml()
