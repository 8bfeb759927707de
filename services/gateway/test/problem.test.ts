import { expect } from 'chai';
import { ProblemError } from '@conveyor/shared/problem';
import { toProblem } from '../src/http/problem.middleware.js';

describe('mapping library errors to problem details', () => {
  it('keeps problems as they are', () => {
    const p = new ProblemError('unsupported-media-type', 'no');
    expect(toProblem(p)).to.equal(p);
  });
  it('maps formidable limit errors (httpCode, no status) to 413 instead of a 500', () => {
    const formidable = Object.assign(new Error('options.maxTotalFileSize (3145728 bytes) exceeded'), {
      httpCode: 413,
      code: 1009,
    });
    expect(toProblem(formidable).status).to.equal(413);
  });
  it('maps co-body errors by status', () => {
    expect(toProblem(Object.assign(new Error('Unexpected token } in JSON'), { status: 400 })).slug).to.equal('invalid-request');
    expect(toProblem(Object.assign(new Error('request entity too large'), { status: 413 })).slug).to.equal('payload-too-large');
    expect(toProblem(Object.assign(new Error('unsupported charset'), { status: 415 })).slug).to.equal('unsupported-media-type');
  });
  it('maps an unreachable Redis to 503 with Retry-After', () => {
    const p = toProblem(new Error("Stream isn't writeable and enableOfflineQueue options is false"));
    expect(p.status).to.equal(503);
    expect(p.extra).to.include({ retryAfterSeconds: 2 });
  });
  it('turns anything else into a 500 that reveals nothing', () => {
    const p = toProblem(new Error('secret database password in a stack'));
    expect(p.status).to.equal(500);
    expect(p.detail).to.equal('Internal error');
  });
});
