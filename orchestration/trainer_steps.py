"""The project's TypeScript trainer, one step per process (services/trainer/src/main.ts).

The flow never reimplements a step: each task runs the trainer's own subcommand, which writes
what it produced (dataset hash, report paths, run id, version) to a JSON file given by
`--output`. Exit codes tell permanent failures from transient ones, so that only the latter
are retried (a broken dataset stays broken however often it is validated).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "services" / "trainer" / "src" / "main.ts"

# The trainer's exit codes (main.ts): 4 = data validation failed, 77 = MLflow refused the
# account (EX_NOPERM), 2 = a usage error. Anything else (1: MLflow unreachable, a timeout, a
# crash; a signal) may pass on a second try.
EXIT_VALIDATION_FAILED = 4
PERMANENT_EXIT_CODES = frozenset({2, EXIT_VALIDATION_FAILED, 77})


class StepError(Exception):
    """A trainer step that failed and may pass when run again."""

    def __init__(self, step: str, code: int, output: str) -> None:
        super().__init__(f"trainer step `{step}` exited with {code}: {output.strip()[-2000:]}")
        self.step = step
        self.code = code


class PermanentStepError(StepError):
    """A trainer step that will fail the same way again: bad data, refused credentials, bad usage."""


class DataValidationFailed(PermanentStepError):
    """The data suite refused the dataset; `report` is the validation step's output."""

    def __init__(self, step: str, code: int, output: str, report: dict[str, Any]) -> None:
        super().__init__(step, code, output)
        self.report = report
        paths = report.get("report", {})
        failed = "; ".join(report.get("failed", []))
        # The message is what the flow run's state shows: the report's location comes first.
        self.args = (
            f"data validation failed ({failed}); report: {paths.get('markdown')} "
            f"(file://{paths.get('markdown')}, JSON {paths.get('json')})",
        )


def trainer_command() -> list[str]:
    """The compiled trainer when asked for (containers), else the sources through tsx (no build step)."""
    if os.environ.get("CONVEYOR_TRAINER") == "dist":
        return ["node", str(ROOT / "services" / "trainer" / "dist" / "main.js")]
    return ["node", "--conditions=conveyor-source", "--import", "tsx", str(TRAINER)]


# Every step's resource use, one JSON line per process, beside the step outputs: what the cost
# table (scripts/cost/) multiplies by prices, measured as the flow runs the steps.
USAGE_FILE = "usage.jsonl"


def _wait_measured(process: subprocess.Popen[str]) -> tuple[int, dict[str, float]]:
    """Waits for the step like Popen.wait, but through wait4(2): the kernel's own account of the
    child's CPU time and peak resident memory (ru_maxrss, KiB on Linux), not a sampled guess."""
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    return code, {
        "user_s": round(usage.ru_utime, 3),
        "sys_s": round(usage.ru_stime, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def read_usage(folder: Path) -> list[dict[str, Any]]:
    """The usage lines run_step wrote into this folder, in the order the steps ran."""
    file = folder / USAGE_FILE
    return [json.loads(line) for line in file.read_text().splitlines() if line] if file.exists() else []


def _run_measured(name: str, command: Sequence[str], output: Path, env: dict[str, str] | None, log: Any) -> tuple[int, str]:
    """Runs `command`, streaming its output to `log`; appends its usage to `usage.jsonl` beside
    `output`. Returns the exit code and the output's last lines."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if log is not None:
            log.info(line.rstrip())
    code, usage = _wait_measured(process)
    record = {"step": name, "exit_code": code, "wall_s": round(time.monotonic() - started, 3), **usage}
    with (output.parent / USAGE_FILE).open("a") as file:
        file.write(json.dumps(record) + "\n")
    if log is not None:
        log.info(f"step usage: {json.dumps(record)}")
    return code, "".join(lines[-40:])


def run_step(
    step: str,
    args: Sequence[str],
    output: Path,
    env: dict[str, str] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Runs `trainer <step> <args…> --output <output>` and returns the JSON it wrote.

    The environment is the caller's (MLFLOW_TRACKING_URI and the account's
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD(_FILE) pass through untouched) plus `env`.
    Its wall time, CPU time and peak memory are appended to `usage.jsonl` beside `output`.
    """
    code, text = _run_measured(output.stem, [*trainer_command(), step, *args, "--output", str(output)], output, env, log)
    if code == 0:
        return json.loads(output.read_text())
    if code == EXIT_VALIDATION_FAILED and output.exists():
        raise DataValidationFailed(step, code, text, json.loads(output.read_text()))
    if code in PERMANENT_EXIT_CODES:
        raise PermanentStepError(step, code, text)
    raise StepError(step, code, text)


REPLAY = ROOT / "scripts" / "replay.ts"


def run_replay(args: Sequence[str], output: Path, env: dict[str, str] | None = None, log: Any = None) -> dict[str, Any]:
    """Runs `make replay`'s script (scripts/replay.ts <args…> --output <output>) and returns its verdict.

    Exit 0 (the gate passed) and 1 (it refused: a verdict, not a failure) both return the JSON it
    wrote, whose `passed` says which. Anything else (2: the replay could not run, e.g. the gateway
    was unreachable; a crash) is a StepError, which the flow retries.
    """
    command = ["node", "--conditions=conveyor-source", "--import", "tsx", str(REPLAY), *args, "--output", str(output)]
    code, text = _run_measured(output.stem, command, output, env, log)
    if code in (0, 1) and output.exists():
        return json.loads(output.read_text())
    raise StepError("replay", code, text)
