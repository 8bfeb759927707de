"""nsfwjs's MobileNetV2 (a tfjs Layers model) -> models/moderation/model.onnx, with numpy and onnx only.

The input is the standard tfjs folder that scripts/models/nsfwjs.ts writes from the npm package
(model.json: the Keras 2.2.4 topology and the weights manifest; group1-shard*.bin: the weights,
uint8-quantized). No TensorFlow: the model uses ten layer types, each of which maps onto one or two
ONNX operators, so the conversion is written out here where every choice can be read.

The graph takes NCHW float input (Conveyor's convention, and onnxruntime's native layout: no
transposes anywhere), opset 13, IR version 8 (onnx 1.23 writes IR 14 by default, which
onnxruntime-node 1.30 refuses). BatchNormalization is folded into the convolution before it.

The output must be byte-for-byte the file whose sha256 manifest.json records: the conversion is
deterministic, and a different result (other weights, other pins) stops the build rather than
shipping a model nobody checked.

    .venv/models/bin/python models/moderation/convert.py --tfjs DIR [--out models/moderation/model.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
INPUT = "input"
OUTPUT = "probabilities"


def load_weights(tfjs: Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    """Every weight by name, dequantized exactly as tfjs does it (io_utils decodeWeights): the
    arithmetic in float64, `q * scale + min`, then rounded once to float32."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((tfjs / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"], dtype=np.int64))
            quantization = spec.get("quantization")
            if spec["dtype"] != "float32" or quantization is None or quantization["dtype"] != "uint8":
                raise ValueError(f"{spec['name']}: only uint8-quantized float32 weights are expected, got {spec}")
            q = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)
            offset += count
            values = q.astype(np.float64) * quantization["scale"] + quantization["min"]
            weights[spec["name"]] = values.astype(np.float32).reshape(spec["shape"])
        if offset != len(data):
            raise ValueError(f"weights group {group['paths']} holds {len(data)} bytes, the manifest describes {offset}")
    return weights


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same': the output is ceil(size / stride) and the odd pixel of padding goes at
    the end (bottom/right), which is not what a symmetric `pads` would do."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Converter:
    def __init__(self, topology: dict, weights: dict[str, np.ndarray]):
        config = topology["model_config"]["config"]
        self.layers: list[dict] = config["layers"]
        self.by_name = {layer["name"]: layer for layer in self.layers}
        self.weights = weights
        self.used: set[str] = set()
        [[self.output_layer, _, _]] = config["output_layers"]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        # Per Keras layer: the ONNX tensor holding its output and that output's (C, H, W) or (F,).
        self.tensor: dict[str, str] = {}
        self.shape: dict[str, tuple[int, ...]] = {}
        self.consumers: dict[str, list[str]] = {}
        for layer in self.layers:
            for source in self.inputs_of(layer):
                self.consumers.setdefault(source, []).append(layer["name"])
        self.folded: set[str] = set()
        self.constant("relu6/min", np.array(0, dtype=np.float32))
        self.constant("relu6/max", np.array(6, dtype=np.float32))

    @staticmethod
    def inputs_of(layer: dict) -> list[str]:
        nodes = layer["inbound_nodes"]
        if not nodes:
            return []
        if len(nodes) != 1 or any(index != 0 or tensor != 0 for _, index, tensor, *_ in nodes[0]):
            raise ValueError(f"{layer['name']}: shared layers are not expected")
        return [name for name, *_ in nodes[0]]

    def weight(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.weights[name]

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def out(self, layer: str) -> str:
        return OUTPUT if layer == self.output_layer else layer

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def convert(self) -> onnx.ModelProto:
        for layer in self.layers:
            name, kind, config = layer["name"], layer["class_name"], layer["config"]
            sources = self.inputs_of(layer)
            x = self.tensor[sources[0]] if sources else None
            shape = self.shape[sources[0]] if sources else None
            handler = getattr(self, f"layer_{kind}", None)
            if handler is None:
                raise ValueError(f"{name}: layer type {kind} is not supported")
            handler(name, config, x, shape, sources)
        unused = sorted(set(self.weights) - self.used)
        if unused:
            raise ValueError(f"weights not used by any layer: {unused}")

        graph = helper.make_graph(
            self.nodes,
            "nsfwjs-mobilenet-v2",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", self.shape[self.output_layer][0]])],
            self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="conveyor/models/moderation/convert.py",
            producer_version="1",
            doc_string="nsfwjs MobileNetV2 (MIT, Infinite Red), NCHW input in [0, 1], softmax over "
            "Drawing, Hentai, Neutral, Porn, Sexy",
        )
        onnx.checker.check_model(model, full_check=True)
        return model

    # One method per Keras layer type, named after its class_name.

    def layer_InputLayer(self, name, config, x, shape, sources):
        _, height, width, channels = config["batch_input_shape"]
        if (height, width, channels) != (224, 224, 3):
            raise ValueError(f"{name}: expected a 224x224x3 input, got {config['batch_input_shape']}")
        self.tensor[name], self.shape[name] = INPUT, (channels, height, width)

    def layer_ZeroPadding2D(self, name, config, x, shape, sources):
        (top, bottom), (left, right) = config["padding"]
        pads = self.constant(f"{name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64))
        self.tensor[name] = self.node("Pad", [x, pads], self.out(name), mode="constant")
        c, h, w = shape
        self.shape[name] = (c, h + top + bottom, w + left + right)

    def conv(self, name, config, x, shape, kernel: np.ndarray, bias: np.ndarray | None, group: int):
        """kernel is already [out, in / group, kh, kw]. A BatchNormalization that is this layer's
        only consumer is folded in: w' = w * gamma / sqrt(var + eps), b' = (b - mean) * that + beta."""
        if config.get("dilation_rate", [1, 1]) != [1, 1] or config["activation"] != "linear":
            raise ValueError(f"{name}: dilated or activated convolutions are not expected")
        (kh, kw), (sh, sw) = config["kernel_size"], config["strides"]
        c, h, w = shape
        if config["padding"] == "same":
            (top, bottom), (left, right) = same_pads(h, kh, sh), same_pads(w, kw, sw)
        elif config["padding"] == "valid":
            top = bottom = left = right = 0
        else:
            raise ValueError(f"{name}: padding {config['padding']}")
        out_channels = kernel.shape[0]
        if bias is None:
            bias = np.zeros(out_channels, dtype=np.float32)
        output = name
        consumers = self.consumers.get(name, [])
        bn = self.by_name[consumers[0]] if len(consumers) == 1 else None
        if bn is not None and bn["class_name"] == "BatchNormalization":
            bn_config = bn["config"]
            if bn_config["axis"] not in (-1, 3) or not (bn_config["center"] and bn_config["scale"]):
                raise ValueError(f"{bn['name']}: only a full BatchNormalization over channels is expected")
            gamma, beta, mean, var = (
                self.weight(f"{bn['name']}/{p}").astype(np.float64)
                for p in ("gamma", "beta", "moving_mean", "moving_variance")
            )
            factor = gamma / np.sqrt(var + bn_config["epsilon"])
            kernel = (kernel.astype(np.float64) * factor[:, None, None, None]).astype(np.float32)
            bias = ((bias.astype(np.float64) - mean) * factor + beta).astype(np.float32)
            self.folded.add(bn["name"])
            output = bn["name"]
        weights = [self.constant(f"{name}/W", kernel), self.constant(f"{name}/B", bias)]
        y = self.node(
            "Conv",
            [x, *weights],
            self.out(output),
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[top, left, bottom, right],
            group=group,
        )
        out_shape = (out_channels, (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1)
        for layer in {name, output}:
            self.tensor[layer], self.shape[layer] = y, out_shape

    def layer_Conv2D(self, name, config, x, shape, sources):
        kernel = self.weight(f"{name}/kernel").transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
        bias = self.weight(f"{name}/bias") if config["use_bias"] else None
        self.conv(name, config, x, shape, kernel, bias, group=1)

    def layer_DepthwiseConv2D(self, name, config, x, shape, sources):
        # [kh, kw, in, multiplier] -> [in * multiplier, 1, kh, kw]: output channel c * multiplier + m
        # is input channel c's m-th filter in TensorFlow, and group c's m-th output in ONNX.
        kernel = self.weight(f"{name}/depthwise_kernel")
        kh, kw, channels, multiplier = kernel.shape
        kernel = kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
        bias = self.weight(f"{name}/bias") if config["use_bias"] else None
        self.conv(name, config, x, shape, kernel, bias, group=channels)

    def layer_BatchNormalization(self, name, config, x, shape, sources):
        if name not in self.folded:
            raise ValueError(f"{name}: a BatchNormalization that does not follow a convolution is not expected")

    def layer_ReLU(self, name, config, x, shape, sources):
        if config.get("negative_slope", 0) != 0 or config.get("threshold", 0) != 0:
            raise ValueError(f"{name}: leaky or thresholded ReLU is not expected")
        if config.get("max_value") is None:
            self.tensor[name] = self.node("Relu", [x], self.out(name))
        elif config["max_value"] == 6:
            self.tensor[name] = self.node("Clip", [x, "relu6/min", "relu6/max"], self.out(name))
        else:
            raise ValueError(f"{name}: max_value {config['max_value']}")
        self.shape[name] = shape

    def layer_Add(self, name, config, x, shape, sources):
        if len(sources) != 2:
            raise ValueError(f"{name}: only two-input Add is expected")
        self.tensor[name] = self.node("Add", [self.tensor[s] for s in sources], self.out(name))
        self.shape[name] = shape

    def layer_AveragePooling2D(self, name, config, x, shape, sources):
        if config["padding"] != "valid":
            raise ValueError(f"{name}: only 'valid' average pooling is expected")
        (kh, kw), (sh, sw) = config["pool_size"], config["strides"]
        self.tensor[name] = self.node("AveragePool", [x], self.out(name), kernel_shape=[kh, kw], strides=[sh, sw])
        c, h, w = shape
        self.shape[name] = (c, (h - kh) // sh + 1, (w - kw) // sw + 1)

    def layer_GlobalAveragePooling2D(self, name, config, x, shape, sources):
        pooled = self.node("GlobalAveragePool", [x], f"{name}/pooled")
        self.tensor[name] = self.node("Flatten", [pooled], self.out(name), axis=1)
        self.shape[name] = (shape[0],)

    def layer_Flatten(self, name, config, x, shape, sources):
        c, h, w = shape
        if h * w != 1:
            # Keras flattens channels-last (H, W, C order); the graph holds NCHW.
            x = self.node("Transpose", [x], f"{name}/nhwc", perm=[0, 2, 3, 1])
        self.tensor[name] = self.node("Flatten", [x], self.out(name), axis=1)
        self.shape[name] = (c * h * w,)

    def layer_Dense(self, name, config, x, shape, sources):
        kernel = self.weight(f"{name}/kernel")  # [in, out]: Gemm's B as it is
        bias = self.weight(f"{name}/bias") if config["use_bias"] else np.zeros(kernel.shape[1], dtype=np.float32)
        weights = [self.constant(f"{name}/W", kernel), self.constant(f"{name}/B", bias)]
        activation = config["activation"]
        if activation == "linear":
            y = self.node("Gemm", [x, *weights], self.out(name))
        elif activation in ("relu", "softmax"):
            z = self.node("Gemm", [x, *weights], f"{name}/linear")
            if activation == "relu":
                y = self.node("Relu", [z], self.out(name))
            else:
                y = self.node("Softmax", [z], self.out(name), axis=1)
        else:
            raise ValueError(f"{name}: activation {activation}")
        self.tensor[name], self.shape[name] = y, (kernel.shape[1],)

    def layer_Dropout(self, name, config, x, shape, sources):
        # Inference: the identity.
        self.tensor[name], self.shape[name] = x, shape


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tfjs", type=Path, required=True, help="folder with model.json and its weight shards")
    parser.add_argument("--out", type=Path, default=here / "model.onnx")
    parser.add_argument("--manifest", type=Path, default=here / "manifest.json", help="holds the expected sha256")
    args = parser.parse_args()

    model_json = json.loads((args.tfjs / "model.json").read_text())
    weights = load_weights(args.tfjs, model_json["weightsManifest"])
    model = Converter(model_json["modelTopology"], weights).convert()
    data = model.SerializeToString(deterministic=True)
    sha256 = hashlib.sha256(data).hexdigest()
    expected = json.loads(args.manifest.read_text())["sha256"]
    parameters = sum(int(np.prod(w.shape)) for w in weights.values())
    summary = f"{len(model.graph.node)} nodes, {parameters} parameters, {len(data)} bytes, sha256 {sha256}"
    print(f"convert.py: {summary}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if sha256 != expected:
        rejected = args.out.with_name(args.out.name + ".rejected")
        rejected.write_bytes(data)
        print(
            f"convert.py: the conversion gives sha256 {sha256}, {args.manifest} expects {expected}.\n"
            f"  The output is kept in {rejected} for inspection; {args.out} is left as it was.\n"
            "  If the change is intended (new converter, new pins), check the model (make model-moderation)\n"
            "  and record the new sha256 in the manifest.",
            file=sys.stderr,
        )
        return 1
    # Written whole or not at all: a half-written model.onnx would fail its checksum only at load.
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
