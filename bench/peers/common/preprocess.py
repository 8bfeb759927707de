"""The preprocessing and inference a straightforward Python service does, shared by the peers.

Pillow + numpy + onnxruntime, read from a Conveyor model folder (MODEL_DIR): the manifest says the
input size, colour mode, normalisation and labels. Deliberately plain, as such a service would be:
gray models (digits) are resized to the input size, inverted when the background is light and
scaled; colour models are resized to the input size, normalised by mean/std and laid out as CHW.
It does not reproduce Conveyor's digit recipe (crop to the ink, fit in a 20×20 box, centre by mass)
— that is part of what Conveyor's preprocessing costs.

A model whose manifest asks for `bilinear-align-corners` (models/moderation, nsfwjs's MobileNetV2)
gets exactly that, as its users would have to write it: TensorFlow's `resizeBilinear(…,
alignCorners: true)` in numpy from the full decode, in floating point, the way Conveyor's worker and
nsfwjs compute it. Pillow's own BILINEAR filter is an antialiasing filter with half-pixel centres,
which would move that model's probabilities by far more than its conversion to ONNX does, so the
peers would no longer serve the same model.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


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
        self.aligned = pre["resize"] == "bilinear-align-corners"
        self.background = tuple(pre.get("background", (255, 255, 255)))
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
        if self.aligned:
            pixels = align_corners_bilinear(self.flattened(image), self.width, self.height)
        else:
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

    def flattened(self, image: Image.Image) -> np.ndarray:
        """The full-size decode as 8-bit pixels, upright (EXIF), transparency flattened onto the manifest's background."""
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*self.background, 255))
            image = Image.alpha_composite(canvas, rgba)
        return np.asarray(image.convert("L" if self.gray else "RGB"))

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


def align_corners_bilinear(src: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """TensorFlow's resizeBilinear with alignCorners (no half-pixel centres), as tfjs' CPU kernel computes it.

    Output pixel (x, y) samples the source at (x·(w−1)/(W−1), y·(h−1)/(H−1)) and interpolates its
    four neighbours, first along x, then along y, in float64 (as JavaScript numbers), returned as
    float32 values 0–255: H×W for a gray source, H×W×C otherwise.
    """
    h, w = src.shape[:2]
    ratio_x = (w - 1) / (out_w - 1) if out_w > 1 else w / out_w
    ratio_y = (h - 1) / (out_h - 1) if out_h > 1 else h / out_h
    at_x = ratio_x * np.arange(out_w)
    at_y = ratio_y * np.arange(out_h)
    left = np.floor(at_x).astype(np.intp)
    right = np.minimum(w - 1, np.ceil(at_x)).astype(np.intp)
    top = np.floor(at_y).astype(np.intp)
    bottom = np.minimum(h - 1, np.ceil(at_y)).astype(np.intp)
    frac_x = at_x - left
    frac_y = at_y - top
    if src.ndim == 3:
        frac_x = frac_x[:, None]
    # The four neighbours gathered as 8-bit (out_h×out_w, not the whole rows), then widened once.
    rows_top, rows_bottom = src[top], src[bottom]
    top_left, top_right = rows_top[:, left].astype(np.float64), rows_top[:, right].astype(np.float64)
    bottom_left, bottom_right = rows_bottom[:, left].astype(np.float64), rows_bottom[:, right].astype(np.float64)
    upper = top_left + (top_right - top_left) * frac_x
    lower = bottom_left + (bottom_right - bottom_left) * frac_x
    frac_y = frac_y.reshape((out_h,) + (1,) * (upper.ndim - 1))
    return (upper + (lower - upper) * frac_y).astype(np.float32)
