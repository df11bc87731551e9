"""The offline demo behind `make demo`: synthetic data -> dense training -> pruning recipe -> mAP against sparsity.

Usage:
    python demo.py                       # everything on embedded defaults, no network, no downloads
    python demo.py --epochs 6 --prune-epochs 4 --sparsity 0.7 --oneshot 0.3 0.5 0.7 --imgsz 128 --out runs/demo

Steps: generate a synthetic shapes dataset (datasets/shapes), fine-tune the official yolov5n.pt on it (dense),
prune it to --sparsity with the GMP recipe recipes/demo.pruned.yaml while fine-tuning, compare with one-shot pruning
(no fine-tuning) at a few levels, export the pruned model to ONNX and run detect.py with ONNX Runtime.
Every step is one of the project's own scripts called through its run() function, so the demo is also a smoke test
of the user-facing commands. The summary table is printed and written to <out>/summary.csv and summary.json.
"""
from __future__ import annotations

import os

# libgomp's default busy-waiting makes each PyTorch thread spin while its partner is descheduled: on a CPU shared
# with other jobs a training batch then took ~10x the CPU time and wall time (measured). Passive threads sleep between
# parallel regions instead; on an idle machine that only adds a wake-up per region.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import benchmark  # noqa: E402
import detect  # noqa: E402
import prune  # noqa: E402
import train  # noqa: E402
import val  # noqa: E402
import utils.sparsity.rebuild  # noqa: E402,F401  (registers sparse/QAT/channel checkpoint rebuilds)
from utils import synthetic  # noqa: E402
from utils.assets import asset  # noqa: E402
from utils.benchmark.machine import FOREIGN_LOAD_WARN  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.data_config import check_dataset  # noqa: E402
from utils.export import export_weights  # noqa: E402
from utils.sparsity.measure import global_sparsity  # noqa: E402
from utils.cli import exit_on_user_error  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, setup_logging  # noqa: E402

HYP = ROOT / "data" / "hyps" / "hyp.demo.yaml"
RECIPE = ROOT / "recipes" / "demo.pruned.yaml"
SUMMARY_FIELDS = ("stage", "epochs", "sparsity", "map50", "map", "seconds", "weights")


