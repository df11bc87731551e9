"""Benchmark results out: ratio to a baseline row, a console table, results.csv, results.json and a bar chart."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable

from utils.engines import ENGINES

from .frontier import format_accuracy_markdown, plot_frontier
from .machine import int8_warning

COLUMNS = ("model", "variant", "sparsity", "pattern", "precision", "engine", "engine_version", "batch_size",
           "scenario", "streams", "threads", "imgsz", "warmup", "iterations", "items_per_sec", "ms_mean",
           "ms_median", "ms_p90", "ms_p99", "ms_std", "pre_ms", "engine_ms", "post_ms", "wall_s", "foreign_load",
           "ratio", "pre_post_share", "size_gzip_mb", "map50", "map50_95", "P", "R", "map50_kept", "status",
           "int8_kernels", "note")


def parse_baseline(spec: str) -> tuple[str, str]:
    """'onnxruntime:dense' -> ('onnxruntime', 'dense FP32'); the variant part matches a substring of the name."""
    engine, _, variant = spec.partition(":")
    variant = variant or "dense"
    return engine.strip().lower(), variant if ("FP32" in variant or "INT8" in variant) else f"{variant} FP32"


def _is_baseline(row: dict, engine: str, variant: str) -> bool:
    return row["engine"] == engine and variant in row["variant"] and row["status"] == "ok"


def add_ratios(rows: list[dict], baseline: str = "onnxruntime:dense") -> str | None:
    """ratio = items/sec over the baseline row's, matched on batch size (same model group and scenario first).

    Returns a note when some rows have no baseline to compare with.
    """
    engine, variant = parse_baseline(baseline)
    missing = False
    for row in rows:
        row["ratio"] = None
        if row["status"] != "ok":
            continue
        same_bs = [b for b in rows if _is_baseline(b, engine, variant) and b["batch_size"] == row["batch_size"]]
        ranked = sorted(same_bs, key=lambda b: (b["model"] != row["model"], b["scenario"] != row["scenario"]))
        if ranked:
            row["ratio"] = row["items_per_sec"] / ranked[0]["items_per_sec"]
        else:
            missing = True
    return f"no baseline row '{engine}' + '{variant}' for some batch sizes; their ratio is blank" if missing else None


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _note(r: dict) -> str:
    """The row's note, after how many convs its backend ran in INT8 (INT8 rows)."""
    return "; ".join(x for x in (r.get("int8_kernels"), r.get("note")) if x)


def format_table(rows: list[dict], baseline: str) -> str:
    """Fixed-width console table, one row per (variant, engine, batch, scenario)."""
    wv = min(max([len(r["variant"]) for r in rows] + [7]), 48)
    acc = any(r.get("map50") is not None for r in rows)
    head = (f"{'variant':<{wv}} {'engine':<12} {'bs':>3} {'scen':<7} {'items/s':>8} {'mean':>8} {'median':>8} "
            f"{'p90':>8} {'p99':>8} {'std':>6} {'pre':>6} {'infer':>8} {'post':>6} {'load%':>6} {'ratio':>6}"
            + (f" {'mAP50':>6} {'kept%':>6}" if acc else "") + "  note")
    lines = [f"ms/batch end to end (pre + infer + post); ratio = items/s over {baseline} at the same batch size",
             head]
    for r in rows:
        load = None if r.get("foreign_load") is None else r["foreign_load"] * 100
        scen = f"async/{r['streams']}" if r["scenario"] == "async" and r.get("streams") else r["scenario"]
        lines.append(
            f"{r['variant'][:wv]:<{wv}} {r['engine']:<12} {r['batch_size']:>3} {scen:<7} "
            f"{_fmt(r.get('items_per_sec')):>8} {_fmt(r.get('ms_mean')):>8} {_fmt(r.get('ms_median')):>8} "
            f"{_fmt(r.get('ms_p90')):>8} {_fmt(r.get('ms_p99')):>8} {_fmt(r.get('ms_std')):>6} "
            f"{_fmt(r.get('pre_ms')):>6} {_fmt(r.get('engine_ms')):>8} {_fmt(r.get('post_ms')):>6} "
            f"{_fmt(load):>6} {_fmt(r.get('ratio'), '.2f'):>6}"
            + (f" {_fmt(r.get('map50'), '.3f'):>6} {_fmt(r.get('map50_kept') and 100 * r['map50_kept']):>6}"
               if acc else "") + f"  {_note(r)}")
    return "\n".join(lines)


