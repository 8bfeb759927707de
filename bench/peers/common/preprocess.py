"""The preprocessing and inference a straightforward Python service does, shared by the peers.

Pillow + numpy + onnxruntime, read from a Conveyor model folder (MODEL_DIR): the manifest says the
input size, colour mode, normalisation and labels. Deliberately plain, as such a service would be:
gray models (digits) are resized to the input size, inverted when the background is light and
scaled; colour models are resized to the input size, normalised by mean/std and laid out as CHW.
It does not reproduce Conveyor's digit recipe (crop to the ink, fit in a 20×20 box, centre by mass)
— that is part of what Conveyor's preprocessing costs.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


class Model:
    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        folder = Path(model_dir)
        manifest = json.loads((folder / "manifest.json").read_text())
        self.input_name: str = manifest["input"]["name"]
        self.output_name: str = manifest["output"]["name"]
        self.logits = manifest["output"]["kind"] == "logits"
        self.labels: list[str] = manifest["labels"]
        self.width: int = manifest["input"]["width"]
        self.height: int = manifest["input"]["height"]
        self.nchw = manifest["input"]["layout"] == "NCHW"
        pre = manifest["preprocess"]
        self.gray = pre["color"] == "gray"
        self.polarity = pre.get("polarity", "none")
        norm = pre["normalize"]
        self.scale = np.float32(norm.get("scale", 1 / 255))
        self.mean = np.asarray(norm["mean"], dtype=np.float32)
        self.std = np.asarray(norm["std"], dtype=np.float32)
        options = ort.SessionOptions()
        # One thread per process, scaled by processes (as Conveyor's workers run).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(folder / manifest.get("file", "model.onnx")), options, providers=["CPUExecutionProvider"]
        )

    def prepare(self, data: bytes) -> np.ndarray:
        """Encoded image → one input tensor without the batch axis."""
        return self.prepare_image(Image.open(io.BytesIO(data)))

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        image = image.convert("L" if self.gray else "RGB").resize((self.width, self.height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        if self.gray:
            if self.polarity == "light-on-dark":
                border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
                if np.median(border) > 127:
                    pixels = 255 - pixels
            pixels = pixels[:, :, None]
        x = (pixels * self.scale - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.nchw else x)

    def run(self, batch: np.ndarray) -> list[dict[str, object]]:
        (scores,) = self.session.run([self.output_name], {self.input_name: batch})
        if self.logits:
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = e / e.sum(axis=1, keepdims=True)
        best = scores.argmax(axis=1)
        return [
            {"label": self.labels[int(i)], "confidence": round(float(row[i]), 6)} for i, row in zip(best, scores)
        ]

    def predict(self, data: bytes) -> dict[str, object]:
        return self.run(self.prepare(data)[None])[0]
