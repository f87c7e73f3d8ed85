// Postcopy (PAGEFAULT) against the real daemon, our Frontend playing the destination QEMU:
// POSTCOPY_ADVISE hands over a userfaultfd, POSTCOPY_LISTEN, then SET_MEM_TABLE is answered with
// the daemon's own mapping addresses (not the front-end's), and after the front-end's empty-table
// acknowledgement exactly those mappings are registered for missing-page faults (the kernel's
// "um" VmFlag in /proc/self/smaps: the daemon runs in this process). POSTCOPY_END unregisters.
// Out-of-order messages are refused with a logged error and the connection serves on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';
import { Frontend, VhostUserRequestFailedError } from '../../src/vhost-user/frontend.js';
import { negotiate } from '../../src/vhost-user/negotiate.js';
import { FrontendMemory } from '../../src/driver/frontend-driver.js';
import { VhostUserDaemon } from '../../src/backend/index.js';
import { VhostUserRngBackend } from '../../src/devices/rng/index.js';
import { ProtocolFeature, protocolFeatureMask } from '../../src/vhost-user/constants.js';
import { CapturingLogger } from './fixtures/proto-device.js';

const MEM = 1 << 20;

/** VmFlags of the mapping of this process that starts at `address`, or null when none does. */
function vmFlags(address: bigint): string[] | null {
  const lines = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  const start = address.toString(16);
  let inside = false;
  for (const l of lines) {
    const m = /^([0-9a-f]+)-[0-9a-f]+ /.exec(l);
    if (m !== null) inside = m[1] === start;
    else if (inside && l.startsWith('VmFlags:')) return l.slice(8).trim().split(/\s+/);
  }
  return null;
}

test('postcopy: advise, listen, the memory table answered with the daemon\'s addresses, registration on the ack, end', async (t) => {
  const before = sys.openFdCount();
  const dir = mkdtempSync(join(tmpdir(), 'vu-postcopy-'));
  const sock = join(dir, 'd.sock');
  const logger = new CapturingLogger();
  const daemon = new VhostUserDaemon('postcopy', new VhostUserRngBackend({ logger }), { logger });
  daemon.serve(sock);
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  const mem = new FrontendMemory(MEM);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await negotiate(fe, { wantProtocolFeatures: protocolFeatureMask(ProtocolFeature.PAGEFAULT) | protocolFeatureMask(ProtocolFeature.REPLY_ACK) });

  // Out of order: LISTEN and END before ADVISE.
  await assert.rejects(fe.postcopyListen(), VhostUserRequestFailedError);
  await assert.rejects(fe.postcopyEnd(), VhostUserRequestFailedError);
  assert.match(logger.lines.join(' | '), /VHOST_USER_POSTCOPY_LISTEN failed \[invalid-argument\]: POSTCOPY_LISTEN without a preceding POSTCOPY_ADVISE/);
  assert.match(logger.lines.join(' | '), /VHOST_USER_POSTCOPY_END failed \[invalid-argument\]: POSTCOPY_END without POSTCOPY_LISTEN/);

  const ufd = await fe.postcopyAdvise();
  assert.equal(readlinkSync(`/proc/self/fd/${ufd}`), 'anon_inode:[userfaultfd]');
  await fe.postcopyListen();
  const [base] = await fe.setMemTablePostcopy(mem.regions());
  assert.ok(base !== undefined && base !== mem.uva(0), 'the reply carries the back-end\'s own address');
  // Requests are served in order: once this round trip is answered, the ack was processed.
  await fe.getFeatures();
  assert.ok(vmFlags(base)?.includes('um'), `the daemon's mapping at 0x${base.toString(16)} is registered for missing faults: ${String(vmFlags(base))}`);
  assert.equal(vmFlags(mem.uva(0) as bigint)?.includes('um') ?? false, false, 'the front-end\'s own mapping is not');
  await fe.postcopyEnd();
  await fe.getFeatures();
  assert.equal(vmFlags(base)?.includes('um') ?? false, false, 'POSTCOPY_END unregistered the mapping');
  await assert.rejects(fe.postcopyEnd(), VhostUserRequestFailedError, 'a second END is refused');

  fe.close();
  await fe.closed();
  sys.close(ufd);
  await daemon.stop();
  mem.close();
  assert.equal(sys.openFdCount(), before, 'fd leak (the userfaultfd is closed at POSTCOPY_END)');
});

test('postcopy: an acknowledgement without a pending table is refused with a clear error', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vu-postcopy-'));
  const sock = join(dir, 'd.sock');
  const logger = new CapturingLogger();
  const daemon = new VhostUserDaemon('postcopy', new VhostUserRngBackend({ logger }), { logger });
  daemon.serve(sock);
  t.after(async () => { await daemon.stop(); rmSync(dir, { recursive: true, force: true }); });
  const want = { wantProtocolFeatures: protocolFeatureMask(ProtocolFeature.PAGEFAULT) | protocolFeatureMask(ProtocolFeature.REPLY_ACK) };
  const fe = await Frontend.connect(sock, { timeoutMs: 5000 });
  await negotiate(fe, want);
  const ufd = await fe.postcopyAdvise();
  sys.close(ufd);
  await fe.postcopyListen();
  // An empty table while listening is an acknowledgement; there is nothing to acknowledge. This
  // front-end asked for a REPLY_ACK, so the refusal comes back through it.
  await assert.rejects(fe.setMemTable([]), VhostUserRequestFailedError);
  assert.match(logger.lines.join(' | '), /postcopy memory acknowledgement without a memory table to acknowledge/);
  assert.ok((await fe.getFeatures()) > 0n, 'the connection serves on');
  fe.close();
});
