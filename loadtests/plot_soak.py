#!/usr/bin/env python3
"""The soak's plots (loadtests/soak.ts writes their data): one PNG of four panels over time.

    plot_soak.py OUT_DIR LOCUST_STATS_HISTORY.csv

From OUT_DIR/soak.csv (the samples), events.csv (when each hostile client started) and
summary.json, and Locust's --csv-full-history file (the polite clients' rolling p95 per request
kind) → OUT_DIR/soak.png: (1) Redis used_memory against maxmemory, (2) RSS of every process,
(3) the polite clients' p95 against the SLO, (4) queued-bytes counter against the bytes the queued
inputs really hold, with the queue depth. Each hostile client's start is a dashed vertical line.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt  # noqa: E402  (only after the backend is chosen)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_slo  # noqa: E402  (beside this file)


def floats(rows: list[dict[str, str]], key: str) -> list[float]:
    out = []
    for row in rows:
        try:
            out.append(float(row[key]))
        except (KeyError, ValueError):
            out.append(float("nan"))
    return out


def main() -> int:
    out = Path(sys.argv[1])
    history_file = Path(sys.argv[2])
    with (out / "soak.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (out / "events.csv").open(newline="") as f:
        events = [(float(r["t_s"]), r["event"]) for r in csv.DictReader(f)]
    summary = json.loads((out / "summary.json").read_text())
    slo = check_slo.load_slo(check_slo.slo_path(None))
    minutes = [t / 60 for t in floats(rows, "t_s")]

    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    title = (
        f"Soak {summary['date'][:16]} ({summary['commit']}): {summary['minutes']:g} min at {summary['polite_rate']}/s polite, "
        f"models {', '.join(summary['models'])}; jobs {summary['jobs']['accepted']} accepted, {summary['jobs']['lost']} lost, "
        f"{summary['jobs']['duplicated']} duplicated; mean load {summary['load_1m_mean']:.1f} on 2 cores"
    )
    fig.suptitle(title, fontsize=9)

    ax = axes[0]
    ax.plot(minutes, floats(rows, "redis_used_memory_mb"), label="Redis used_memory")
    ax.axhline(summary["redis"]["maxmemory_mb"], color="red", linestyle=":", label="maxmemory")
    ax.axhline(0.8 * summary["redis"]["maxmemory_mb"], color="orange", linestyle=":", label="80 % (plateau bound, 24 h ahead)")
    ax.set_ylabel("MB")
    ax.set_title(
        f"Redis memory: slope after the first quarter {summary['redis']['slope_mb_per_h']:.1f} MB/h "
        f"({'plateau' if summary['redis']['plateau'] else 'NOT plateaued'})",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="center left")

    ax = axes[1]
    for key in rows[0]:
        if key.endswith("_rss_mb"):
            ax.plot(minutes, floats(rows, key), label=key.removesuffix("_rss_mb"))
    ax.set_ylabel("RSS, MB")
    ax.set_yscale("log")
    ax.set_title("Resident memory per process (/proc)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3)

    ax = axes[2]
    history: list[dict[str, str]] = []
    totals: list[tuple[float, int, int]] = []  # (time, requests so far, failures so far), all polite requests
    start = 0.0
    if history_file.exists():
        with history_file.open(newline="") as f:
            every = list(csv.DictReader(f))
        history = [r for r in every if r.get("Name") not in (None, "Aggregated", "")]
        start = min((float(r["Timestamp"]) for r in history), default=0.0)
        totals = [
            (float(r["Timestamp"]) - start, int(r["Total Request Count"] or 0), int(r["Total Failure Count"] or 0))
            for r in every
            if r.get("Name") == "Aggregated"
        ]
        names = [check_slo.SYNC_UPLOAD, check_slo.SYNC_MODERATION, check_slo.SYNC_URL, check_slo.ASYNC_E2E]
        for name in names:
            points = [(float(r["Timestamp"]), r["95%"]) for r in history if r["Name"] == name]
            xs = [(t - start) / 60 for t, v in points if v not in ("", "N/A")]
            ys = [float(v) for _, v in points if v not in ("", "N/A")]
            if xs:
                ax.plot(xs, ys, label=f"{name} p95", linewidth=0.8)
    ax.axhline(slo["sync_predict"]["p95_ms"], color="red", linestyle=":", label="sync p95 SLO")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("Polite clients: p95 over Locust's rolling window", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[3]
    ax.plot(minutes, [v / 1048576 for v in floats(rows, "queued_bytes_counter")], label="queued-bytes counter")
    ax.plot(minutes, [v / 1048576 for v in floats(rows, "queued_input_bytes")], label="bytes held by queued inputs")
    ax.plot(minutes, [v / 1048576 for v in floats(rows, "all_input_bytes")], label="bytes of every input key", linestyle="--")
    ax.set_ylabel("MiB")
    ax.set_xlabel("minutes")
    depth = ax.twinx()
    waiting = [sum(floats([row], k)[0] for k in row if k.startswith("waiting_")) for row in rows]
    depth.plot(minutes, waiting, color="grey", linewidth=0.6, label="jobs waiting")
    depth.set_ylabel("jobs waiting")
    ax.set_title("Admission's queued-bytes counter against what the queue really holds", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    depth.legend(fontsize=7, loc="upper right")

    for ax in axes:
        for t, what in events:
            if what.endswith("starts") or what in ("polite load ended", "drained"):
                ax.axvline(t / 60, color="black", linestyle="--", linewidth=0.5)
    for t, what in events:
        if what.endswith("starts") or what == "polite load ended":
            axes[0].annotate(what, (t / 60, 0.98), xycoords=("data", "axes fraction"), rotation=90, fontsize=6, va="top")

    # Per phase (from one hostile client's start to the next), the median of the rolling sync p95.
    phases_file = out / "phases.csv"
    starts = [(t, what.removesuffix(" starts")) for t, what in events if what.endswith(" starts")]
    ends = [t for t, what in events if what == "polite load ended"]
    bounds = sorted({0.0, *[t for t, _ in starts]}) + [ends[0] if ends else float("inf")]
    with phases_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "from_s",
                "to_s",
                "running",
                "sync_p95_median_ms",
                "moderation_p95_median_ms",
                "async_p95_median_ms",
                "polite_requests_per_s",
                "polite_failed_share",
            ]
        )
        print("per phase, the median of the polite clients' rolling p95, their requests/s and the share that failed:")
        for lo, hi in zip(bounds, bounds[1:]):
            running = "+".join(name for t, name in starts if t <= lo) or "polite only"
            cells = []
            for name in (check_slo.SYNC_UPLOAD, check_slo.SYNC_MODERATION, check_slo.ASYNC_E2E):
                values = sorted(
                    float(r["95%"])
                    for r in (history if history_file.exists() else [])
                    if r["Name"] == name and r["95%"] not in ("", "N/A") and lo <= float(r["Timestamp"]) - start < hi
                )
                cells.append(f"{values[len(values) // 2]:.0f}" if values else "")
            # Slow answers are not the only harm: a refused or unanswered request is quick, and counts here.
            inside = [t for t in totals if lo <= t[0] < hi]
            rate = failed = ""
            if len(inside) >= 2:
                requests = inside[-1][1] - inside[0][1]
                failures = inside[-1][2] - inside[0][2]
                rate = f"{requests / max(1e-9, inside[-1][0] - inside[0][0]):.1f}"
                failed = f"{failures / requests:.3f}" if requests else ""
            writer.writerow([f"{lo:.0f}", f"{hi:.0f}", running, *cells, rate, failed])
            print(
                f"  {lo:6.0f}–{hi:<6.0f} s  sync {cells[0] or '—':>6} ms  moderation {cells[1] or '—':>6} ms"
                f"  async {cells[2] or '—':>6} ms  {rate or '—':>6}/s  failed {failed or '—':>5}  ({running})"
            )

    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out / "soak.png", dpi=110)
    print(f"wrote {out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
