"""The BentoML peer of bench/compare.bench.ts: the same model and preprocessing as the FastAPI
peer, served by BentoML 1.4 with adaptive batching across concurrent requests.

POST /v1/predict with the image in the multipart field `file` → {label, confidence}. MODEL_DIR
names the model folder; BENTO_MAX_BATCH and BENTO_MAX_LATENCY_MS tune the batcher. Run by the
benchmark as `bentoml serve service:Classifier --port P` from this folder (2 worker processes).

With `batchable=True` the API takes a list: BentoML decodes each upload (PIL), queues it, and
calls `predict` with whatever arrived within the latency budget, up to `max_batch_size` images;
onnxruntime then runs them as one batch (the model's batch axis is dynamic). `max_latency_ms` is
also a shedding budget: a request expected to miss it is answered 503, so the benchmark sets it to
Conveyor's synchronous wait (10 s) rather than to a batching window.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml
import numpy as np
from PIL.Image import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from preprocess import Model  # noqa: E402

MAX_BATCH = int(os.environ.get("BENTO_MAX_BATCH", "32"))
MAX_LATENCY_MS = int(os.environ.get("BENTO_MAX_LATENCY_MS", "10000"))


@bentoml.service(workers=int(os.environ.get("BENTO_WORKERS", "2")), traffic={"timeout": 60})
class Classifier:
    def __init__(self) -> None:
        self.model = Model(os.environ["MODEL_DIR"])

    @bentoml.api(route="/v1/predict", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, file: list[Image]) -> list[dict[str, object]]:
        batch = np.stack([self.model.prepare_image(image) for image in file])
        return self.model.run(batch)