def banner(step: str) -> float:
    """Mark a step in the log; returns its start time."""
    LOGGER.info(f"\n{'=' * 20} demo: {step} {'=' * 20}")
    return time.perf_counter()


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (dataloader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_dataset(root: Path, imgsz: int, n_train: int, n_val: int) -> Path:
    """Synthetic shapes on textured backgrounds (4 classes, 1-5 objects per image); returns the data yaml."""
    return synthetic.run(out=root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=0)


def measured_sparsity(weights: Path) -> float:
    """Global sparsity of the prunable weights as saved, so the table shows what the file holds."""
    return global_sparsity(load_model(str(weights)))


def train_stage(data: Path, weights: Path, out: Path, name: str, imgsz: int, epochs: int, batch_size: int,
                **kw) -> tuple[Path, dict]:
    """train.py through run(); per-epoch validation is off (--noval), the final epoch and best.pt are validated."""
    res = train.run(data=str(data), weights=str(weights), hyp=str(HYP), imgsz=imgsz, epochs=epochs,
                    batch_size=batch_size, workers=2, seed=0, noval=True, noplots=True, project=str(out), name=name,
                    exist_ok=True, **kw)
    return out / name / "weights" / "best.pt", res


def oneshot(data: Path, weights: Path, out: Path, imgsz: int, levels: list[float]) -> list[dict]:
    """prune.py --sweep: one-shot global magnitude pruning of the dense model, no fine-tuning."""
    rows = prune.run(data=str(data), weights=str(weights), imgsz=imgsz, batch_size=32, workers=2, project=str(out),
                     name="oneshot", exist_ok=True, sweep=levels, method=["global"])
    return rows["global"]


def export_and_detect(weights: Path, data: Path, out: Path, imgsz: int) -> dict:
    """ONNX export, then detect.py with ONNX Runtime on a few val images."""
    res = export_weights(weights, imgsz=imgsz, log=LOGGER.info)
    onnx_file = res["files"][0]
    source = sorted((data.parent / "images" / "val").glob("*.jpg"))[:4]
    listing = out / "detect_sources.txt"
    listing.write_text("".join(f"{p}\n" for p in source))
    save_dir = detect.run(weights=str(onnx_file), source=str(listing), imgsz=imgsz, engine="onnxruntime",
                          project=str(out), name="detect", exist_ok=True)
    return {"onnx": str(onnx_file), "onnx_sparsity": res["onnx_sparsity"], "detect_dir": str(save_dir)}


def int8_and_speed(models: dict[str, tuple[Path, float]], data: Path, out: Path, imgsz: int,
                   speed_imgsz: int = 320, engines: tuple[str, ...] = ("onnxruntime", "openvino")) -> dict:
    """The point of the project, measured: each model as FP32 and QDQ INT8 ONNX, its mAP50 (at the demo's size), and
    end-to-end batch-1 latency (at speed_imgsz: at the demo's 128 px fixed costs hide the engine) on
    production-licence engines through benchmark.py's pipeline, ratios to dense FP32 on ONNX Runtime."""
    data_dict = check_dataset(str(data))
    maps, timed = {}, {}
    for name, (weights, map50) in models.items():
        int8 = export_weights(weights, imgsz=imgsz, int8=True, data=data_dict, calib_images=64,
                              log=LOGGER.info)["files"][1]
        maps[f"{name} FP32"] = map50
        maps[f"{name} INT8"] = val.run(data=str(data), weights=str(int8), imgsz=imgsz, batch_size=1, workers=2,
                                       engine="onnxruntime", project=str(out), name=f"val_{int8.stem}",
                                       exist_ok=True, plots=False)["map50"]
        big = out / "speed_models" / f"{name}.pt"  # a copy, so the speed-size files do not replace the ones above
        big.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights, big)
        fp32, int8 = export_weights(big, imgsz=speed_imgsz, int8=True, data=data_dict, calib_images=64,
                                    verify=False, log=LOGGER.info)["files"][:2]
        timed[f"{name} FP32"], timed[f"{name} INT8"] = fp32, int8
    res = benchmark.run(weights=[str(f) for f in timed.values()], engines=list(engines), batch_size=[1],
                        imgsz=[speed_imgsz], source=str(data.parent / "images" / "val"), warmup=10, time_s=3.0,
                        project=str(out), name="speed", exist_ok=True)
    ms = {(r["variant"].split(" ")[0], r["engine"]): r["ms_mean"] for r in res["rows"] if r["status"] == "ok"}
    table = [{"model": name, "map50": maps[name], **{e: ms.get((Path(f).stem, e)) for e in engines}}
             for name, f in timed.items()]
    load = max((r.get("foreign_load") or 0.0 for r in res["rows"]), default=0.0)
    return {"rows": table, "engines": list(engines), "imgsz": imgsz, "speed_imgsz": speed_imgsz,
            "speed_dir": str(out / "speed"), "foreign_load": load}


def row(stage: str, epochs: int, weights: Path, sparsity: float, m: dict, seconds: float) -> dict:
    """One line of the summary table; epochs = training epochs this model got on the shapes set."""
    return {"stage": stage, "epochs": epochs, "sparsity": round(float(sparsity), 4),
            "map50": round(float(m["map50"]), 4), "map": round(float(m["map"]), 4), "seconds": round(seconds, 1),
            "weights": str(weights)}


@contextlib.contextmanager
def timed(s: dict, key: str, title: str) -> Iterator[None]:
    """Banner for a step, and its wall time in s['seconds'][key] for the summary."""
    t = banner(title)
    yield
    s["seconds"][key] = round(time.perf_counter() - t, 1)


def totals(t0: float, cpu0: float, load0: tuple[float, float, float]) -> dict:
    """Wall and CPU time of the whole run with the load average around it: timings on a shared CPU need both."""
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_seconds() - cpu0, 1),
            "load_start": [round(x, 2) for x in load0], "load_end": [round(x, 2) for x in os.getloadavg()]}


