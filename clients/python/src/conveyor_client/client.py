"""Conveyor's HTTP API from Python: `Client` (blocking) and `AsyncClient` (asyncio), over httpx.

Both speak the same few routes the gateway's ``/openapi.json`` describes:

- ``predict(file=… | url=…)``: ``POST /v1/predict`` (or ``/v1/models/{model}/predict``). By default
  the gateway waits a few seconds for the result (a ``CompletedResult``); with ``respond_async=True``
  it answers at once with an ``AcceptedJob`` to follow; a wait that runs out is an ``AcceptedJob`` too.
- ``job(id)`` reads a job; ``wait(id)`` polls it until it has finished (honouring ``Retry-After``).
- ``events(id)`` follows it as Server-Sent Events (``state`` … ``result``).
- ``models()``, ``feedback(job_id, label)``.

Every problem answer (4xx/5xx, ``application/problem+json``) is raised as ``ConveyorProblem``
carrying the problem document; so is a job that failed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import IO, Any, Union, cast

import httpx
from httpx_sse import aconnect_sse, connect_sse

from .types import AcceptedJob, CompletedResult, FeedbackAccepted, JobEvent, JobStatus, ModelDescription, ProblemBody

#: What ``file=`` may be: the bytes, an open binary file, or a path.
FileInput = Union[bytes, IO[bytes], str, "os.PathLike[str]"]


class ConveyorProblem(Exception):
    """An RFC 9457 problem: the gateway refused the request, or the job failed.

    ``problem`` is the document itself (``type``, ``title``, ``status``, ``detail``, ``requestId``,
    and whatever else the problem type carries, e.g. ``limitBytes`` or ``models``).
    """

    def __init__(self, status: int, problem: ProblemBody | Mapping[str, Any], retry_after: float | None = None):
        self.status = status
        self.problem: dict[str, Any] = dict(problem)
        self.retry_after = retry_after
        super().__init__(f"{self.title} ({status}): {self.detail}")

    @property
    def type(self) -> str:
        """``/problems/<slug>``: GET it from the gateway for its meaning."""
        return str(self.problem.get("type", "about:blank"))

    @property
    def slug(self) -> str:
        return self.type.rsplit("/", 1)[-1]

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail", ""))

    @property
    def request_id(self) -> str | None:
        value = self.problem.get("requestId")
        return value if isinstance(value, str) else None


class JobFailed(ConveyorProblem):
    """A job that finished with an error (its ``error`` is the problem); ``job`` is the whole answer."""

    def __init__(self, job: Mapping[str, Any]):
        self.job = dict(job)
        error = cast(Mapping[str, Any], job.get("error") or {})
        super().__init__(int(error.get("status", 500)), {**error, "jobId": job.get("id")})


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"type": "about:blank", "title": response.reason_phrase, "status": response.status_code, "detail": response.text[:500]}
    raise ConveyorProblem(response.status_code, body, _retry_after(response))


def _prefer(respond_async: bool, wait_seconds: float | None) -> dict[str, str]:
    parts = (["respond-async"] if respond_async else []) + ([f"wait={wait_seconds:g}"] if wait_seconds is not None else [])
    return {"Prefer": ", ".join(parts)} if parts else {}


def _file_bytes(file: FileInput) -> tuple[str, bytes]:
    if isinstance(file, bytes):
        return "image", file
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as handle:
            return os.path.basename(os.fspath(file)), handle.read()
    return os.path.basename(str(getattr(file, "name", "image"))), file.read()


def _predict_request(
    file: FileInput | None, url: str | None, model: str | None, respond_async: bool, wait_seconds: float | None,
    request_id: str | None, callback_url: str | None,
) -> dict[str, Any]:
    if (file is None) == (url is None):
        raise ValueError("give either file= or url=, not both")
    path = f"/v1/models/{model}/predict" if model else "/v1/predict"
    headers = _prefer(respond_async, wait_seconds)
    if request_id:
        headers["X-Request-Id"] = request_id
    if callback_url:
        headers["Callback-Url"] = callback_url
    if url is not None:
        return {"method": "POST", "url": path, "headers": headers, "json": {"url": url}}
    name, data = _file_bytes(cast(FileInput, file))
    return {"method": "POST", "url": path, "headers": headers, "files": {"file": (name, data, "application/octet-stream")}}


def _predict_outcome(response: httpx.Response) -> CompletedResult | AcceptedJob:
    _raise_for_problem(response)
    body = response.json()
    if response.status_code == 202:
        return AcceptedJob(
            id=body["id"],
            model=body["model"],
            request_id=body["requestId"],
            location=response.headers.get("location", f"/v1/jobs/{body['id']}"),
            retry_after=_retry_after(response) or 1.0,
            body=body,
        )
    return cast(CompletedResult, body)


def _finished(job: Mapping[str, Any]) -> CompletedResult | None:
    """The result of a finished job, None while it waits or runs; a failed, cancelled or expired job is raised."""
    status = job.get("status")
    if status == "completed":
        return cast(CompletedResult, job)
    # Cancelled (DELETE /v1/jobs/{id}) and expired (its Prefer: deadline passed) jobs are finished too, with an error.
    if status in ("failed", "cancelled", "expired"):
        raise JobFailed(job)
    return None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """A blocking client. ``base_url`` e.g. ``http://localhost:8080``; ``api_key`` when the gateway requires keys."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0, http: httpx.Client | None = None):
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(
        self, *, file: FileInput | None = None, url: str | None = None, model: str | None = None,
        respond_async: bool = False, wait_seconds: float | None = None, request_id: str | None = None,
        callback_url: str | None = None,
    ) -> CompletedResult | AcceptedJob:
        """Classify an image: its result when the gateway answered within its wait, else the job to follow."""
        request = _predict_request(file, url, model, respond_async, wait_seconds, request_id, callback_url)
        return _predict_outcome(self._http.request(**request))

    def classify(self, *, file: FileInput | None = None, url: str | None = None, model: str | None = None, timeout: float = 60.0) -> CompletedResult:
        """Classify an image and return its result, however long the queue: predict, then wait if needed."""
        outcome = self.predict(file=file, url=url, model=model)
        return self.wait(outcome.id, timeout=timeout) if isinstance(outcome, AcceptedJob) else outcome

    def job(self, job_id: str) -> JobStatus:
        response = self._http.get(f"/v1/jobs/{job_id}")
        _raise_for_problem(response)
        return cast(JobStatus, response.json())

    def wait(self, job_id: str, *, timeout: float = 60.0) -> CompletedResult:
        """Polls the job until it has finished (at the gateway's ``Retry-After`` pace): its result, or JobFailed."""
        deadline = time.monotonic() + timeout
        while True:
            response = self._http.get(f"/v1/jobs/{job_id}")
            _raise_for_problem(response)
            result = _finished(response.json())
            if result is not None:
                return result
            pause = _retry_after(response) or 1.0
            if time.monotonic() + pause > deadline:
                raise TimeoutError(f"job {job_id} has not finished within {timeout} s")
            time.sleep(pause)

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's Server-Sent Events until the stream ends (after ``result``)."""
        with connect_sse(self._http, "GET", f"/v1/jobs/{job_id}/events") as source:
            if source.response.status_code >= 400:
                source.response.read()
                _raise_for_problem(source.response)
            for sse in source.iter_sse():
                # The stream opens with a bare `retry:` line: no data, not an event (as browsers see it).
                if sse.data:
                    yield JobEvent(event=sse.event, data=sse.json())

    def models(self) -> list[ModelDescription]:
        response = self._http.get("/v1/models")
        _raise_for_problem(response)
        return cast(list[ModelDescription], response.json()["models"])

    def feedback(self, job_id: str, label: str) -> FeedbackAccepted:
        """The true label of a finished job."""
        response = self._http.post("/v1/feedback", json={"jobId": job_id, "label": label})
        _raise_for_problem(response)
        return cast(FeedbackAccepted, response.json())


