"""What Ultralytics' train.py --weights does with the file: Model(ckpt['model'].yaml) + intersect_dicts."""
import sys
sys.argv.append("--alias")
exec(open(__file__.replace("check_train_transfer", "check_ultralytics")).read().split("pt, ref = sys.argv[1]")[0])
from yolov5.models.yolo import Model
from yolov5.utils.general import intersect_dicts
for f in sys.argv[1:]:  # the exec above took "--alias" back out
    ck = torch.load(f, map_location="cpu")
    model = Model(ck["model"].yaml, ch=3, nc=80)
    csd = intersect_dicts(ck["model"].float().state_dict(), model.state_dict())
    print(f"{f}: train.py --weights transfers {len(csd)}/{len(model.state_dict())} tensors")
