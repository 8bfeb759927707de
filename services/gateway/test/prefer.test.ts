import { expect } from 'chai';
import { parsePrefer } from '../src/http/prefer.js';

describe('Prefer header (RFC 7240)', () => {
  it('waits the default time without a preference', () => {
    expect(parsePrefer('', 10, 30)).to.deep.equal({ respondAsync: false, waitSeconds: 10, applied: 'wait=10' });
  });
  it('honours respond-async, alone or with other preferences', () => {
    expect(parsePrefer('respond-async', 10, 30).respondAsync).to.equal(true);
    expect(parsePrefer('return=minimal, respond-async, wait=5', 10, 30).applied).to.equal('respond-async');
  });
  it('caps wait at the configured maximum and ignores nonsense', () => {
    expect(parsePrefer('wait=120', 10, 30).waitSeconds).to.equal(30);
    expect(parsePrefer('wait=2.5', 10, 30).waitSeconds).to.equal(2.5);
    expect(parsePrefer('wait=-1', 10, 30).waitSeconds).to.equal(10);
    expect(parsePrefer('wait=soon', 10, 30).waitSeconds).to.equal(10);
  });
});