def run(out: str = "runs/demo", dataset: str = "datasets/shapes", imgsz: int = 128, epochs: int = 6,
        prune_epochs: int = 4, sparsity: float = 0.7, n_train: int = 1500, n_val: int = 100, batch_size: int = 16,
        oneshot_levels: tuple[float, ...] | list[float] = (0.3, 0.5, 0.7), export: bool = True,
        speed: bool = True, speed_imgsz: int = 320) -> dict:
    """The whole job; returns (and saves) the summary: one row per model, plus timings and load."""
    out = increment_path(Path(out), mkdir=True)
    t0, cpu0, load0 = time.perf_counter(), cpu_seconds(), os.getloadavg()
    s: dict = {"out": str(out), "rows": [], "seconds": {}}
    with timed(s, "dataset", "1/6 synthetic dataset"):
        data = make_dataset(Path(dataset), imgsz, n_train, n_val)
    with timed(s, "dense", "2/6 fine-tune yolov5n.pt (dense)"):
        dense, m = train_stage(data, asset("weights/yolov5n.pt"), out, "train", imgsz, epochs, batch_size)
    s["rows"].append(row("dense yolov5n", epochs, dense, measured_sparsity(dense), m, s["seconds"]["dense"]))
    if oneshot_levels:
        with timed(s, "oneshot", "3/6 one-shot global magnitude pruning of the dense model (no fine-tuning)"):
            sweep = oneshot(data, dense, out, imgsz, list(oneshot_levels))
        each = s["seconds"]["oneshot"] / len(sweep)
        s["rows"] += [row(f"one-shot {r['target']:.0%}", epochs, dense, r["sparsity"], r, each) for r in sweep]
    with timed(s, "prune", f"4/6 pruning recipe {RECIPE.name}: GMP to {sparsity:.0%} while fine-tuning"):
        args = json.dumps({"num_epochs": prune_epochs, "final_sparsity": sparsity})
        pruned, m = train_stage(data, dense, out, "prune", imgsz, prune_epochs, batch_size, recipe=str(RECIPE),
                                recipe_args=args)
    s["rows"].append(row(f"GMP {sparsity:.0%} + fine-tune", epochs + prune_epochs, pruned,
                         measured_sparsity(pruned), m, s["seconds"]["prune"]))
    if export:
        with timed(s, "export_detect", "5/6 export the pruned model to ONNX and detect with ONNX Runtime"):
            s["export"] = export_and_detect(pruned, data, out, imgsz)
    if speed:
        with timed(s, "speed", "6/6 INT8 (QDQ) export, mAP and end-to-end speed on ONNX Runtime and OpenVINO"):
            s["speed"] = int8_and_speed({"dense": (dense, s["rows"][0]["map50"]),
                                         f"pruned{sparsity * 100:.0f}": (pruned, s["rows"][-1]["map50"])},
                                        data, out, imgsz, speed_imgsz)
    s["total"] = totals(t0, cpu0, load0)
    save_summary(s, out)
    print_summary(s)
    return s


def save_summary(s: dict, out: Path) -> None:
    """summary.json (everything) and summary.csv (the table)."""
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(s["rows"])


def print_summary(s: dict) -> None:
    """The demo's last words: how good each model is against its measured sparsity, what it cost, where files are."""
    LOGGER.info(f"\n{'=' * 20} demo summary: yolov5n on synthetic shapes (val split) {'=' * 20}")
    LOGGER.info(f"{'stage':<24}{'epochs':>7}{'sparsity':>10}{'mAP50':>9}{'mAP50-95':>10}{'time (s)':>10}")
    for r in s["rows"]:
        LOGGER.info(f"{r['stage']:<24}{r['epochs']:>7}{r['sparsity']:>10.3f}{r['map50']:>9.3f}{r['map']:>10.3f}"
                    f"{r['seconds']:>10.1f}")
    if "export" in s:
        LOGGER.info(f"ONNX (sparsity {s['export']['onnx_sparsity']:.3f}): {s['export']['onnx']}  "
                    f"detections: {s['export']['detect_dir']}")
    if "speed" in s:
        LOGGER.info(speed_text(s["speed"]))
    t = s["total"]
    LOGGER.info(f"time per step (s): {s['seconds']}")
    LOGGER.info(f"total {t['wall_s'] / 60:.1f} min wall, {t['cpu_s'] / 60:.1f} min CPU "
                f"(load average {t['load_start'][0]:.1f} at start, {t['load_end'][0]:.1f} at end)")
    LOGGER.info(f"everything is in {s['out']} (summary.csv, summary.json)")


