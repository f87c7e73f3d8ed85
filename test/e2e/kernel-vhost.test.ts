/**
 * End to end: the in-kernel vhost dataplanes driven from TypeScript. The host has no /dev/vhost-*,
 * so the test guest (Debian 6.1 kernel) loads tun, vhost_net and vhost_vsock, mounts the host's
 * root read-only over 9p, and runs this checkout's compiled scripts with the host's node:
 *   - test/guest/kernel-vhost-net: VhostKernNet + TAP, TX and RX frames, virtio-net header, dirty log;
 *   - test/guest/kernel-vhost-vsock: VhostKernVsock, CID 3 running, AF_VSOCK connect arrives as
 *     OP_REQUEST, our OP_RESPONSE completes it, bytes both ways;
 *   - examples/any-dataplane vhost-net vhost-vsock: the dataplane-neutral setup over both.
 * All three run in one boot (node starts in ~5-10 s under TCG).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { GUEST_TOOLS, requireTools } from '../helpers/tools.js';
import { expectCleanExit, expectPass, hostNodeScripts, hostRootShareArgs, startQemu } from '../helpers/qemu.js';

const dist = (rel: string): string => fileURLToPath(new URL(rel, import.meta.url));

test('guest kernel vhost-net and vhost-vsock driven by VhostKernNet / VhostKernVsock', async (t) => {
  if (!requireTools(t, ...GUEST_TOOLS)) return;
  const started = performance.now();
  const vm = await startQemu({
    test: 'host-node',
    memMb: 512,
    params: {
      script: hostNodeScripts([
        [dist('../guest/kernel-vhost-net.js')],
        [dist('../guest/kernel-vhost-vsock.js')],
        [dist('../../examples/any-dataplane.js'), 'vhost-net', 'vhost-vsock'],
      ]),
    },
    args: hostRootShareArgs(),
    t,
  });
  const r = await expectPass(vm, 240_000);
  const d = r.details;
  assert.equal(d['kernel-vhost-net.net'], 'ok', r.line);
  assert.equal(d['kernel-vhost-net.tx_base'], '1', 'TX ring consumed one chain');
  assert.ok(Number(d['kernel-vhost-net.dirty_pages']) >= 2, `dirty pages ${d['kernel-vhost-net.dirty_pages']}`);
  assert.equal(d['kernel-vhost-net.bad_input'], 'ok', r.line);
  assert.equal(d['kernel-vhost-vsock.vsock'], 'ok', r.line);
  assert.match(d['kernel-vhost-vsock.request_src'] ?? '', /^2:\d+$/, 'OP_REQUEST comes from the host CID 2');
  assert.equal(d['any-dataplane.rc'], '0', r.line);
  assert.match(vm.output, /vhost-net: queues attached to tap\d+\n/);
  assert.match(vm.output, /vhost-vsock: running as CID 3\n/);
  await expectCleanExit(vm);
  t.diagnostic(`guest result after ${Math.round(r.elapsedMs)} ms; whole test ${Math.round(performance.now() - started)} ms; ${r.line.trim()}`);
});
