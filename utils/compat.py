"""Compatibility layer: the end-of-life SparseML 1.8 stack on torch 2.13, and OpenVINO without telemetry.

The only place that patches anything. Nothing here imports the project's own packages: every layer may use it.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # must precede any sparseml/sparsezoo/deepsparse import

import torch  # noqa: E402
import torch.quantization as _torch_quantization  # noqa: E402
from torch.ao.quantization.qconfig import QConfig as _TorchQConfig  # noqa: E402

from utils.recipe_eval import bounded_eval  # noqa: E402

# SparseML 1.8's own default on torch>=1.10 (sparseml.pytorch.opset); QAT export needs >=13, and DeepSparse 1.8,
# onnxruntime and OpenVINO all load it.
ONNX_OPSET = 14


class QConfigWithScheme(_TorchQConfig):
    """torch's QConfig without __slots__, so SparseML can attach `.quantization_scheme` to it."""


def _qconfig_accepts_attributes(cls: type) -> bool:
    """True when instances of `cls` can carry extra attributes (older torch, or already patched)."""
    try:
        cls(torch.nn.Identity, torch.nn.Identity).quantization_scheme = None
    except AttributeError:
        return False
    return True


def apply_torch_compat() -> bool:
    """Install the QConfig shim if this torch needs it; idempotent. True when torch.quantization.QConfig is patched."""
    current = _torch_quantization.QConfig
    if _qconfig_accepts_attributes(current):
        return current is not _TorchQConfig  # True: patched earlier (maybe before a reload); False: torch needs none
    # sparseml builds every QConfig via `torch.quantization.QConfig(...)` at call time, so swapping that one
    # attribute is enough; torch.ao.quantization.QConfig stays the original and isinstance checks still pass.
    _torch_quantization.QConfig = QConfigWithScheme
    return True


def import_sparseml() -> Any:
    """Apply the shim, then return sparseml's ScheduledModifierManager class with a clear error if it is missing."""
    apply_torch_compat()
    try:
        with warnings.catch_warnings():  # sparseml 1.8 imports pkg_resources; the pin (setuptools<81) keeps it working
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            from sparseml.pytorch.optim import ScheduledModifierManager  # heavy optional stack, loaded on demand
        bound_sparseml_eval()
    except ImportError as e:
        raise ImportError(
            f"SparseML is needed for recipe-driven pruning/quantization but could not be imported ({e}). "
            "Install the pinned stack with `pip install -r requirements.txt` (sparseml==1.8.0 needs Python <3.12)."
        ) from e
    return ScheduledModifierManager


def bound_sparseml_eval() -> None:
    """Route SparseML's recipe eval(...) through bounded_eval, so every from_yaml (stored recipes too) is bounded."""
    import sparseml.optim.helpers as helpers
    from sparseml.utils import UnknownVariableException

    def restricted_eval(expression: str, variables: dict | None = None) -> int | float:
        """SparseML's signature; unknown names raise its exception, which its variable resolution relies on."""
        variables = variables or {}

        def lookup(name: str) -> int | float:
            if name not in variables:
                raise UnknownVariableException(name)
            return variables[name]
        return bounded_eval(expression, lookup)

    helpers.restricted_eval = restricted_eval


def onnx_export_kwargs(opset: int | None = None, for_sparseml: bool = False) -> dict[str, Any]:
    """Keyword arguments that pick the legacy TorchScript ONNX exporter with a fixed opset.

    torch 2.13 defaults to the dynamo exporter, which needs onnxscript; installing that pulls numpy 2 / onnx 1.2x and
    breaks the sparseml pins. For torch.onnx.export the opset key is `opset_version`; SparseML's
    ModuleExporter.export_onnx takes `opset` itself and forwards the rest to torch, so `for_sparseml=True` names it so.
    """
    return {"dynamo": False, ("opset" if for_sparseml else "opset_version"): int(opset or ONNX_OPSET)}


def disable_openvino_telemetry() -> None:
    """Make `import openvino_telemetry` fail, so OpenVINO's converter uses its built-in no-op stub.

    OpenVINO's model converter otherwise opens connections to an analytics host and writes a client id under
    $HOME/intel/ on first use; loading or exporting a model must not touch the network. Call before importing openvino.
    """
    if "openvino_telemetry" not in sys.modules or sys.modules["openvino_telemetry"] is not None:
        for name in [m for m in sys.modules if m == "openvino_telemetry" or m.startswith("openvino_telemetry.")]:
            del sys.modules[name]
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # a None entry makes import raise


def import_openvino() -> Any:
    """openvino with telemetry off (ImportError propagates: the engine turns it into EngineUnavailable)."""
    disable_openvino_telemetry()
    import openvino  # optional engine package

    return openvino
