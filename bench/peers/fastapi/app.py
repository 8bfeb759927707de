"""The FastAPI peer of bench/compare.bench.ts: the service a team would write without a queue.

POST /v1/predict with the image in the multipart field `file` (the body the load client sends) →
{label, confidence}. The model folder comes from MODEL_DIR. Run by the benchmark as

    uvicorn app:app --workers 2 --http nodelay:HttpToolsNoDelay --no-access-log

The endpoint is `async def` and does the work inline: decoding and inference are CPU-bound, each
worker process has a core, and FastAPI's thread pool (what a plain `def` would use) only adds a hop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import UnidentifiedImageError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from preprocess import Model  # noqa: E402

model = Model(os.environ["MODEL_DIR"])
app = FastAPI()


@app.post("/v1/predict")
async def predict(file: UploadFile = File(...)) -> dict[str, object]:
    data = await file.read()
    try:
        return model.predict(data)
    except (UnidentifiedImageError, OSError) as error:
        raise HTTPException(status_code=422, detail=f"undecodable image: {error}") from error


@app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}
