// The net device's migration state: what the driver set and the counters move to the destination;
// a state that does not fit (other shape, bad fields, not JSON, other version) is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VhostUserNetBackend, formatMac } from '../../src/devices/net/index.js';
import { silentLogger } from '../../src/log.js';

test('net saveState/loadState: MAC, filter, MTU, pairs in use and counters carry over', () => {
  const a = new VhostUserNetBackend({ queuePairs: 2, logger: silentLogger });
  a.setMac(Uint8Array.of(2, 0, 0, 0, 0, 0x42));
  a.filter.promisc = false;
  a.filter.allmulti = true;
  a.filter.unicast.add('02:00:00:00:00:99');
  a.filter.multicast.add('33:33:00:00:00:01');
  a.setMtu(1400);
  a.setActivePairs(2);
  a.txCounters[1]!.packets = 7;
  a.txCounters[1]!.bytes = 700;
  a.rxCounters[0]!.drops = 3;
  a.drops.add('rx-no-buffer');
  const b = new VhostUserNetBackend({ queuePairs: 2, logger: silentLogger });
  b.loadState(a.saveState());
  assert.equal(formatMac(b.mac), '02:00:00:00:00:42');
  assert.equal(b.filter.promisc, false);
  assert.equal(b.filter.allmulti, true);
  assert.deepEqual([...b.filter.unicast], ['02:00:00:00:00:99']);
  assert.deepEqual([...b.filter.multicast], ['33:33:00:00:00:01']);
  assert.equal(b.mtu, 1400);
  assert.equal(b.pairsInUse, 2);
  assert.equal(b.txCounters[1]!.packets, 7);
  assert.equal(b.txCounters[1]!.bytes, 700);
  assert.equal(b.rxCounters[0]!.drops, 3);
  assert.equal(b.drops.byReason['rx-no-buffer'], 1);
  assert.deepEqual(b.saveState(), a.saveState(), 'the destination saves the same state again');
});

test('net loadState refuses a state that does not fit', () => {
  const a = new VhostUserNetBackend({ queuePairs: 2 });
  const good = JSON.parse(new TextDecoder().decode(a.saveState())) as Record<string, unknown>;
  const enc = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o));
  const b = new VhostUserNetBackend({ queuePairs: 2 });
  assert.throws(() => new VhostUserNetBackend({ queuePairs: 1 }).loadState(a.saveState()), /queue pairs/);
  assert.throws(() => b.loadState(Uint8Array.of(0xff, 0xfe)), /not JSON/);
  for (const [patch, re] of [
    [{ version: 2 }, /version/], [{ mac: 'nope' }, /MAC/], [{ mtu: 20 }, /MTU/], [{ activePairs: 3 }, /pairs in use/],
    [{ filter: { promisc: 1 } }, /filter/], [{ rx: [[1, 2]] }, /counters/], [{ drops: { x: -1 } }, /drop/],
  ] as [Record<string, unknown>, RegExp][]) {
    assert.throws(() => b.loadState(enc({ ...good, ...patch })), re, JSON.stringify(patch));
  }
});
