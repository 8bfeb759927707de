import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Readable, Writable } from 'node:stream';
import { expect } from 'chai';
import formidable, { type File } from 'formidable';
import { simpleFormUpload } from '../src/intake/simple-form.js';

/**
 * The common multipart form read without formidable: what it accepts is exactly what formidable
 * makes of the same bytes (checked against formidable itself), and every other shape is left to
 * formidable (undefined).
 */
const boundary = '----formdata-undici-0123456789';
const type = `multipart/form-data; boundary=${boundary}`;
// Binary with line ends and dashes in it, as images have.
const image = Buffer.concat([
  Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
  randomBytes(5000),
  Buffer.from('\r\n--\r\n\r\n'),
  randomBytes(100),
]);

function form(parts: string[], tail = '\r\n'): Buffer {
  return Buffer.concat([...parts.map((p) => Buffer.from(p, 'latin1')), Buffer.from(tail)]);
}
function filePart(disposition: string, extraHeaders = 'Content-Type: image/jpeg\r\n', bytes: Buffer = image): Buffer {
  return Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n${extraHeaders}\r\n`, 'latin1'),
    bytes,
    Buffer.from(`\r\n--${boundary}--`),
  ]);
}

/** What formidable (as the gateway configures it) makes of a body: its fields, and its files' bytes and names. */
async function formidableReads(body: Buffer, contentType = type) {
  const chunks = new Map<unknown, Buffer[]>();
  const parser = formidable({
    multiples: true,
    allowEmptyFiles: false,
    fileWriteStreamHandler: (file?: unknown) => {
      const list: Buffer[] = [];
      chunks.set(file, list);
      return new Writable({
        write(chunk: Buffer, _encoding, done) {
          list.push(chunk);
          done();
        },
      });
    },
  });
  const req = Object.assign(Readable.from([body]), {
    headers: { 'content-type': contentType, 'content-length': String(body.length) },
  });
  const [fields, files] = await parser.parse(req as unknown as IncomingMessage);
  return {
    fields,
    files: Object.fromEntries(
      Object.entries(files).map(([name, list]) => [
        name,
        (list ?? []).map((f: File) => ({ filename: f.originalFilename, bytes: Buffer.concat(chunks.get(f) ?? []) })),
      ]),
    ),
  };
}

describe('the simple multipart form (one file part), read without formidable', () => {
  const accepted: [string, Buffer][] = [
    ['fetch / undici FormData', Buffer.concat([filePart('form-data; name="file"; filename="image"'), Buffer.from('\r\n')])],
    ['curl -F, no trailing line end', filePart('form-data; name="file"; filename="seven.png"', 'Content-Type: image/png\r\n')],
    [
      'a file name with spaces and brackets',
      Buffer.concat([filePart('form-data; name="file"; filename="a b(1).jpg"'), Buffer.from('\r\n')]),
    ],
  ];
  for (const [what, body] of accepted) {
    it(`reads ${what} as formidable does`, async () => {
      const simple = simpleFormUpload(body, type);
      expect(simple, what).to.not.equal(undefined);
      const reference = await formidableReads(body);
      expect(reference.fields).to.deep.equal({});
      expect(Object.keys(reference.files)).to.deep.equal(['file']);
      expect(simple!.filename).to.equal(reference.files.file![0]!.filename);
      expect(simple!.bytes.equals(reference.files.file![0]!.bytes)).to.equal(true);
      expect(simple!.bytes.equals(image)).to.equal(true);
    });
  }

  it('takes the boundary as formidable does (quoted, with more parameters)', () => {
    const body = Buffer.concat([filePart('form-data; name="file"; filename="x.jpg"'), Buffer.from('\r\n')]);
    expect(simpleFormUpload(body, `multipart/form-data; boundary="${boundary}"; charset=utf-8`)?.filename).to.equal('x.jpg');
  });

  const refused: [string, Buffer][] = [
    [
      'a url field',
      form([`--${boundary}\r\nContent-Disposition: form-data; name="url"\r\n\r\nhttps://example.com/a.jpg\r\n--${boundary}--`]),
    ],
    [
      'a second part',
      Buffer.concat([
        filePart('form-data; name="file"; filename="a.jpg"').subarray(0, -2),
        Buffer.from(`\r\nContent-Disposition: form-data; name="url"\r\n\r\nx\r\n--${boundary}--\r\n`),
      ]),
    ],
    // formidable reads a part without a Content-Type as a text field.
    ['no Content-Type', filePart('form-data; name="file"; filename="a.jpg"', '')],
    ['another field name', filePart('form-data; name="image"; filename="a.jpg"')],
    ['the name in capitals', filePart('form-data; name="FILE"; filename="a.jpg"')],
    ['no file name (a text field)', filePart('form-data; name="file"')],
    ['an empty file name', filePart('form-data; name="file"; filename=""')],
    ['a path in the file name', filePart('form-data; name="file"; filename="C:\\\\photos\\\\a.jpg"')],
    ['an escaped quote in the file name', filePart('form-data; name="file"; filename="a%22b.jpg"')],
    ['a non-ASCII file name', filePart('form-data; name="file"; filename="caf\u00e9.jpg"')],
    ['a space after the disposition', filePart('form-data; name="file"; filename="a.jpg" ')],
    ['another part header', filePart('form-data; name="file"; filename="a.jpg"', 'Content-Transfer-Encoding: base64\r\n')],
    ['an empty file', filePart('form-data; name="file"; filename="a.jpg"', undefined, Buffer.alloc(0))],
    ['a preamble', Buffer.concat([Buffer.from('preamble\r\n'), filePart('form-data; name="file"; filename="a.jpg"')])],
    ['no closing boundary', filePart('form-data; name="file"; filename="a.jpg"').subarray(0, -(boundary.length + 6))],
    [
      'a line in the file that starts as the delimiter does',
      filePart('form-data; name="file"; filename="a.jpg"', '', Buffer.concat([image, Buffer.from(`\r\n--${boundary}x`), image])),
    ],
    ['an epilogue', Buffer.concat([filePart('form-data; name="file"; filename="a.jpg"'), Buffer.from('\r\nmore')])],
  ];
  for (const [what, body] of refused) {
    it(`leaves ${what} to formidable`, () => {
      expect(simpleFormUpload(body, type)).to.equal(undefined);
    });
  }

  it('leaves a body whose boundary is not the declared one to formidable', () => {
    const body = filePart('form-data; name="file"; filename="a.jpg"');
    expect(simpleFormUpload(body, 'multipart/form-data; boundary=other')).to.equal(undefined);
    expect(simpleFormUpload(body, 'multipart/form-data')).to.equal(undefined);
  });
});