class AsyncClient:
    """The same as `Client`, for asyncio: ``async with AsyncClient(url) as c: await c.predict(file=…)``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0, http: httpx.AsyncClient | None = None):
        self._http = http or httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def predict(
        self, *, file: FileInput | None = None, url: str | None = None, model: str | None = None,
        respond_async: bool = False, wait_seconds: float | None = None, request_id: str | None = None,
        callback_url: str | None = None,
    ) -> CompletedResult | AcceptedJob:
        request = _predict_request(file, url, model, respond_async, wait_seconds, request_id, callback_url)
        return _predict_outcome(await self._http.request(**request))

    async def classify(self, *, file: FileInput | None = None, url: str | None = None, model: str | None = None, timeout: float = 60.0) -> CompletedResult:
        outcome = await self.predict(file=file, url=url, model=model)
        return await self.wait(outcome.id, timeout=timeout) if isinstance(outcome, AcceptedJob) else outcome

    async def job(self, job_id: str) -> JobStatus:
        response = await self._http.get(f"/v1/jobs/{job_id}")
        _raise_for_problem(response)
        return cast(JobStatus, response.json())

    async def wait(self, job_id: str, *, timeout: float = 60.0) -> CompletedResult:
        deadline = time.monotonic() + timeout
        while True:
            response = await self._http.get(f"/v1/jobs/{job_id}")
            _raise_for_problem(response)
            result = _finished(response.json())
            if result is not None:
                return result
            pause = _retry_after(response) or 1.0
            if time.monotonic() + pause > deadline:
                raise TimeoutError(f"job {job_id} has not finished within {timeout} s")
            await asyncio.sleep(pause)

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        async with aconnect_sse(self._http, "GET", f"/v1/jobs/{job_id}/events") as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                _raise_for_problem(source.response)
            async for sse in source.aiter_sse():
                if sse.data:
                    yield JobEvent(event=sse.event, data=sse.json())

    async def models(self) -> list[ModelDescription]:
        response = await self._http.get("/v1/models")
        _raise_for_problem(response)
        return cast(list[ModelDescription], response.json()["models"])

    async def feedback(self, job_id: str, label: str) -> FeedbackAccepted:
        response = await self._http.post("/v1/feedback", json={"jobId": job_id, "label": label})
        _raise_for_problem(response)
        return cast(FeedbackAccepted, response.json())