def format_markdown(rows: list[dict], baseline: str) -> str:
    """README tables: per batch size, variant x engine cells 'items/s (ratio)', plus each row's pre+post share."""
    out = []
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    for bs in sorted({r["batch_size"] for r in rows}):
        sub = [r for r in rows if r["batch_size"] == bs and r["scenario"] == "sync"]
        out += [f"Batch {bs} ({'latency' if bs == 1 else 'throughput'}): items/s end to end (ratio to {baseline}); "
                "last column: pre- + post-processing share of the fastest engine's time", "",
                "| variant | " + " | ".join(engines) + " | pre+post |", "|---" * (len(engines) + 2) + "|"]
        for variant in dict.fromkeys(r["variant"] for r in sub):
            cells, best = [], None
            for e in engines:
                r = next((x for x in sub if x["variant"] == variant and x["engine"] == e), None)
                if r is None or r["status"] != "ok":
                    cells.append("n/a" if r is not None and r["status"] == "n/a" else "-")
                    continue
                cells.append(f"{r['items_per_sec']:.2f} ({_fmt(r.get('ratio'), '.2f')}x)")
                best = r if best is None or r["items_per_sec"] > best["items_per_sec"] else best
            share = f"{(best['pre_ms'] + best['post_ms']) / best['ms_mean']:.0%}" if best else "-"
            out.append(f"| {variant} | " + " | ".join(cells) + f" | {share} |")
        out.append("")
    kernels = [f"- {r['variant']} on {r['engine']} (batch {r['batch_size']}): {r['int8_kernels']}"
               for r in rows if r.get("int8_kernels")]
    out += (["INT8 rows, convolutions the backend ran in INT8:", *kernels, ""] if kernels else [])
    return "\n".join(out) + "\n" + format_accuracy_markdown(rows, baseline)


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) and not math.isnan(v) else v


def write_csv(rows: list[dict], file: Path) -> Path:
    """One line per row, every column (blank where a row was n/a)."""
    with open(file, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else _round(r.get(k))) for k in COLUMNS})
    return file


def write_json(report: dict[str, Any], file: Path) -> Path:
    """Machine, method, settings, rows, warnings and notes in one file for later comparison."""
    def clean(o: Any) -> Any:
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o if isinstance(o, (str, int, float, bool)) or o is None else str(o)

    file.write_text(json.dumps(clean(report), indent=2), encoding="utf-8")
    return file


def plot_bars(rows: list[dict], file: Path) -> Path:
    """Horizontal items/sec bars, one panel per batch size (latency and throughput scales differ)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok"]
    sizes = sorted({r["batch_size"] for r in ok}) or [1]
    height = max(2.5, 0.35 * max((sum(r["batch_size"] == b for r in ok) for b in sizes), default=1) + 1.2)
    fig = Figure(figsize=(9, height * len(sizes)), tight_layout=True)
    FigureCanvasAgg(fig)
    for i, bs in enumerate(sizes):
        ax = fig.add_subplot(len(sizes), 1, i + 1)
        sub = [r for r in ok if r["batch_size"] == bs]
        labels = [f"{r['variant']} | {r['engine']}" + (" async" if r["scenario"] == "async" else "") for r in sub]
        ax.barh(range(len(sub)), [r["items_per_sec"] for r in sub],
                color=[ENGINES[r["engine"]].color if r["engine"] in ENGINES else "#999999" for r in sub])
        ax.set_yticks(range(len(sub)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("items/sec (end to end, higher is better)")
        ax.set_title(f"batch size {bs}" + (" (latency)" if bs == 1 else " (throughput)"), fontsize=10)
        for y, r in enumerate(sub):
            ax.text(r["items_per_sec"], y, f" {r['items_per_sec']:.1f}", va="center", fontsize=7)
    fig.savefig(file, dpi=120)
    return file


def collect_warnings(rows: list[dict], machine: dict) -> list[str]:
    """Rows timed under foreign load (one summary line; each row's note names it), and INT8 without VNNI."""
    loaded = [r["foreign_load"] for r in rows if r["status"] == "ok" and r["note"].startswith("foreign")]
    ok = sum(r["status"] == "ok" for r in rows)
    out = [f"WARNING: {len(loaded)} of {ok} rows ran while other processes used > 5% of the CPUs (max "
           f"{max(loaded):.0%}); those timings are unreliable, re-run on an idle machine"] if loaded else []
    if any(r["precision"] == "INT8" and r["status"] == "ok" for r in rows):
        out += [w for w in [int8_warning(machine)] if w]
    return out


def write_outputs(report: dict[str, Any], save_dir: Path, log: Callable[[str], None] = print) -> None:
    """Table on stdout, then results.csv, results.json, benchmark.png and results.md (README tables)."""
    log("\n" + format_table(report["rows"], report["baseline"]))
    for line in report["warnings"] + [f"Note: {n}" for n in report["notes"]]:
        log(line)
    md = save_dir / "results.md"
    md.write_text(format_markdown(report["rows"], report["baseline"]), encoding="utf-8")
    files = [write_csv(report["rows"], save_dir / "results.csv"), write_json(report, save_dir / "results.json"),
             plot_bars(report["rows"], save_dir / "benchmark.png"), md,
             plot_frontier(report["rows"], save_dir / "frontier.png")]
    files = [f for f in files if f is not None]  # no frontier without --data
    log(f"Results saved to {save_dir} ({', '.join(f.name for f in files)})")


if __name__ == "__main__":  # python -m utils.benchmark.report runs/benchmark/exp/results.json: README tables again
    import sys

    from utils.cli import exit_on_user_error

    with exit_on_user_error():  # a missing or foreign file: one line, not a traceback
        if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
            raise FileNotFoundError(f"usage: python -m utils.benchmark.report runs/benchmark/exp/results.json "
                                    f"(got {sys.argv[1:]})")
        saved = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
        print(format_markdown(saved["rows"], saved["baseline"]))
