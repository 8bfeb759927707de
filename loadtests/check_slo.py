#!/usr/bin/env python3
"""Checks a load test's results against the SLO file (loadtests/slo.yaml, or $SLO_FILE).

One checker for every tool of loadtests/:

    check_slo.py locust PREFIX          Locust's PREFIX_stats.csv (--csv PREFIX) and the scenario's
                                        PREFIX_summary.json (status counts, async jobs, bad inputs)
    check_slo.py vegeta REPORT.json     `vegeta report -type=json`; with --results RESULTS.csv
                                        (`vegeta encode -to csv`) the percentiles are exact, with
                                        every non-200 answer counted as a miss; --model NAME holds
                                        it to that model's objectives
    check_slo.py windows RESULTS.csv    the sync objectives per time window of one vegeta run (the
                                        scale-out proof): the last windows must be within the SLO

Synchronous predictions are checked per model: each model's requests against its own objectives
(`models.<name>.sync_predict` in the SLO file, else the top-level `sync_predict`), never pooled, so
one model's many fast answers cannot hide another's slow ones.

It prints a table and exits 0 when every objective holds, 1 on a breach, 2 when the results cannot
be read. --json FILE also writes the verdict for other programs (loadtests/capacity.ts).

The locustfile imports this module and runs the same evaluation from its `quitting` listener, so
Locust's own exit code and this checker always agree.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_SLO = HERE / "slo.yaml"

# The locustfile's request names (it imports them from here, so the two cannot drift apart).
SYNC_UPLOAD = "sync predict"
SYNC_URL = "sync predict by URL"
ASYNC_E2E = "async end-to-end"
SYNC_NAMES = (SYNC_UPLOAD, SYNC_URL)
# Sync uploads to another model's own route (/v1/models/{name}/predict), one request name per model.
MODEL_SYNC_NAMES = {"moderation": "sync predict moderation"}
SYNC_MODERATION = MODEL_SYNC_NAMES["moderation"]
DEFAULT_MODEL = "digits"

INF = math.inf


class ResultsError(Exception):
    """The results are missing or unreadable: neither a pass nor a breach (exit code 2)."""


# ── the SLO file ────────────────────────────────────────────────────────────────────────────────


def slo_path(explicit: str | None = None) -> Path:
    """--slo, else $SLO_FILE, else loadtests/slo.yaml."""
    return Path(explicit or os.environ.get("SLO_FILE") or DEFAULT_SLO)


def load_slo(path: Path) -> dict[str, Any]:
    try:
        slo = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ResultsError(f"cannot read the SLO file {path}: {error}") from error
    required = {
        "sync_predict": ("p95_ms", "p99_ms"),
        "async_end_to_end": ("p95_ms",),
        "availability": ("min_ratio_without_5xx",),
        "jobs": ("max_lost",),
        "bad_inputs": ("max_5xx",),
    }
    problems = [
        f"{section}.{key}"
        for section, keys in required.items()
        for key in keys
        if not isinstance((slo or {}).get(section, {}).get(key), (int, float))
    ]
    for model, section in ((slo or {}).get("models") or {}).items():
        sync = (section or {}).get("sync_predict", {})
        problems += [f"models.{model}.sync_predict.{key}" for key in ("p95_ms", "p99_ms") if not isinstance(sync.get(key), (int, float))]
    if problems:
        raise ResultsError(f"{path}: missing or non-numeric {', '.join(problems)}")
    return slo


def sync_bounds(slo: dict[str, Any], model: str) -> dict[str, Any]:
    """A model's sync objectives: its own section under `models`, else the top-level ones."""
    own = ((slo.get("models") or {}).get(model) or {}).get("sync_predict")
    return own if own else slo["sync_predict"]


# ── what a run measured ─────────────────────────────────────────────────────────────────────────


@dataclass
class Latency:
    """Percentiles of one kind of request, in ms; misses (non-200 answers) are in `count`."""

    name: str
    count: int
    misses: int
    p50: float
    p95: float
    p99: float
    # Whose objectives apply (sync requests).
    model: str = DEFAULT_MODEL


