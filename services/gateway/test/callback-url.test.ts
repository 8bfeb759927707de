import { expect } from 'chai';
import { ProblemError } from '@conveyor/shared/problem';
import { parseCallbackUrl } from '../src/callbacks/callback-url.js';
import { isLiteralRefused } from '../src/http/outbound.js';
import { sweepDelay } from '../src/callbacks/callback-dispatcher.js';

describe('the Callback-Url at the request', () => {
  const problem = (values: string[], allow: string[] = []) => {
    try {
      parseCallbackUrl(values, allow);
    } catch (error) {
      return error instanceof ProblemError ? error : undefined;
    }
    return undefined;
  };

  it('is absent when the header is', () => {
    expect(parseCallbackUrl(undefined, [])).to.equal(undefined);
    expect(parseCallbackUrl([''], [])).to.equal(undefined);
  });

  it('refuses two header lines with a 400', () => {
    expect(problem(['https://a.example/x', 'https://b.example/y'])).to.include({ slug: 'invalid-request', status: 400 });
  });

  it('accepts a public literal and any name (names are checked at delivery)', () => {
    expect(parseCallbackUrl(['https://93.184.215.14/hook'], [])?.href).to.equal('https://93.184.215.14/hook');
    expect(parseCallbackUrl(['https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook'], [])).to.be.instanceOf(URL);
    expect(parseCallbackUrl(['http://localhost:9/hook'], [])).to.be.instanceOf(URL);
  });

  for (const literal of [
    '127.0.0.1',
    '127.0.0.2',
    '10.0.0.1',
    '172.16.5.4',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.0.1',
    '0.0.0.0',
    '::1',
    '::',
    'fe80::1',
    'fd00::1',
    '::ffff:7f00:1',
    '::7f00:1',
  ]) {
    it(`refuses the literal ${literal} with a 422`, () => {
      expect(isLiteralRefused(literal, [])).to.equal(true);
      const host = literal.includes(':') ? `[${literal}]` : literal;
      expect(problem([`http://${host}/hook`])).to.include({ slug: 'url-not-allowed', status: 422 });
    });
  }

  it('lets URL_ALLOW_CIDRS through, as the delivery does', () => {
    expect(isLiteralRefused('127.0.0.1', ['127.0.0.1/32'])).to.equal(false);
    expect(isLiteralRefused('10.1.2.3', ['10.0.0.0/8'])).to.equal(false);
    expect(isLiteralRefused('10.1.2.3', ['::1/128'])).to.equal(true);
    expect(isLiteralRefused('127.0.0.2', ['127.0.0.2'])).to.equal(false);
  });
});

describe('a waiting delivery sleeps', () => {
  it('one sweep interval at first, then as long as it has waited, at most ten intervals', () => {
    expect(sweepDelay(0, 120)).to.equal(120_000);
    expect(sweepDelay(300_000, 120)).to.equal(300_000);
    expect(sweepDelay(24 * 3600_000, 120)).to.equal(1_200_000);
  });
});
