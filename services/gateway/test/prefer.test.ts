import { expect } from 'chai';
import { appliedWith, parsePrefer } from '../src/http/prefer.js';
import { capPriority } from '../src/http/priority.js';

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

describe('Prefer: priority', () => {
  it('reads low, normal and high, alone or beside other preferences', () => {
    expect(parsePrefer('priority=high', 10, 30).priority).to.equal('high');
    expect(parsePrefer('respond-async, priority=low', 10, 30).priority).to.equal('low');
    expect(parsePrefer('wait=5; priority=Normal', 10, 30).priority).to.equal('normal');
  });
  it('ignores a missing or unknown value, as RFC 7240 asks', () => {
    expect(parsePrefer('', 10, 30).priority).to.equal(undefined);
    expect(parsePrefer('priority=urgent', 10, 30).priority).to.equal(undefined);
    expect(parsePrefer('priority', 10, 30).priority).to.equal(undefined);
  });
  it('caps a priority at the maximum, never raises one', () => {
    expect(capPriority('high', 'normal')).to.equal('normal');
    expect(capPriority('high', 'low')).to.equal('low');
    expect(capPriority('normal', 'low')).to.equal('low');
    expect(capPriority('low', 'normal')).to.equal('low');
    expect(capPriority('high', 'high')).to.equal('high');
  });
  it('names the applied priority in Preference-Applied only when one was asked for', () => {
    expect(appliedWith(parsePrefer('respond-async, priority=high', 10, 30), 'normal')).to.equal('respond-async, priority=normal');
    expect(appliedWith(parsePrefer('priority=low', 10, 30), 'low')).to.equal('wait=10, priority=low');
    expect(appliedWith(parsePrefer('wait=3', 10, 30), 'normal')).to.equal('wait=3');
  });
});