@dataclass
class Measured:
    source: str
    sync: list[Latency] = field(default_factory=list)
    async_e2e: Latency | None = None
    # Valid requests, and those answered 5xx or not at all.
    valid_total: int = 0
    valid_5xx: int = 0
    jobs: dict[str, Any] | None = None
    bad: dict[str, int] | None = None
    # Open-model runs: the arrival rate asked for, the rate sent, and 200s per second.
    target_rps: float | None = None
    sent_rps: float | None = None
    ok_rps: float | None = None


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (no interpolation: a miss stays a miss)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def with_misses(value: float, count: int, misses: int, q: float) -> float:
    """
    A percentile taken over every answer, corrected for misses when only aggregates are known:
    once more than (1 - q) of the answers are misses, the q-quantile is a miss whatever the times.
    Below that the aggregate stands. It includes the misses at their real times: a sync 202 comes
    after the whole wait (10 s), so it sits above every bound anyway; a fast 5xx would flatter it,
    by at most its share of the answers, which the availability objective bounds at 0.1 %.
    """
    if count == 0:
        return math.nan
    return INF if misses > (1 - q) * count else value


def from_locust(prefix: str) -> Measured:
    stats_file = Path(f"{prefix}_stats.csv")
    summary_file = Path(f"{prefix}_summary.json")
    try:
        with stats_file.open(newline="") as f:
            rows = {row["Name"]: row for row in csv.DictReader(f)}
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"cannot read Locust results {prefix}_*: {error}") from error
    return from_locust_data(f"locust {prefix}", lambda name, q: _csv_percentile(rows, name, q), summary)


def _csv_percentile(rows: dict[str, dict[str, str]], name: str, q: float) -> float:
    row = rows.get(name)
    if row is None or int(row["Request Count"] or 0) == 0:
        return math.nan
    value = row.get(f"{q * 100:g}%", "N/A")
    return math.nan if value in ("", "N/A") else float(value)


def from_locust_data(source: str, percentile, summary: dict[str, Any]) -> Measured:
    """From Locust's percentiles (`percentile(name, q)` in ms) and the scenario's own summary."""
    measured = Measured(source=source)
    by_name = summary.get("by_name", {})

    def latency(name: str, model: str = DEFAULT_MODEL) -> Latency:
        counts = by_name.get(name, {})
        count = int(counts.get("count", 0))
        misses = int(counts.get("misses", 0))
        return Latency(
            name=name,
            count=count,
            misses=misses,
            p50=with_misses(percentile(name, 0.5), count, misses, 0.5),
            p95=with_misses(percentile(name, 0.95), count, misses, 0.95),
            p99=with_misses(percentile(name, 0.99), count, misses, 0.99),
            model=model,
        )

    measured.sync = [latency(name) for name in SYNC_NAMES]
    measured.sync += [latency(name, model) for model, name in MODEL_SYNC_NAMES.items()]
    measured.async_e2e = latency(ASYNC_E2E)
    valid = summary.get("valid", {})
    measured.valid_total = int(valid.get("total", 0))
    measured.valid_5xx = int(valid.get("server_errors", 0)) + int(valid.get("no_answer", 0))
    measured.jobs = summary.get("jobs")
    measured.bad = summary.get("bad")
    return measured


def read_vegeta_results(path: Path) -> list[tuple[int, int, float, str]]:
    """(timestamp ns, status code, latency ms, error) per request, from `vegeta encode -to csv`."""
    out = []
    try:
        with path.open(newline="") as f:
            for row in csv.reader(f):
                if len(row) < 6:
                    continue
                out.append((int(row[0]), int(row[1]), int(row[2]) / 1e6, row[5]))
    except (OSError, ValueError) as error:
        raise ResultsError(f"cannot read vegeta results {path}: {error}") from error
    return out


def sync_latency(name: str, results: Iterable[tuple[int, int, float, str]], model: str = DEFAULT_MODEL) -> Latency:
    """Exact percentiles with every non-200 answer (or no answer) counted as a miss (∞)."""
    times = sorted(latency if code == 200 else INF for _, code, latency, _ in results)
    misses = sum(1 for t in times if t == INF)
    return Latency(
        name=name,
        count=len(times),
        misses=misses,
        p50=nearest_rank(times, 0.5),
        p95=nearest_rank(times, 0.95),
        p99=nearest_rank(times, 0.99),
        model=model,
    )


def sync_name(model: str) -> str:
    return SYNC_UPLOAD if model == DEFAULT_MODEL else MODEL_SYNC_NAMES.get(model, f"sync predict {model}")


