// vhost-user codec throughput: decoded messages per second (decodeHeader + decode*) for a realistic
// control-plane mix, and encoded messages per second, each with a ratio against a reference measured
// in the same run: JSON.parse of an equivalent JSON text of the same messages (u64 as strings).
// Messages sit in one shared receive buffer, as they do behind a connection's reused recv buffer.
// usage: node dist/bench/codec.js [seconds-per-case]
import {
  HEADER_SIZE,
  decodeFrontendReply,
  decodeFrontendRequest,
  decodeHeader,
  encodeFrontendReply,
  encodeFrontendRequest,
  type CodecContext,
  type EncodedMessage,
} from '../src/vhost-user/codec.js';
import { FrontendReq } from '../src/vhost-user/constants.js';
import type { FrontendRequest } from '../src/vhost-user/messages.js';

const seconds = Number(process.argv[2] ?? '1');
const ctx: CodecContext = { protocolFeatures: 0n };

const regions = Array.from({ length: 8 }, (_, i) => ({
  guestPhysAddr: BigInt(i) << 32n,
  memorySize: 0x4000_0000n,
  userAddr: 0x7f00_0000_0000n + (BigInt(i) << 32n),
  mmapOffset: 0n,
  fd: 20 + i,
}));

const requests: FrontendRequest[] = [
  { request: FrontendReq.SET_VRING_NUM, index: 0, num: 256 },
  { request: FrontendReq.SET_VRING_ADDR, index: 0, flags: 0, descUserAddr: 0x7f00_0000_0000n, usedUserAddr: 0x7f00_0000_2000n, availUserAddr: 0x7f00_0000_1000n, logGuestAddr: 0n },
  { request: FrontendReq.SET_VRING_BASE, index: 0, num: 0 },
  { request: FrontendReq.SET_VRING_KICK, index: 0, fd: 10 },
  { request: FrontendReq.SET_VRING_CALL, index: 0, fd: 11 },
  { request: FrontendReq.SET_VRING_ENABLE, index: 0, enable: true },
  { request: FrontendReq.SET_MEM_TABLE, regions },
];
const encoded: EncodedMessage[] = requests.map((m) => encodeFrontendRequest(m, ctx));
const reply = encodeFrontendReply(FrontendReq.GET_FEATURES, { request: FrontendReq.GET_FEATURES, value: 0x1_7000_0000n }, ctx);

// One backing buffer holds every message back to back.
const all = [...encoded.map((e) => e.bytes), reply.bytes];
const offsets: number[] = [];
const shared = new Uint8Array(all.reduce((n, b) => n + b.length, 0));
{
  let o = 0;
  for (const b of all) {
    offsets.push(o);
    shared.set(b, o);
    o += b.length;
  }
}
const fdLists = [...encoded.map((e) => e.fds), reply.fds];
const count = all.length;

// Reference: the same messages as JSON text (bigints as decimal strings), parsed per message.
const json = [
  ...requests.map((m) => JSON.stringify(m, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))),
  JSON.stringify({ request: FrontendReq.GET_FEATURES, value: '6174015488' }),
];

function run(name: string, body: () => number): number {
  for (let i = 0; i < 2000; i++) body(); // warm-up
  let n = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  let now = t0;
  while (now < end) {
    for (let i = 0; i < 200; i++) n += body();
    now = process.hrtime.bigint();
  }
  const rate = n / (Number(now - t0) / 1e9);
  console.log(`${name.padEnd(52)} ${(rate / 1e6).toFixed(2).padStart(7)} M msg/s`);
  return rate;
}

let sink = 0;

const decodeRate = run('codec decode (header + body, 8-message mix)', () => {
  for (let i = 0; i < count; i++) {
    const o = offsets[i] as number;
    const h = decodeHeader(shared, o, 'frontend');
    const p = shared.subarray(o + HEADER_SIZE, o + HEADER_SIZE + h.size);
    const m = i === count - 1 ? decodeFrontendReply(FrontendReq.GET_FEATURES, h, p, fdLists[i] as number[], ctx) : decodeFrontendRequest(h, p, fdLists[i] as number[], ctx);
    sink += m.request;
  }
  return count;
});

const jsonRate = run('reference: JSON.parse of the same 8 messages', () => {
  for (let i = 0; i < count; i++) {
    const m = JSON.parse(json[i] as string) as { request: number };
    sink += m.request;
  }
  return count;
});

const encodeRate = run('codec encode (7 requests of the mix)', () => {
  for (let i = 0; i < requests.length; i++) sink += encodeFrontendRequest(requests[i] as FrontendRequest, ctx).bytes.length;
  return requests.length;
});

const stringifyRate = run('reference: JSON.stringify of the same 7 requests', () => {
  for (let i = 0; i < requests.length; i++) sink += JSON.stringify(requests[i], (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)).length;
  return requests.length;
});

const setMemTable = encoded.length - 1;
const memRate = run('codec decode SET_MEM_TABLE (8 regions) only', () => {
  const o = offsets[setMemTable] as number;
  const h = decodeHeader(shared, o, 'frontend');
  sink += decodeFrontendRequest(h, shared.subarray(o + HEADER_SIZE, o + HEADER_SIZE + h.size), fdLists[setMemTable] as number[], ctx).request;
  return 1;
});

console.log(`decode / JSON.parse ratio: ${(decodeRate / jsonRate).toFixed(2)}x`);
console.log(`encode / JSON.stringify ratio: ${(encodeRate / stringifyRate).toFixed(2)}x`);
console.log(`SET_MEM_TABLE(8) decode: ${(1e9 / memRate).toFixed(0)} ns/msg`);
if (sink === 42) console.log('');
