#!/usr/bin/env python3
"""The capacity curve: loadtests/results/capacity.csv (written by `make loadtest`) as a PNG, and per
worker count the highest arrival rate within the SLO.

    plot_capacity.py CAPACITY.csv OUT.png [--slo FILE]

Latencies are plotted as measured over every answer (vegeta's own percentiles, a 202 at the end of
the 10 s sync wait included), on a log scale so the knee and the collapse after it both show; a
filled marker is a step within the SLO (where every non-200 counted as a miss), a hollow one a breach.
"""

from __future__ import annotations

import argparse
import csv
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
    by_workers: dict[int, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_workers[int(row["workers"])].append(row)

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    colours = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
    for ax, key, limit in (
        (axes[0][0], "all_p95_ms", slo["sync_predict"]["p95_ms"]),
        (axes[0][1], "all_p99_ms", slo["sync_predict"]["p99_ms"]),
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
        ax.set_title(f"sync predict {key.split('_')[1]}: filled = within the SLO")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax = axes[1][0]
    for workers, steps in sorted(by_workers.items()):
        x = [float(s["target_rps"]) for s in steps]
        ax.plot(x, [float(s["ok_rps"]) for s in steps], "o-", color=colours.get(workers), label=f"{workers} worker(s): 200/s")
    top = max(float(r["target_rps"]) for r in rows)
    ax.plot([0, top], [0, top], ":", color="grey", label="= arrival rate")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("answers 200 per second")
    ax.set_title("achieved vs target rate")
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
    fig.suptitle(f"Conveyor capacity — {stated.get('hardware', 'this machine')}", fontsize=10)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")

    print(f"\nhighest arrival rate within the SLO ({slo_file}), every lower rate within it too:")
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
        print(f"  {workers} worker(s): {shown}; most answers (200) per second: {peak:.0f}")
    rate, workers = stated.get("sync_rate_rps"), stated.get("workers")
    if rate and workers in best:
        holds = best[workers] >= float(rate)
        print(f"the SLO is stated at {rate}/s with {workers} workers: {'holds' if holds else 'does NOT hold'} on this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
