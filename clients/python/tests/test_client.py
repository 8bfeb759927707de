"""The client against a real gateway and worker (see conftest.py): every call here is answered by
the system, and what is asserted is what the digits model says about docs/examples/seven.png."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conveyor_client import AcceptedJob, AsyncClient, Client, ConveyorProblem


def test_sync_predict_with_a_file_waits_for_the_result(base_url: str, seven: bytes) -> None:
    with Client(base_url) as client:
        result = client.predict(file=seven, request_id="py-client-sync")
    assert not isinstance(result, AcceptedJob)
    assert result["status"] == "completed"
    assert result["prediction"]["label"] == "7"
    assert result["requestId"] == "py-client-sync"


def test_sync_predict_with_a_path_and_with_a_url(base_url: str, seven_path: Path, image_url: str) -> None:
    with Client(base_url) as client:
        by_path = client.classify(file=seven_path)
        by_url = client.classify(url=image_url)
    assert by_path["prediction"]["label"] == "7"
    assert by_url["prediction"]["label"] == "7"


def test_respond_async_then_poll_until_done(base_url: str, seven: bytes) -> None:
    with Client(base_url) as client:
        job = client.predict(file=seven, respond_async=True)
        assert isinstance(job, AcceptedJob)
        assert job.location == f"/v1/jobs/{job.id}"
        assert job.model == "digits"
        result = client.wait(job.id, timeout=120)
        assert result["id"] == job.id
        assert result["prediction"]["label"] == "7"
        # Once finished, reading the job gives the same result; feedback on it is recorded.
        assert client.job(job.id)["status"] == "completed"
        accepted = client.feedback(job.id, "7")
        assert accepted["status"] == "accepted"
        assert accepted["predicted"] == "7"


def test_events_follow_a_job_to_its_result(base_url: str, image_url: str) -> None:
    with Client(base_url) as client:
        job = client.predict(url=image_url, respond_async=True)
        assert isinstance(job, AcceptedJob)
        events = list(client.events(job.id))
    assert events, "the stream carried no event"
    assert [e.event for e in events[:-1]] == ["state"] * (len(events) - 1)
    last = events[-1]
    assert last.event == "result"
    assert last.data["id"] == job.id
    assert last.data["status"] == "completed"
    assert last.data["prediction"]["label"] == "7"


async def test_async_predict_with_a_file_and_a_url(base_url: str, seven: bytes, image_url: str) -> None:
    async with AsyncClient(base_url) as client:
        by_file = await client.predict(file=seven)
        by_url = await client.classify(url=image_url)
        assert not isinstance(by_file, AcceptedJob)
        assert by_file["prediction"]["label"] == "7"
        assert by_url["prediction"]["label"] == "7"


async def test_async_poll_and_events(base_url: str, seven: bytes) -> None:
    async with AsyncClient(base_url) as client:
        job = await client.predict(file=seven, respond_async=True)
        assert isinstance(job, AcceptedJob)
        events = [e async for e in client.events(job.id)]
        assert events[-1].event == "result"
        assert events[-1].data["prediction"]["label"] == "7"
        polled = await client.wait(job.id, timeout=120)
        assert polled["id"] == job.id


def test_a_refused_image_raises_the_problem_document(base_url: str) -> None:
    with Client(base_url) as client, pytest.raises(ConveyorProblem) as raised:
        client.predict(file=b"these bytes are no image at all", request_id="py-client-bad")
    problem = raised.value
    assert problem.status == 415
    assert problem.type == "/problems/unsupported-media-type"
    assert problem.slug == "unsupported-media-type"
    assert problem.request_id == "py-client-bad"
    assert problem.problem["status"] == 415
    assert problem.detail


async def test_unknown_model_and_unknown_job_are_problems_too(base_url: str, seven: bytes) -> None:
    async with AsyncClient(base_url) as client:
        with pytest.raises(ConveyorProblem) as raised:
            await client.predict(file=seven, model="no-such-model")
        assert raised.value.status == 404
        assert "digits" in raised.value.problem["models"]
        with pytest.raises(ConveyorProblem) as missing:
            await client.job(str(uuid.uuid4()))
        assert missing.value.status == 404
        assert missing.value.type == "/problems/not-found"


def test_lists_the_models(base_url: str) -> None:
    with Client(base_url) as client:
        models = client.models()
    digits = next(m for m in models if m["name"] == "digits")
    assert digits["ready"] is True
    assert digits["default"] is True


def test_file_and_url_together_is_a_usage_error(base_url: str, seven: bytes) -> None:
    with Client(base_url) as client, pytest.raises(ValueError):
        client.predict(file=seven, url="http://127.0.0.1/x.png")