def from_vegeta(
    report_path: Path, results_path: Path | None, target_rps: float | None, model: str = DEFAULT_MODEL
) -> Measured:
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"cannot read the vegeta report {report_path}: {error}") from error
    measured = Measured(source=f"vegeta {report_path}")
    codes = {int(code): int(n) for code, n in report.get("status_codes", {}).items()}
    total = int(report.get("requests", 0))
    # Status 0: vegeta got no answer (connection refused or reset, timeout).
    measured.valid_total = total
    measured.valid_5xx = sum(n for code, n in codes.items() if code >= 500 or code == 0)
    duration_s = (int(report.get("duration", 0)) + int(report.get("wait", 0))) / 1e9
    measured.target_rps = target_rps
    measured.sent_rps = float(report.get("rate", 0.0))
    measured.ok_rps = codes.get(200, 0) / duration_s if duration_s > 0 else 0.0
    if results_path is not None:
        measured.sync = [sync_latency(sync_name(model), read_vegeta_results(results_path), model)]
    else:
        lat = report.get("latencies", {})
        misses = total - codes.get(200, 0)
        measured.sync = [
            Latency(
                name=sync_name(model),
                model=model,
                count=total,
                misses=misses,
                p50=with_misses(lat.get("50th", 0) / 1e6, total, misses, 0.5),
                p95=with_misses(lat.get("95th", 0) / 1e6, total, misses, 0.95),
                p99=with_misses(lat.get("99th", 0) / 1e6, total, misses, 0.99),
            )
        ]
    return measured


# ── the verdict ─────────────────────────────────────────────────────────────────────────────────


@dataclass
class Row:
    objective: str
    limit: str
    measured: str
    ok: bool


def ms(value: float) -> str:
    if math.isnan(value):
        return "no samples"
    if value == INF:
        return "miss"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def evaluate(slo: dict[str, Any], m: Measured) -> list[Row]:
    rows: list[Row] = []
    for lat in m.sync:
        sync = sync_bounds(slo, lat.model)
        note = f" (n={lat.count}" + (f", {lat.misses} not 200)" if lat.misses else ")")
        for q, key in ((95, "p95_ms"), (99, "p99_ms")):
            value = lat.p95 if q == 95 else lat.p99
            # No samples is a failure too: the run did not measure what it exists to measure.
            rows.append(Row(f"{lat.name} p{q}", f"< {sync[key]:g} ms", ms(value) + note, value < sync[key]))
            note = ""
    if m.target_rps is not None and m.ok_rps is not None:
        sync = sync_bounds(slo, m.sync[0].model if m.sync else DEFAULT_MODEL)
        ratio = float(sync.get("min_achieved_ratio", slo["sync_predict"].get("min_achieved_ratio", 0.95)))
        rows.append(
            Row(
                "sync answers (200) per second",
                f"≥ {ratio:.0%} of {m.target_rps:g}/s",
                f"{m.ok_rps:.1f}/s (sent {m.sent_rps or 0:.1f}/s)",
                m.ok_rps >= ratio * m.target_rps,
            )
        )
    if m.async_e2e is not None:
        lat = m.async_e2e
        limit = slo["async_end_to_end"]["p95_ms"]
        note = f" (n={lat.count}" + (f", {lat.misses} not completed)" if lat.misses else ")")
        rows.append(Row(f"{lat.name} p95", f"< {limit:g} ms", ms(lat.p95) + note, lat.p95 < limit))
    need = float(slo["availability"]["min_ratio_without_5xx"])
    if m.valid_total:
        ratio = 1 - m.valid_5xx / m.valid_total
        shown = f"{ratio:.3%} ({m.valid_5xx} of {m.valid_total} 5xx or unanswered)"
        rows.append(Row("valid requests without 5xx", f"≥ {need:.1%}", shown, ratio >= need))
    else:
        rows.append(Row("valid requests without 5xx", f"≥ {need:.1%}", "no requests", False))
    if m.jobs is not None:
        limit = int(slo["jobs"]["max_lost"])
        jobs = m.jobs
        lost = int(jobs.get("lost", 0))
        shown = (
            f"{lost} of {jobs.get('accepted', 0)} accepted ({jobs.get('completed', 0)} completed, {jobs.get('failed', 0)} failed)"
        )
        rows.append(Row("accepted async jobs lost", f"≤ {limit}", shown, lost <= limit and int(jobs.get("accepted", 0)) > 0))
    if m.bad is not None:
        bad = m.bad
        total = int(bad.get("total", 0))
        limit = int(slo["bad_inputs"]["max_5xx"])
        server = int(bad.get("server_errors", 0)) + int(bad.get("no_answer", 0))
        rows.append(
            Row("bad inputs answered 5xx or not at all", f"≤ {limit}", f"{server} of {total}", server <= limit and total > 0)
        )
        accepted_limit = int(slo["bad_inputs"].get("max_accepted", 0))
        accepted = int(bad.get("accepted", 0))
        rows.append(
            Row(
                "bad inputs answered 2xx",
                f"≤ {accepted_limit}",
                f"{accepted} of {total} ({bad.get('client_errors', 0)} got 4xx)",
                accepted <= accepted_limit,
            )
        )
    return rows


