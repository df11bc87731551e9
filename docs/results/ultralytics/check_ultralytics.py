"""Open a yolov5-sparse --include ultralytics file with Ultralytics YOLOv5's own loaders (pip yolov5==7.0.14).

Stubs torchvision, ultralytics.utils.checks and the package's Hugging Face lookup only (neither is used on the load/forward path; torchvision's CPU
build is not available here). torch>=2.6 defaults torch.load to weights_only=True, which refuses every pickled
YOLOv5 checkpoint (official ones too); Ultralytics' current code passes weights_only=False, so we do the same.
"""
import sys, types
import torch

tv = types.ModuleType("torchvision")
tv.datasets = types.SimpleNamespace(ImageFolder=object)
tv.ops = types.SimpleNamespace(nms=None)
tv.__version__ = "0.0"
for name in ("torchvision.transforms", "torchvision.transforms.functional"):
    sys.modules[name] = types.ModuleType(name)
tv.transforms = sys.modules["torchvision.transforms"]
sys.modules["torchvision"] = tv
ul = types.ModuleType("ultralytics"); ulu = types.ModuleType("ultralytics.utils"); ulc = types.ModuleType("ultralytics.utils.checks")
ulc.check_requirements = lambda *a, **k: None
sys.modules.update({"ultralytics": ul, "ultralytics.utils": ulu, "ultralytics.utils.checks": ulc})
_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})

if "--alias" in sys.argv:  # one class per name, as in a clone of github.com/ultralytics/yolov5 (models/ at the root)
    sys.argv.remove("--alias")
    import yolov5.models, yolov5.models.common, yolov5.models.experimental, yolov5.models.yolo  # noqa: E401,E402
    for n in ("models", "models.common", "models.experimental", "models.yolo"):
        sys.modules[n] = sys.modules["yolov5." + n]
from yolov5.models.experimental import attempt_load  # noqa: E402
from yolov5.models.common import DetectMultiBackend  # noqa: E402
import models.yolo  # noqa: E402  (what the pickle resolves to: the pip package's own models/ folder)
import yolov5.utils.downloads, yolov5.models.common  # noqa: E402
yolov5.utils.downloads.attempt_download_from_hub = lambda *a, **k: None  # offline: the package's Hugging Face lookup
yolov5.models.common.attempt_download_from_hub = lambda *a, **k: None

pt, ref = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
m = attempt_load(pt, device="cpu", fuse=True)
fused = sum(not hasattr(x, "bn") for x in m.modules() if type(x).__name__ == "Conv")
print(f"attempt_load: Conv layers fused by Ultralytics' fuse(): {fused}")
print("attempt_load:", type(m).__module__, type(m).__name__, "| from the package:", type(m) is models.yolo.Model,
      "| names[0..2]:", [m.names[i] for i in range(3)], "| stride:", m.stride.tolist(), "| nc:", m.nc)
with torch.no_grad():
    y = m(ref["im"])[0]
d = (y - ref["y"]).abs()
print(f"attempt_load (fused) vs yolov5-sparse: max abs diff xywh {d[..., :4].max():.2e}, scores {d[..., 4:].max():.2e}")
b = DetectMultiBackend(pt, device=torch.device("cpu"))
with torch.no_grad():
    y2 = b(ref["im"])
y2 = y2[0] if isinstance(y2, (list, tuple)) else y2
d2 = (y2 - ref["y"]).abs()
print(f"DetectMultiBackend: pt={b.pt} stride={b.stride} names[0]={b.names[0]}; max abs diff xywh {d2[..., :4].max():.2e}, "
      f"scores {d2[..., 4:].max():.2e}")
