import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

/**
 * A small writer for ONNX graphs. The trainer exports its models with it, and tests build
 * purpose-made models (other input shapes, slow graphs) with it; there is no Python in the loop.
 */
export type Attribute =
  | { kind: 'int'; value: number }
  | { kind: 'ints'; value: readonly number[] }
  | { kind: 'float'; value: number }
  | { kind: 'string'; value: string };

export const attr = {
  int: (value: number): Attribute => ({ kind: 'int', value }),
  ints: (value: readonly number[]): Attribute => ({ kind: 'ints', value }),
  float: (value: number): Attribute => ({ kind: 'float', value }),
  string: (value: string): Attribute => ({ kind: 'string', value }),
};

type Dim = number | string;

export class OnnxGraphBuilder {
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];

  constructor(private readonly name: string) {}

  input(name: string, dims: readonly Dim[]): this {
    this.inputs.push(valueInfo(name, dims));
    return this;
  }

  output(name: string, dims: readonly Dim[]): this {
    this.outputs.push(valueInfo(name, dims));
    return this;
  }

  /** A float32 constant (weights); `int64` for shapes and axes. */
  initializer(
    name: string,
    dims: readonly number[],
    data: Float32Array | readonly number[],
    type: 'float32' | 'int64' = 'float32',
  ): this {
    const count = dims.reduce((a, b) => a * b, 1);
    if (data.length !== count) throw new Error(`initializer ${name}: ${data.length} values for dims [${dims.join(', ')}]`);
    if (type === 'int64') {
      this.initializers.push({ name, dims: [...dims], dataType: onnx.TensorProto.DataType.INT64, int64Data: Array.from(data) });
    } else {
      const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
      this.initializers.push({
        name,
        dims: [...dims],
        dataType: onnx.TensorProto.DataType.FLOAT,
        rawData: new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength),
      });
    }
    return this;
  }

  node(opType: string, inputs: readonly string[], outputs: readonly string[], attributes: Record<string, Attribute> = {}): this {
    this.nodes.push({
      opType,
      name: `${opType.toLowerCase()}_${this.nodes.length}`,
      input: [...inputs],
      output: [...outputs],
      attribute: Object.entries(attributes).map(([name, a]) => encodeAttribute(name, a)),
    });
    return this;
  }

  /** Serialises the model; `metadata` ends up in the ONNX file's metadata_props. */
  encode(options: { opset?: number; producer?: string; docString?: string; metadata?: Record<string, string> } = {}): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      opsetImport: [{ domain: '', version: options.opset ?? 13 }],
      producerName: options.producer ?? 'conveyor',
      producerVersion: '1',
      docString: options.docString ?? '',
      metadataProps: Object.entries(options.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: this.name,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
        node: this.nodes,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, dims: readonly Dim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: onnx.TensorProto.DataType.FLOAT,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function encodeAttribute(name: string, a: Attribute): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'int':
      return { name, type: T.INT, i: a.value };
    case 'ints':
      return { name, type: T.INTS, ints: [...a.value] };
    case 'float':
      return { name, type: T.FLOAT, f: a.value };
    case 'string':
      return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
  }
}
