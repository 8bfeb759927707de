"""A small typed client of Conveyor's HTTP API: see `Client` and `AsyncClient`."""

from .client import AsyncClient, Client, ConveyorProblem, FileInput, JobFailed
from .types import (
    AcceptedJob,
    CompletedResult,
    FailedResult,
    FeedbackAccepted,
    JobEvent,
    JobStatus,
    ModelDescription,
    PendingJob,
    ProblemBody,
)

__all__ = [
    "AcceptedJob",
    "AsyncClient",
    "Client",
    "CompletedResult",
    "ConveyorProblem",
    "FailedResult",
    "FeedbackAccepted",
    "FileInput",
    "JobEvent",
    "JobFailed",
    "JobStatus",
    "ModelDescription",
    "PendingJob",
    "ProblemBody",
]
