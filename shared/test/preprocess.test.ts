import { expect } from 'chai';
import sharp from 'sharp';
import {
  digitPng,
  exifRotatedDigit,
  heldOutDigits,
  jpegDeclaringMore,
  pngBombHeader,
  scannedDigit,
  thinStrip,
  transparentDigit,
} from '../../test/support/images.js';
import { ModelManifest } from '../src/model/manifest.js';
import { preprocess, type ImageInput } from '../src/model/preprocess.js';
import { classify, loadModel, readManifest, type LoadedModel } from '../src/model/runtime.js';
import { ProblemError } from '../src/problem.js';

const limits = { maxPixels: 40_000_000 };
const encoded = (bytes: Buffer): ImageInput => ({ kind: 'encoded', bytes });

function correlation(a: Float32Array, b: Float32Array): number {
  const mean = (x: Float32Array) => x.reduce((s, v) => s + v, 0) / x.length;
  const ma = mean(a);
  const mb = mean(b);
  let num = 0;
  let da = 0;
  let db = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - ma) * (b[i]! - mb);
    da += (a[i]! - ma) ** 2;
    db += (b[i]! - mb) ** 2;
  }
  return num / Math.sqrt(da * db);
}

describe('preprocessing (digit policy)', function () {
  this.timeout(60_000);
  let manifest: ModelManifest;
  let model: LoadedModel;
  let samples: { pixels: Uint8Array; label: number }[];

  before(async () => {
    manifest = await readManifest('models/digits');
    model = await loadModel('models/digits');
    const { dataset, split } = await heldOutDigits();
    samples = split.test.slice(0, 150).map((i) => dataset.samples[i]!);
  });
  after(() => model.close());

  const label = async (input: ImageInput) => {
    const p = await preprocess(input, manifest, limits);
    const [out] = await model.run([p.tensor]);
    return classify(out!.probabilities, manifest.labels).label;
  };

  it('gives identical tensors for raw pixels (training) and the same pixels as a PNG upload (serving)', async () => {
    for (const s of samples.slice(0, 20)) {
      const raw = await preprocess({ kind: 'raw', data: s.pixels, width: 28, height: 28, channels: 1 }, manifest, limits);
      const png = await preprocess(encoded(await digitPng(s.pixels)), manifest, limits);
      expect(Array.from(png.tensor)).to.deep.equal(Array.from(raw.tensor));
    }
  });

  const variants: [string, (pixels: Uint8Array) => Promise<Buffer>, (d: Record<string, unknown>) => void][] = [
    ['dark ink on light paper, ×4, JPEG', (p) => scannedDigit(p), (d) => expect(d).to.include({ inverted: true, width: 112 })],
    ['black strokes on a transparent canvas', (p) => transparentDigit(p), (d) => expect(d).to.include({ inverted: true })],
    [
      'stored sideways with an EXIF orientation',
      (p) => exifRotatedDigit(p),
      (d) => expect(d).to.include({ width: 56, height: 56 }),
    ],
    [
      'a large photo-sized upload (×20)',
      (p) =>
        sharp(p, { raw: { width: 28, height: 28, channels: 1 } })
          .resize(560, 560)
          .jpeg()
          .toBuffer(),
      () => undefined,
    ],
  ];
  for (const [name, render, check] of variants) {
    it(`recovers the MNIST view of ${name}`, async () => {
      let same = 0;
      let correct = 0;
      const correlations: number[] = [];
      for (const s of samples) {
        const reference = await preprocess({ kind: 'raw', data: s.pixels, width: 28, height: 28, channels: 1 }, manifest, limits);
        const variant = await preprocess(encoded(await render(s.pixels)), manifest, limits);
        check(variant.descriptors);
        correlations.push(correlation(reference.tensor, variant.tensor));
        const [a, b] = [
          await label({ kind: 'raw', data: s.pixels, width: 28, height: 28, channels: 1 }),
          await label(encoded(await render(s.pixels))),
        ];
        if (a === b) same++;
        if (b === String(s.label)) correct++;
      }
      correlations.sort((x, y) => x - y);
      expect(correlations[Math.floor(correlations.length / 2)], 'median pixel correlation with the original').to.be.greaterThan(
        0.85,
      );
      expect(same / samples.length, 'same label as the original').to.be.at.least(0.95);
      expect(correct / samples.length, 'accuracy').to.be.at.least(0.95);
    });
  }

  it('returns an empty field, not an error, for a blank image', async () => {
    const blank = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#ffffff' } })
      .png()
      .toBuffer();
    const p = await preprocess(encoded(blank), manifest, limits);
    expect(p.tensor.every((v) => v === 0)).to.equal(true);
    expect(p.descriptors.inkRatio).to.equal(0);
  });

  it('rejects truncated and undecodable images as permanent problems', async () => {
    const jpeg = await scannedDigit(samples[0]!.pixels);
    for (const bytes of [jpeg.subarray(0, jpeg.length - 200), Buffer.from('not an image at all')]) {
      const error = await preprocess(encoded(bytes), manifest, limits).catch((e: unknown) => e);
      expect(error).to.be.instanceOf(ProblemError);
      expect((error as ProblemError).slug).to.equal('undecodable-image');
      expect((error as ProblemError).permanent).to.equal(true);
    }
  });

  // (Larger declared sizes are shrunk on load, where libvips reports no warning: the gateway's
  // density check refuses those before they are queued.)
  it('rejects a JPEG whose data ends before the pixels its header declares (not grey fill)', async () => {
    const error = (await preprocess(encoded(await jpegDeclaringMore(400)), manifest, limits).catch(
      (e: unknown) => e,
    )) as ProblemError;
    expect(error).to.be.instanceOf(ProblemError);
    expect(error.slug).to.equal('undecodable-image');
    expect(error.detail).to.match(/truncated/);
  });

  it('refuses a side or an aspect ratio beyond the limits before decoding', async () => {
    const strip = await thinStrip(20_000);
    const error = (await preprocess(encoded(strip), manifest, { ...limits, maxSide: 16_384, maxAspectRatio: 50 }).catch(
      (e: unknown) => e,
    )) as ProblemError;
    expect(error.slug).to.equal('image-too-large');
  });

  it('gives up at the deadline with a permanent problem, even where libvips seldom checks its timeout', async () => {
    const strip = await thinStrip(3_000_000);
    // The same image without a deadline, started first, as the yardstick: giving up at the deadline
    // means answering while that one still decodes, whatever the machine's speed.
    const full = preprocess(encoded(strip), manifest, limits).then(
      () => 'decoded' as const,
      () => 'decoded' as const,
    );
    const deadlined = preprocess(encoded(strip), manifest, { ...limits, timeoutMs: 100 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const first = await Promise.race([deadlined, full]);
    await full;
    expect(first, 'settled before the undeadlined decode of the same image').to.be.instanceOf(ProblemError);
    const error = first as ProblemError;
    expect(error.slug).to.equal('processing-deadline');
    expect(error.permanent).to.equal(true);
  });

  it('refuses images over the pixel limit before decoding them', async () => {
    // A PNG header and no pixel data: decoding it would answer undecodable-image, so image-too-large
    // can only come from the header.
    const error = await preprocess(encoded(pngBombHeader(30_000, 30_000)), manifest, limits).catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ProblemError);
    expect((error as ProblemError).slug).to.equal('image-too-large');
  });
});

describe('preprocessing (frame policies)', () => {
  const rgb = ModelManifest.parse({
    schema: 'conveyor.model/v1',
    name: 'frame',
    version: '1',
    sha256: '0'.repeat(64),
    input: { name: 'x', layout: 'NCHW', channels: 3, height: 4, width: 4 },
    output: { name: 'y', kind: 'logits' },
    preprocess: { color: 'rgb', resize: 'cover', normalize: { scale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.25, 0.5] } },
    labels: ['a', 'b'],
  });

  it('lays out NCHW planes with per-channel mean/std, cropping to cover', async () => {
    // 8×4: left half red, right half blue; cover-crop to 4×4 keeps the centre (half red, half blue).
    const image = await sharp({ create: { width: 8, height: 4, channels: 3, background: '#0000ff' } })
      .composite([{ input: { create: { width: 4, height: 4, channels: 3, background: '#ff0000' } }, left: 0, top: 0 }])
      .png()
      .toBuffer();
    const { tensor } = await preprocess(encoded(image), rgb, limits);
    expect(tensor.length).to.equal(3 * 16);
    const plane = (c: number) => Array.from(tensor.slice(c * 16, c * 16 + 16));
    // Red plane: (1 − 0.5) / 0.5 = 1 on the left columns, (0 − 0.5) / 0.5 = −1 on the right.
    expect(plane(0).slice(0, 4)).to.deep.equal([1, 1, -1, -1]);
    // Green is 0 everywhere: (0 − 0.5) / 0.25 = −2.
    expect(plane(1).every((v) => v === -2)).to.equal(true);
    expect(plane(2).slice(0, 4)).to.deep.equal([-1, -1, 1, 1]);
  });

  it('interleaves channels for NHWC', async () => {
    const nhwc = ModelManifest.parse({ ...rgb, input: { ...rgb.input, layout: 'NHWC' } });
    const red = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#ff0000' } })
      .png()
      .toBuffer();
    const { tensor } = await preprocess(encoded(red), nhwc, limits);
    expect(Array.from(tensor.slice(0, 6))).to.deep.equal([1, -2, -1, 1, -2, -1]);
  });

  it('flattens transparency onto the configured background', async () => {
    const clear = await sharp({ create: { width: 4, height: 4, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } })
      .png()
      .toBuffer();
    const { tensor } = await preprocess(encoded(clear), rgb, limits); // background defaults to white
    expect(Array.from(tensor.slice(0, 4))).to.deep.equal([1, 1, 1, 1]);
  });
});
