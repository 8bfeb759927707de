#!/usr/bin/env python3
"""The capacity curves: loadtests/results/capacity.csv (written by `make loadtest`) as one PNG per
model, and per model and worker count the highest arrival rate within that model's SLO.

    plot_capacity.py CAPACITY.csv OUT.png [--slo FILE]

OUT.png is the default model's (digits); another model's goes beside it as OUT-<model>.png. A CSV
without a `model` column (written before there were two models) is the digits model's.

Latencies are plotted as measured over every answer (vegeta's own percentiles, a 202 at the end of
the 10 s sync wait included), on a log scale so the knee and the collapse after it both show; a
filled marker is a step within the SLO (where every non-200 counted as a miss), a hollow one a breach.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt  # noqa: E402  (only after the backend is chosen)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_slo  # noqa: E402  (beside this file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("png")
    parser.add_argument("--slo", help="the SLO file (default: $SLO_FILE, else loadtests/slo.yaml)")
    args = parser.parse_args()
    slo_file = check_slo.slo_path(args.slo)
    slo = check_slo.load_slo(slo_file)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"{args.csv} has no steps", file=sys.stderr)
        return 2
    by_model: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_model[row.get("model") or check_slo.DEFAULT_MODEL].append(row)
    png = Path(args.png)
    for model, model_rows in by_model.items():
        out = png if model == check_slo.DEFAULT_MODEL else png.with_name(f"{png.stem}-{model}{png.suffix}")
        plot_model(model, model_rows, out, slo, slo_file)
    return 0


def plot_model(model: str, rows: list[dict[str, str]], png: Path, slo: dict, slo_file: Path) -> None:
    bounds = check_slo.sync_bounds(slo, model)
    by_workers: dict[int, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_workers[int(row["workers"])].append(row)

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    colours = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
    for ax, key, limit in (
        (axes[0][0], "all_p95_ms", bounds["p95_ms"]),
        (axes[0][1], "all_p99_ms", bounds["p99_ms"]),
    ):
        for workers, steps in sorted(by_workers.items()):
            colour = colours.get(workers)
            x = [float(s["target_rps"]) for s in steps]
            y = [float(s[key]) for s in steps]
            ax.plot(x, y, "-", color=colour, label=f"{workers} worker{'s' if workers > 1 else ''}")
            for xi, yi, s in zip(x, y, steps, strict=True):
                ax.plot(xi, yi, "o", color=colour, markerfacecolor=colour if s["within_slo"] == "yes" else "white")
        ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"SLO {limit:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (requests/s, open model)")
        ax.set_ylabel(f"sync latency {key.split('_')[1]} (ms)")
        ax.set_title(f"{model}: sync predict {key.split('_')[1]}: filled = within the SLO")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax = axes[1][0]
    for workers, steps in sorted(by_workers.items()):
        x = [float(s["target_rps"]) for s in steps]
        ax.plot(x, [float(s["ok_rps"]) for s in steps], "o-", color=colours.get(workers), label=f"{workers} worker(s): answered with HTTP 200")
    top = max(float(r["target_rps"]) for r in rows)
    ax.plot([0, top], [0, top], ":", color="grey", label="= arrival rate")
    ax.set_xlabel("arrival rate (requests/s)")
    # Not "200/s": beside the rates on the x axis that read as a capacity figure (issue 21).
    ax.set_ylabel("successful answers (HTTP 200) per second")
    ax.set_title("answered vs arrival rate")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax = axes[1][1]
    for workers, steps in sorted(by_workers.items()):
        x = [float(s["target_rps"]) for s in steps]
        colour = colours.get(workers)
        ax.plot(x, [100 * float(s["error_rate"]) for s in steps], "o-", color=colour, label=f"{workers} worker(s): non-2xx")
        ax.plot(
            x,
            [100 * float(s["wait_ran_out_202_rate"]) for s in steps],
            "s--",
            color=colour,
            alpha=0.6,
            label=f"{workers} worker(s): 202 (sync wait ran out)",
        )
    # From 0, and at least to 1 %: a run without errors shows a flat line at the bottom, not noise.
    worst = max(100 * max(float(r["error_rate"]), float(r["wait_ran_out_202_rate"])) for r in rows)
    ax.set_ylim(0, max(1.0, worst * 1.1))
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("% of requests")
    ax.set_title("errors (non-2xx) and sync misses (202)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    stated = slo.get("stated_at", {})
    fig.suptitle(f"Conveyor capacity, model {model} — {stated.get('hardware', 'this machine')}", fontsize=10)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"wrote {png}")

    print(f"\n{model}: highest arrival rate within its SLO ({slo_file}), every lower rate within it too:")
    best: dict[int, float] = {}
    for workers, steps in sorted(by_workers.items()):
        # Sustained: the steps before the first breach. A pass above a breach is the shared
        # machine's noise: shown, not counted.
        first = next((i for i, s in enumerate(steps) if s["within_slo"] != "yes"), len(steps))
        best[workers] = float(steps[first - 1]["target_rps"]) if first > 0 else 0.0
        shown = f"{best[workers]:g}/s" if first > 0 else "none (even the lowest rate breached)"
        if first == len(steps):
            shown += "; no breach up to the top of the ladder"
        else:
            shown += f"; first breach at {steps[first]['target_rps']}/s"
            later = [s["target_rps"] for s in steps[first + 1 :] if s["within_slo"] == "yes"]
            if later:
                shown += f" (within again at {', '.join(later)}/s: noise)"
        peak = max(float(s["ok_rps"]) for s in steps)
        # A busy machine's figures are the neighbours' as much as Conveyor's: the load is shown beside them.
        loads = [float(s["load_avg_1m"]) for s in steps if s.get("load_avg_1m")]
        if loads:
            shown += f"; 1-min load average {min(loads):g}–{max(loads):g} ({os.cpu_count()} cores)"
        print(f"  {workers} worker(s): {shown}; most answers (200) per second: {peak:.0f}")
    # The stated rate: the model's own (models.<name>.stated_at), else the top-level one for the default model.
    own = ((slo.get("models") or {}).get(model) or {}).get("stated_at")
    if own or model == check_slo.DEFAULT_MODEL:
        rate, workers = (own or stated).get("sync_rate_rps"), (own or stated).get("workers")
        if rate and workers in best:
            holds = best[workers] >= float(rate)
            print(f"the SLO is stated at {rate}/s with {workers} worker(s): {'holds' if holds else 'does NOT hold'} on this run")


if __name__ == "__main__":
    sys.exit(main())