def print_table(title: str, rows: list[Row], out=sys.stdout) -> None:
    headers = ("objective", "limit", "measured", "verdict")
    cells = [(r.objective, r.limit, r.measured, "ok" if r.ok else "BREACH") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(title, file=out)
    print("  " + line.format(*headers), file=out)
    print("  " + "  ".join("─" * w for w in widths), file=out)
    for c in cells:
        print("  " + line.format(*c), file=out)
    breaches = [r for r in rows if not r.ok]
    if breaches:
        print(
            f"SLO BREACH: {len(breaches)} of {len(rows)} objectives missed ({', '.join(r.objective for r in breaches)})", file=out
        )
    else:
        print(f"SLO met: all {len(rows)} objectives", file=out)


def verdict_json(rows: list[Row], measured: Measured, slo_file: Path) -> dict[str, Any]:
    def finite(value: Any) -> Any:
        # JSON has no infinity: a miss is written as null with the count of misses beside it.
        if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return finite(
        {"ok": all(r.ok for r in rows), "slo": str(slo_file), "rows": [asdict(r) for r in rows], "measured": asdict(measured)}
    )


# ── windows: the scale-out proof ────────────────────────────────────────────────────────────────


def windows(slo: dict[str, Any], results: list[tuple[int, int, float, str]], window_s: float) -> list[dict[str, Any]]:
    """Per window of send time: requests, 200s per second, percentiles (misses as ∞), SLO verdict."""
    if not results:
        raise ResultsError("no requests in the vegeta results")
    start = min(r[0] for r in results)
    buckets: dict[int, list[tuple[int, int, float, str]]] = {}
    for r in results:
        buckets.setdefault(int((r[0] - start) / 1e9 // window_s), []).append(r)
    out = []
    sync = slo["sync_predict"]
    need = float(slo["availability"]["min_ratio_without_5xx"])
    for index in range(max(buckets) + 1):
        rs = buckets.get(index, [])
        lat = sync_latency(SYNC_UPLOAD, rs)
        server = sum(1 for _, code, _, _ in rs if code >= 500 or code == 0)
        ok_count = sum(1 for _, code, _, _ in rs if code == 200)
        within = bool(rs) and lat.p95 < sync["p95_ms"] and lat.p99 < sync["p99_ms"] and 1 - server / len(rs) >= need
        out.append(
            {
                "t_start_s": index * window_s,
                "t_end_s": (index + 1) * window_s,
                "requests": len(rs),
                "ok_per_s": ok_count / window_s,
                "p50_ms": lat.p50,
                "p95_ms": lat.p95,
                "p99_ms": lat.p99,
                "not_200": lat.misses,
                "server_errors": server,
                "within_slo": within,
            }
        )
    return out


def check_windows(args: argparse.Namespace, slo: dict[str, Any], slo_file: Path) -> int:
    rows = windows(slo, read_vegeta_results(Path(args.results)), args.window)
    # Windows still in flight when the attack ended are shorter than the others: dropped.
    complete = [w for w in rows if w["requests"] > 0]
    events = dict(e.split("=", 1) for e in args.event)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "t_start_s",
                    "t_end_s",
                    "workers",
                    "requests",
                    "ok_per_s",
                    "p50_ms",
                    "p95_ms",
                    "p99_ms",
                    "not_200",
                    "server_errors",
                    "within_slo",
                ]
            )
            for w in complete:
                writer.writerow(
                    [
                        f"{w['t_start_s']:g}",
                        f"{w['t_end_s']:g}",
                        workers_at(events, w["t_start_s"], args.workers),
                        w["requests"],
                        f"{w['ok_per_s']:.1f}",
                        *("" if math.isinf(w[k]) else f"{w[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms")),
                        w["not_200"],
                        w["server_errors"],
                        "yes" if w["within_slo"] else "no",
                    ]
                )
    sync = slo["sync_predict"]
    print(f"per {args.window:g} s window (sync SLO: p95 < {sync['p95_ms']:g} ms, p99 < {sync['p99_ms']:g} ms; non-200 = miss)")
    print("  window      workers  requests  200/s    p50       p95       p99       not 200  verdict")
    for w in complete:
        mark = ""
        for t, what in events.items():
            if w["t_start_s"] <= float(t) < w["t_end_s"]:
                mark = f"   ← {what} at {float(t):g} s"
        workers = workers_at(events, w["t_start_s"], args.workers)
        verdict = "ok" if w["within_slo"] else "BREACH"
        print(
            f"  {w['t_start_s']:>3g}–{w['t_end_s']:<3g} s   {workers:>7}  {w['requests']:>8}  {w['ok_per_s']:>6.1f}"
            f"  {ms(w['p50_ms']):>8}  {ms(w['p95_ms']):>8}  {ms(w['p99_ms']):>8}  {w['not_200']:>7}  {verdict}{mark}"
        )
    last = complete[-args.last :]
    before = [w for w in complete if args.breach_before is not None and w["t_end_s"] <= args.breach_before]
    failures = []
    if len(last) < args.last or not all(w["within_slo"] for w in last):
        failures.append(f"the last {args.last} windows are not all within the SLO")
    if args.breach_before is not None and not any(not w["within_slo"] for w in before):
        failures.append(
            f"no window before {args.breach_before:g} s breached the SLO: the rate does not overload the starting workers,"
            " so this run proves nothing (raise the rate)"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "ok": not failures,
                    "slo": str(slo_file),
                    "failures": failures,
                    "windows": [
                        {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in w.items()} for w in complete
                    ],
                },
                indent=2,
            )
        )
    if failures:
        for f in failures:
            print(f"SCALE-OUT CHECK FAILED: {f}")
        return 1
    print(f"scale-out check passed: breach before {args.breach_before:g} s, the last {args.last} windows within the SLO")
    return 0


