"""Our side of the Ultralytics check: export <weights> with --include ultralytics, and save bus.jpg (letterboxed to
640) with our model's output as ref.pt for check_ultralytics.py. Run with this repo's venv from the repo root:
    python docs/results/ultralytics/make_ref.py path/to/yolov5n.pt   # -> yolov5n_ultralytics.pt + ref.pt beside it
"""
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import export  # noqa: E402
from utils.assets import asset  # noqa: E402
from utils.augmentations import letterbox  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402

weights = Path(sys.argv[1])
export.run(weights=str(weights), include=["ultralytics"])
img = letterbox(cv2.imread(str(asset("images/bus.jpg"))), 640, auto=False)[0]
im = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
with torch.no_grad():
    y = load_model(weights).eval()(im)[0]
torch.save({"im": im, "y": y}, weights.with_name("ref.pt"))
