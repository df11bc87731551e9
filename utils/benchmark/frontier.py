"""The accuracy-speed frontier of a benchmark.py --data run: the Pareto front, frontier.png and the README tables."""
from __future__ import annotations

from pathlib import Path

from utils.engines import ENGINES

MARKERS = "osD^v<>ph*Xd"


def loaded(row: dict) -> bool:
    """Timed while other processes used the CPUs (benchmark.py's foreign-load meter)."""
    return row.get("note", "").startswith("foreign")


def frontier_rows(rows: list[dict], trusted: bool = True) -> list[dict]:
    """Batch-1 sync rows with an mAP (trusted: without the rows timed under foreign load, left off the front)."""
    return [r for r in rows if r["status"] == "ok" and r["batch_size"] == 1 and r["scenario"] == "sync"
            and r.get("map50") is not None and not (trusted and loaded(r))]


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both latency (lower) and mAP50 (higher), fastest first."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["ms_mean"], -r["map50"])):
        if r["map50"] > best:
            front.append(r)
            best = r["map50"]
    return front


def plot_frontier(rows: list[dict], file: Path) -> Path | None:
    """mAP50 against end-to-end batch-1 latency: a marker per variant, a colour per engine, the front as a line."""
    pts = frontier_rows(rows, trusted=False)
    if not pts:
        return None
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # matplotlib only when a frontier exists
    )
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(11, 6), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    variants = list(dict.fromkeys(r["variant"] for r in pts))
    for r in pts:
        color = ENGINES[r["engine"]].color if r["engine"] in ENGINES else "#999999"
        ax.scatter(r["ms_mean"], r["map50"], marker=MARKERS[variants.index(r["variant"]) % len(MARKERS)], s=60,
                   facecolors="none" if loaded(r) else color, edgecolors=color if loaded(r) else "black",
                   linewidths=1.2 if loaded(r) else 0.5, zorder=3)
    front = pareto([r for r in pts if not loaded(r)])
    ax.plot([r["ms_mean"] for r in front], [r["map50"] for r in front], "k--", lw=1, zorder=2, label="Pareto front")
    for v in variants:  # legend entries: markers for variants (grey), colours for engines
        ax.scatter([], [], marker=MARKERS[variants.index(v) % len(MARKERS)], color="#bbbbbb", edgecolors="black",
                   label=v)
    for e in dict.fromkeys(r["engine"] for r in pts):
        ax.scatter([], [], marker="s", color=ENGINES[e].color if e in ENGINES else "#999999", label=e)
    if any(loaded(r) for r in pts):
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="black", label="hollow: timed under foreign "
                   "CPU load (off the front)")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")  # 12, not 1.2 x 10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("end-to-end latency, batch 1 (ms, pre + engine + post; log scale, lower is better)")
    ax.set_ylabel("mAP@0.5 on the val split (higher is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no marker hidden
    fig.savefig(file, dpi=120)
    return file


def _f(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ship_lines(rows: list[dict], keep: float = 0.95) -> list[str]:
    """Per engine, the fastest batch-1 row that keeps `keep` of the baseline's mAP50: which file to deploy there."""
    trusted = [r for r in frontier_rows(rows) if r.get("map50_kept") is not None]
    out = []
    for engine in dict.fromkeys(r["engine"] for r in trusted):
        ok = [r for r in trusted if r["engine"] == engine and r["map50_kept"] >= keep]
        if ok:
            r = min(ok, key=lambda r: r["ms_mean"])
            out.append(f"- {engine}: {r['variant']} ({r['ms_mean']:.1f} ms, {_f(r.get('ratio'), '.2f')}x the "
                       f"baseline, mAP50 {r['map50']:.3f} = {100 * r['map50_kept']:.1f}% of dense)")
        else:
            out.append(f"- {engine}: no variant keeps {keep:.0%} of the dense mAP50")
    return ["", f"Which variant to ship (fastest at batch 1 keeping >= {keep:.0%} of the dense mAP50; rows timed "
            "under foreign load left out):", *out] if out else []


def format_accuracy_markdown(rows: list[dict], baseline: str) -> str:
    """Seed Table 1 for our variants: one line per (variant, engine) with mAP, what it keeps, size and speed."""
    acc = [r for r in rows if r.get("map50") is not None and r["scenario"] == "sync"]
    if not acc:
        return ""
    lines = [(f"Accuracy and speed per variant and engine (mAP on the --data val split; kept and ratio against "
             f"{baseline}; latency = batch 1 end to end)"), "",
             ("| variant | engine | sparsity | precision | mAP50 | mAP50-95 | % of dense mAP50 | gzip MB | "
             "ms (b1) | pre+post | ratio (b1) | items/s (b64) | ratio (b64) |"), "|---" * 13 + "|"]
    for r in [x for x in acc if x["batch_size"] == 1]:
        big = next((x for x in rows if x["variant"] == r["variant"] and x["engine"] == r["engine"]
                    and x["batch_size"] > 1 and x["status"] == "ok" and x["scenario"] == "sync"), None)
        flag = " (loaded)" if r.get("note", "").startswith("foreign") else ""
        lines.append(
            f"| {r['variant']} | {r['engine']} | {r['sparsity']:.1%} | {r['precision']} | {r['map50']:.3f} | "
            f"{r['map50_95']:.3f} | {_f(r.get('map50_kept') and 100 * r['map50_kept'], '.1f')} | "
            f"{_f(r.get('size_gzip_mb'), '.2f')} | {r['ms_mean']:.1f}{flag} | {_f(r.get('pre_post_share'), '.0%')} | "
            f"{_f(r.get('ratio'), '.2f')} | {_f(big and big['items_per_sec'], '.1f')} | "
            f"{_f(big and big.get('ratio'), '.2f')} |")
    lines += ship_lines(rows)
    front = pareto(frontier_rows(rows))
    if front:
        lines += ["", "Pareto front (batch 1): " + " -> ".join(f"{r['variant']} on {r['engine']} "
                                                               f"({r['ms_mean']:.1f} ms, mAP50 {r['map50']:.3f})"
                                                               for r in front)]
    return "\n".join(lines + [""])
