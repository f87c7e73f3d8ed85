/**
 * Example: using {@link Frontend} programmatically to ask a vhost-user back-end what it supports.
 *
 *     npx tsc -p tsconfig.json
 *     node dist/examples/probe-backend.js /path/to/backend.sock [blk|net|...]
 *
 * This is what the `vhost-user-probe` CLI does, minus option parsing. A real VMM would go on from
 * here with SET_MEM_TABLE and the SET_VRING_* requests (see test/interop/frontend-qsd.test.ts).
 * @module
 */
import { Frontend, ProtocolFeature, decodeProtocolFeatures, formatFeatures, hasProtocolFeature, negotiate } from 'vhost-user';

const [socketPath, deviceType] = process.argv.slice(2);
if (socketPath === undefined) {
  console.error('usage: node dist/examples/probe-backend.js SOCKET [DEVICE_TYPE]');
  process.exit(2);
}

// Front-end as client: the back-end listens (QSD, DPDK, virtiofsd and rust-vmm daemons all can).
const fe = await Frontend.connect(socketPath, { timeoutMs: 2000, connectTimeoutMs: 2000 });
try {
  // GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_FEATURES.
  const n = await negotiate(fe);
  const features = formatFeatures(n.offeredFeatures, deviceType);
  console.log(`features ${features.hex}:`);
  for (const name of features.names) console.log(`  ${name}`);
  if (n.protocolFeatures !== null) {
    console.log(`protocol features negotiated: ${decodeProtocolFeatures(n.protocolFeatures).join(', ')}`);
    if (n.queueNum !== null) console.log(`queues: ${n.queueNum}`);
    if (n.maxMemSlots !== null) console.log(`memory slots: ${n.maxMemSlots}`);
    // The config space layout is device-specific; for virtio-blk the first u64 is the capacity.
    if (hasProtocolFeature(n.protocolFeatures, ProtocolFeature.CONFIG) && deviceType === 'blk') {
      const cfg = await fe.getConfig(0, 8);
      const sectors = new DataView(cfg.buffer, cfg.byteOffset, 8).getBigUint64(0, true);
      console.log(`capacity: ${sectors} sectors (${sectors * 512n} bytes)`);
    }
  } else {
    console.log('no protocol features (legacy back-end)');
  }
} finally {
  fe.close();
}
