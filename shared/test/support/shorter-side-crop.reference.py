"""Reference tensors for the `shorter-side-crop` policy and BGR channel order, computed with numpy
alone (no code of Conveyor's): torchvision's Resize(s) + CenterCrop(c) geometry, an exact 3x box
average for the resize (the source is 3x the resized size on both sides, and smooth, so any good
resampler lands within a level or two of it), then normalisation in the model's channel order.

  .venv/models/bin/python shared/test/support/shorter-side-crop.reference.py > shared/test/support/shorter-side-crop.reference.json
"""
import json
import numpy as np

INPUT = 16
FRACTION = 0.5          # shorter side to 32, crop 16
FACTOR = 3              # source = 3 x resized
RESIZED_W, RESIZED_H = 41, 32  # 123 x 96 source; (41 - 16) / 2 = 12.5 rounds to 12 (Python's round)
SRC_W, SRC_H = RESIZED_W * FACTOR, RESIZED_H * FACTOR

y, x = np.mgrid[0:SRC_H, 0:SRC_W].astype(np.float64)
r = 10 + x * 1.9
g = 20 + y * 2.3
b = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 11.0)
src = np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)

# torchvision: shorter side -> 32, longer int(32 * 123 / 96) = 41; crop at round((41-16)/2), round((32-16)/2)
short = round(INPUT / FRACTION)
assert short == RESIZED_H and int(short * SRC_W / SRC_H) == RESIZED_W
resized = src.reshape(RESIZED_H, FACTOR, RESIZED_W, FACTOR, 3).astype(np.float64).mean(axis=(1, 3))
resized = np.rint(resized)  # the resize yields 8-bit pixels
left = int(round((RESIZED_W - INPUT) / 2.0))
top = int(round((RESIZED_H - INPUT) / 2.0))
crop = resized[top : top + INPUT, left : left + INPUT, :]


def tensor(order, layout, mean, std):
    pixels = crop[:, :, ::-1] if order == "bgr" else crop
    t = (pixels / 255.0 - np.array(mean)) / np.array(std)
    if layout == "NCHW":
        t = t.transpose(2, 0, 1)
    return [round(float(v), 6) for v in t.reshape(-1)]


cases = [
    {"channelOrder": "rgb", "layout": "NCHW", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"channelOrder": "bgr", "layout": "NHWC", "mean": [0.1, 0.5, 0.9], "std": [0.5, 0.25, 0.125]},
    {"channelOrder": "bgr", "layout": "NCHW", "mean": [0.1, 0.5, 0.9], "std": [0.5, 0.25, 0.125]},
]
for case in cases:
    case["tensor"] = tensor(case["channelOrder"], case["layout"], case["mean"], case["std"])

print(json.dumps({
    "source": {"width": SRC_W, "height": SRC_H, "pixels": src.reshape(-1).tolist()},
    "input": INPUT,
    "cropFraction": FRACTION,
    "crop": {"left": left, "top": top, "resized": [RESIZED_W, RESIZED_H]},
    "cases": cases,
}))
