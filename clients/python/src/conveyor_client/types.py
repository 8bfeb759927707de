"""The bodies Conveyor's gateway answers with, as typed dictionaries (the JSON as it arrives).

They follow the schemas of ``/openapi.json`` (generated from the gateway's zod contract); members a
later gateway adds are kept in the dictionaries, so an older client does not break on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict, Union


class ModelRef(TypedDict):
    name: str
    version: str


class Score(TypedDict):
    label: str
    confidence: float


class Prediction(TypedDict):
    label: str
    index: int
    confidence: float
    top: list[Score]


class ProblemBody(TypedDict):
    """An RFC 9457 problem document: every error answer, and a failed job's ``error``."""

    type: str
    title: str
    status: int
    detail: str
    instance: NotRequired[str]
    requestId: NotRequired[str]
    jobId: NotRequired[str]
    slug: NotRequired[str]


class CompletedResult(TypedDict):
    """A finished job's result (the 200 of a predict that waited, and of ``GET /v1/jobs/{id}``)."""

    id: str
    requestId: str
    status: Literal["completed"]
    acceptedAt: str
    finishedAt: str
    attempt: int
    worker: str
    model: ModelRef
    prediction: Prediction
    timings: dict[str, float]
    input: dict[str, Any]


class FailedResult(TypedDict):
    id: str
    status: Literal["failed"]
    error: ProblemBody
    requestId: NotRequired[str]
    model: NotRequired[ModelRef]


class PendingJob(TypedDict):
    id: str
    status: Literal["queued", "active"]
    model: str


JobStatus = Union[PendingJob, CompletedResult, FailedResult]


class ModelDescription(TypedDict):
    name: str
    default: bool
    ready: bool
    workers: int
    concurrency: int
    versions: list[str]
    labels: NotRequired[list[str]]
    description: NotRequired[str]
    links: dict[str, str]


class FeedbackAccepted(TypedDict):
    jobId: str
    label: str
    status: Literal["accepted"]
    predicted: str
    model: ModelRef


@dataclass(frozen=True)
class AcceptedJob:
    """The 202 of a predict that did not wait (or whose wait ran out): where to follow the job."""

    id: str
    model: str
    request_id: str
    #: ``Location``: the job's own address, ``/v1/jobs/{id}``.
    location: str
    #: Seconds the gateway suggests before the first poll (``Retry-After``).
    retry_after: float
    body: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of ``GET /v1/jobs/{id}/events``: ``state`` (a PendingJob), ``result``
    (a CompletedResult or FailedResult; the last event), or ``timeout``/``shutdown``/``gone``/``error``
    (``{"detail": …}``; the stream ends)."""

    event: str
    data: dict[str, Any]
