// The switch's MAC table: bounded, full tables forget aged entries first, and a full table of
// live entries floods unknown sources instead of growing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Delivery, MAX_MAC_ENTRIES, NetFrame, NetSwitch, type FrameSource } from '../../src/devices/net/index.js';

class Port implements FrameSource {
  got = 0;
  constructor(readonly name: string) {}
  attach(): void {}
  deliver(): Delivery {
    this.got++;
    return Delivery.Sent;
  }
}

function frame(dst: number, src: number): NetFrame {
  const b = new Uint8Array(60);
  for (let i = 0; i < 6; i++) {
    b[5 - i] = Math.floor(dst / 256 ** i) % 256;
    b[11 - i] = Math.floor(src / 256 ** i) % 256;
  }
  return new NetFrame().setSingle(b);
}

test('switch MAC table: bounded at MAX_MAC_ENTRIES; a full table forgets aged-out entries to learn new ones', () => {
  let now = 0;
  const sw = new NetSwitch({ ageingMs: 1000, now: () => now });
  const a = new Port('a');
  const b = new Port('b');
  sw.addPort(a);
  sw.addPort(b);
  for (let i = 0; i < MAX_MAC_ENTRIES + 10; i++) sw.transmit(a, 0, frame(0xffffffffffff, 0x020000000000 + i));
  assert.equal(sw.macCount, MAX_MAC_ENTRIES, 'the table stops growing when full of live entries');
  assert.equal(b.got, MAX_MAC_ENTRIES + 10, 'broadcasts flood');
  now += 2000;
  sw.transmit(b, 0, frame(0xffffffffffff, 0x04000000000b));
  assert.equal(sw.macCount, 1, 'aged-out entries were swept to learn the new source');
  sw.transmit(a, 0, frame(0x04000000000b, 0x020000000001));
  assert.equal(sw.forwarded, 1, 'the new entry is used');
  assert.equal(b.got, MAX_MAC_ENTRIES + 11);
});