def workers_at(events: dict[str, str], t: float, initial: int) -> str:
    """Workers running at time t, from events like '20=workers 1→4' (the number after the arrow)."""
    count = str(initial)
    for at, what in sorted(events.items(), key=lambda e: float(e[0])):
        if float(at) <= t and "→" in what:
            count = what.rsplit("→", 1)[1].strip().split()[0]
    return count


# ── the command line ────────────────────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    # The common options go after the mode: `check_slo.py vegeta report.json --json verdict.json`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--slo", help="the SLO file (default: $SLO_FILE, else loadtests/slo.yaml)")
    common.add_argument("--json", help="also write the verdict as JSON to this file")
    common.add_argument("--quiet", action="store_true", help="print only the verdict line")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("locust", parents=[common], help="Locust CSV stats + the scenario's summary")
    p.add_argument("prefix", help="the --csv prefix of the Locust run")
    p = sub.add_parser("vegeta", parents=[common], help="a vegeta JSON report (+ per-request CSV)")
    p.add_argument("report")
    p.add_argument("--results", help="`vegeta encode -to csv` of the same attack: exact percentiles")
    p.add_argument("--target-rate", type=float, help="the arrival rate asked for, per second")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the model the requests went to (whose objectives apply)")
    p = sub.add_parser("windows", parents=[common], help="the sync objectives per time window of one vegeta run")
    p.add_argument("results", help="`vegeta encode -to csv` of the attack")
    p.add_argument("--window", type=float, default=5.0, help="window length in seconds")
    p.add_argument("--last", type=int, default=3, help="how many final windows must be within the SLO")
    p.add_argument("--workers", type=int, default=1, help="workers at the start")
    p.add_argument("--event", action="append", default=[], help="T=what, e.g. '20=workers 1→4', marked in the table")
    p.add_argument("--breach-before", type=float, help="require a breached window ending by this time (s)")
    p.add_argument("--out", help="write the windows as CSV")
    args = parser.parse_args(argv)
    slo_file = slo_path(args.slo)
    try:
        slo = load_slo(slo_file)
        if args.mode == "windows":
            return check_windows(args, slo, slo_file)
        if args.mode == "locust":
            measured = from_locust(args.prefix)
        else:
            results = Path(args.results) if args.results else None
            measured = from_vegeta(Path(args.report), results, args.target_rate, args.model)
    except ResultsError as error:
        print(f"check_slo: {error}", file=sys.stderr)
        return 2
    rows = evaluate(slo, measured)
    if args.json:
        Path(args.json).write_text(json.dumps(verdict_json(rows, measured, slo_file), indent=2))
    if args.quiet:
        breaches = [r.objective for r in rows if not r.ok]
        print(f"{measured.source}: " + (f"SLO BREACH ({', '.join(breaches)})" if breaches else "SLO met"))
    else:
        print_table(f"SLO check: {slo_file} against {measured.source}", rows)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
