import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

/**
 * What `models add` reads from an ONNX file without running it: the graph's image input (name,
 * layout, channels, size, whether the batch axis is dynamic) and its class output (name, width,
 * whether a final Softmax makes it probabilities). Parsed with the ONNX protobuf schema (onnx-proto,
 * the project's one ONNX dependency besides onnxruntime); initializers listed as inputs (older
 * exporters do that) are not inputs.
 */
export interface Dim {
  readonly value?: number;
  readonly param?: string;
}

export interface InspectedInput {
  readonly name: string;
  readonly dims: readonly Dim[];
  readonly layout: 'NCHW' | 'NHWC';
  readonly channels: 1 | 3;
  readonly height: number;
  readonly width: number;
  readonly dynamicBatch: boolean;
}

export interface InspectedOutput {
  readonly name: string;
  readonly dims: readonly Dim[];
  /** The number of classes, when the graph says. */
  readonly classes?: number;
  /** `probabilities` when the output is made by a Softmax (possibly behind a Flatten/Reshape/Squeeze). */
  readonly kind: 'probabilities' | 'logits';
  readonly kindReason: string;
}

export interface Inspection {
  readonly input: InspectedInput;
  readonly output: InspectedOutput;
  /** Other outputs (candidates for an embedding), by name. */
  readonly otherOutputs: readonly string[];
  readonly opset?: number;
  readonly producer?: string;
  readonly notes: readonly string[];
}

export class InspectError extends Error {
  override readonly name = 'InspectError';
}

function dimsOf(info: onnxProto.onnx.IValueInfoProto): Dim[] {
  const shape = info.type?.tensorType?.shape?.dim ?? [];
  return shape.map((d) => {
    // An int64 (a protobufjs Long or a number): read through unknown, its type is not in our deps.
    const v: unknown = d.dimValue;
    const value = v === undefined || v === null ? undefined : Number(v);
    if (value !== undefined && value > 0) return { value };
    return d.dimParam ? { param: d.dimParam } : {};
  });
}

const PASS_THROUGH = new Set(['Flatten', 'Reshape', 'Squeeze', 'Identity', 'Cast']);

export function inspectOnnx(bytes: Uint8Array, overrides: { input?: string; output?: string } = {}): Inspection {
  let model: onnxProto.onnx.ModelProto;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (error) {
    throw new InspectError(`not an ONNX model: ${(error as Error).message}`);
  }
  const graph = model.graph;
  if (!graph) throw new InspectError('the ONNX file has no graph');
  const notes: string[] = [];
  const initializers = new Set((graph.initializer ?? []).map((t) => t.name));
  const inputs = (graph.input ?? []).filter((i) => i.name && !initializers.has(i.name));
  const input = overrides.input ? inputs.find((i) => i.name === overrides.input) : inputs[0];
  if (!input) throw new InspectError(overrides.input ? `no input named ${overrides.input}` : 'the graph has no input');
  if (inputs.length > 1) notes.push(`the graph has ${inputs.length} inputs; using "${input.name}" (--input to choose)`);
  const dims = dimsOf(input);
  if (dims.length !== 4)
    throw new InspectError(
      `input "${input.name}" has ${dims.length} dimensions; an image model takes 4 (N, C, H, W or N, H, W, C)`,
    );
  const [, d1, d2, d3] = dims as [Dim, Dim, Dim, Dim];
  let layout: 'NCHW' | 'NHWC';
  if (d1.value === 1 || d1.value === 3) layout = 'NCHW';
  else if (d3.value === 1 || d3.value === 3) layout = 'NHWC';
  else
    throw new InspectError(
      `cannot tell the layout of input "${input.name}" [${dims.map(show).join(', ')}]: neither axis 1 nor axis 3 is 1 or 3 channels`,
    );
  const [c, h, w] = layout === 'NCHW' ? [d1, d2, d3] : [d3, d1, d2];
  if (h.value === undefined || w.value === undefined) {
    throw new InspectError(`input "${input.name}" has a dynamic height or width [${dims.map(show).join(', ')}]: give --size WxH`);
  }
  const dynamicBatch = dims[0]!.value === undefined;
  if (!dynamicBatch) notes.push(`the batch axis is fixed at ${dims[0]!.value}: the worker runs one image at a time`);

  const outputs = (graph.output ?? []).filter((o) => o.name);
  const output = overrides.output ? outputs.find((o) => o.name === overrides.output) : outputs[0];
  if (!output) throw new InspectError(overrides.output ? `no output named ${overrides.output}` : 'the graph has no output');
  const outDims = dimsOf(output);
  const classes = outDims.length > 0 ? outDims.at(-1)!.value : undefined;
  // Walk back from the output through shape-only ops to the node that computes it.
  const producers = new Map<string, onnxProto.onnx.INodeProto>();
  for (const node of graph.node ?? []) for (const o of node.output ?? []) producers.set(o, node);
  let node = producers.get(output.name!);
  const path: string[] = [];
  while (node && PASS_THROUGH.has(node.opType ?? '')) {
    path.push(node.opType!);
    node = producers.get(node.input?.[0] ?? '');
  }
  const op = node?.opType ?? 'none';
  const probabilities = op === 'Softmax';
  const kindReason = probabilities
    ? `made by a Softmax node${path.length ? ` (then ${path.reverse().join(', ')})` : ''}`
    : `made by ${op}, not a Softmax: taken as logits (the worker applies a softmax); --output-kind probabilities if it already sums to 1`;
  const opsetVersion: unknown = model.opsetImport.find((o) => !o.domain || o.domain === 'ai.onnx')?.version;
  const opset = opsetVersion === undefined || opsetVersion === null ? undefined : Number(opsetVersion);
  return {
    input: { name: input.name!, dims, layout, channels: c.value === 1 ? 1 : 3, height: h.value, width: w.value, dynamicBatch },
    output: {
      name: output.name!,
      dims: outDims,
      ...(classes !== undefined ? { classes } : {}),
      kind: probabilities ? 'probabilities' : 'logits',
      kindReason,
    },
    otherOutputs: outputs.filter((o) => o !== output).map((o) => o.name!),
    ...(opset !== undefined ? { opset } : {}),
    ...(model.producerName ? { producer: `${model.producerName} ${model.producerVersion}`.trim() } : {}),
    notes,
  };
}

export function show(d: Dim): string {
  return d.value !== undefined ? String(d.value) : (d.param ?? '?');
}