def speed_text(sp: dict) -> str:
    """The speed table and the one-line conclusion: the fastest model that keeps >= 95% of dense mAP50."""
    engines, rows = sp["engines"], sp["rows"]
    base = rows[0]["onnxruntime"] or float("nan")  # dense FP32 on ONNX Runtime
    head = f"{'model':<16}{'mAP50':>7}{'% dense':>9}" + "".join(f"{e + ' ms':>22}" for e in engines)
    lines = [f"\nmAP50 at {sp['imgsz']} px (INT8: ONNX Runtime); end to end, batch 1, {sp['speed_imgsz']} px "
             f"(pre-process + engine + NMS), ratio to dense FP32 on onnxruntime", head]
    for r in rows:
        cells = "".join(f"{r[e]:>13.2f} ({base / r[e]:>4.2f}x)" if r[e] else f"{'-':>22}" for e in engines)
        lines.append(f"{r['model']:<16}{r['map50']:>7.3f}{r['map50'] / rows[0]['map50']:>9.0%}" + cells)
    keep = [(r, e) for r in rows for e in engines if r[e] and r["map50"] >= 0.95 * rows[0]["map50"]]
    if keep:
        r, e = min(keep, key=lambda x: x[0][x[1]])
        lines.append(f"conclusion: {r['model']}: {r['map50']:.3f} mAP50 ({r['map50'] / rows[0]['map50']:.0%} of "
                     f"dense), {base / r[e]:.2f}x faster end to end on {e} than dense FP32 on onnxruntime")
    if sp.get("foreign_load", 0.0) > FOREIGN_LOAD_WARN:
        lines.append(f"WARNING: other processes used up to {sp['foreign_load']:.0%} of the CPUs while timing: these "
                     f"ratios are unreliable, rerun on an idle machine")
    return "\n".join(lines)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (incremented: runs/demo2, ...)")
    p.add_argument("--dataset", default="datasets/shapes", help="where the synthetic dataset is (re)generated")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=128, help="dataset, train and val image size")
    p.add_argument("--epochs", type=int, default=6, help="dense fine-tuning epochs")
    p.add_argument("--prune-epochs", type=int, default=4, help="epochs of the pruning recipe (2/3 pruning, 1/3 tune)")
    p.add_argument("--sparsity", type=float, default=0.7, help="global sparsity the recipe prunes to")
    p.add_argument("--n-train", type=int, default=1500, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=100, help="synthetic validation images")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--oneshot", dest="oneshot_levels", type=float, nargs="*", default=[0.3, 0.5, 0.7],
                   help="one-shot global sparsity levels to compare with (no values: skip)")
    p.add_argument("--no-export", dest="export", action="store_false", help="skip ONNX export and detect")
    p.add_argument("--no-speed", dest="speed", action="store_false",
                   help="skip the INT8 export and the speed table on ONNX Runtime and OpenVINO")
    p.add_argument("--speed-imgsz", type=int, default=320, help="image size of the speed table (end to end, batch 1)")
    opt = p.parse_args(argv)
    if not 0 < opt.sparsity < 1 or opt.epochs < 1 or opt.prune_epochs < 2:
        p.error("need 0 < --sparsity < 1, --epochs >= 1 and --prune-epochs >= 2")
    return opt


def main(opt: argparse.Namespace) -> dict:
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    with exit_on_user_error():
        main(parse_opt())
