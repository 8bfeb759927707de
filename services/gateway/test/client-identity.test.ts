import { expect } from 'chai';
import { addressKey } from '../src/http/client-identity.js';

describe('addressKey: the unit of a per-address limit', () => {
  it('keeps an IPv4 address, also when a dual-stack socket writes it IPv4-mapped', () => {
    expect(addressKey('203.0.113.7')).to.equal('203.0.113.7');
    expect(addressKey('::ffff:203.0.113.7')).to.equal('203.0.113.7');
  });

  it('counts an IPv6 client by its /64, however the address is written', () => {
    const one = ['2001:db8:aa:bb::1', '2001:0db8:00aa:00bb:ffff:ffff:ffff:fffe', '2001:db8:aa:bb:1:2:3:4'];
    expect(new Set(one.map(addressKey))).to.deep.equal(new Set(['2001:db8:aa:bb::/64']));
    expect(addressKey('2001:db8:aa:bc::1')).to.not.equal(addressKey('2001:db8:aa:bb::1'));
    expect(addressKey('2001:db8::1')).to.equal('2001:db8:0:0::/64');
  });
});
