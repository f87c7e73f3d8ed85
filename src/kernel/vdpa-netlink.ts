/**
 * The vdpa management API over generic netlink (linux/vdpa.h), as iproute2's `vdpa` tool uses it:
 * list management devices (e.g. "vduse", "vdpasim_net") and vdpa devices, add a device on a
 * management device, delete it. The family id of "vdpa" is resolved through the generic netlink
 * controller (CTRL_CMD_GETFAMILY). Messages are encoded here; the addon only owns the socket.
 *
 * @module
 */
import { constants as osConstants } from 'node:os';
import * as sys from '../sys/index.js';

const { EBADF, EBADMSG, ENODEV, ENOENT, ETIMEDOUT } = osConstants.errno;

// linux/netlink.h
const NLMSG_HDRLEN = 16;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_DUMP = 0x300;
/** In an NLMSG_ERROR: the original request was cut to its header. */
const NLM_F_CAPPED = 0x100;
/** In an NLMSG_ERROR: extended-ack attributes follow. */
const NLM_F_ACK_TLVS = 0x200;
const NLMSGERR_ATTR_MSG = 1;
const NLA_HDRLEN = 4;
const NLA_TYPE_MASK = 0x3fff;
// linux/genetlink.h
const GENL_HDRLEN = 4;
/** The generic netlink controller's fixed family id. */
export const GENL_ID_CTRL = 0x10;
const CTRL_CMD_GETFAMILY = 3;
const CTRL_ATTR_FAMILY_ID = 1;
const CTRL_ATTR_FAMILY_NAME = 2;

/** Generic netlink family name of the vdpa management API. */
export const VDPA_GENL_NAME = 'vdpa';
/** Its version. */
export const VDPA_GENL_VERSION = 1;
/** enum vdpa_command. */
export const VDPA_CMD_MGMTDEV_GET = 2;
/** Adds a vdpa device on a management device. */
export const VDPA_CMD_DEV_NEW = 3;
/** Deletes a vdpa device. */
export const VDPA_CMD_DEV_DEL = 4;
/** Gets (or dumps) vdpa devices. */
export const VDPA_CMD_DEV_GET = 5;
/** enum vdpa_attr (those used here). */
export const VDPA_ATTR_MGMTDEV_BUS_NAME = 1;
/** Management device name (string). */
export const VDPA_ATTR_MGMTDEV_DEV_NAME = 2;
/** Device classes a management device can create (u64 bit mask of virtio ids). */
export const VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES = 3;
/** vdpa device name (string). */
export const VDPA_ATTR_DEV_NAME = 4;
/** Virtio device id (u32). */
export const VDPA_ATTR_DEV_ID = 5;
/** Vendor id (u32). */
export const VDPA_ATTR_DEV_VENDOR_ID = 6;
/** Virtqueues of the device (u32). */
export const VDPA_ATTR_DEV_MAX_VQS = 7;
/** Largest virtqueue size (u16). */
export const VDPA_ATTR_DEV_MAX_VQ_SIZE = 8;
/** Smallest virtqueue size (u16). */
export const VDPA_ATTR_DEV_MIN_VQ_SIZE = 9;
/** Virtqueues a management device supports (u32). */
export const VDPA_ATTR_DEV_MGMTDEV_MAX_VQS = 18;

const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [VDPA_CMD_MGMTDEV_GET]: 'VDPA_CMD_MGMTDEV_GET', [VDPA_CMD_DEV_NEW]: 'VDPA_CMD_DEV_NEW',
  [VDPA_CMD_DEV_DEL]: 'VDPA_CMD_DEV_DEL', [VDPA_CMD_DEV_GET]: 'VDPA_CMD_DEV_GET',
};

/** One netlink attribute to send: a string (NUL-terminated), a u32/u16 number, a u64 bigint or raw bytes. */
export type NlAttr = readonly [type: number, value: string | Uint8Array | { u16: number } | { u32: number } | { u64: bigint }];

function attrPayload(value: NlAttr[1]): Uint8Array {
  if (typeof value === 'string') return Buffer.concat([Buffer.from(value, 'utf8'), Buffer.alloc(1)]);
  if (value instanceof Uint8Array) return value;
  const b = new Uint8Array('u64' in value ? 8 : 'u32' in value ? 4 : 2);
  const dv = new DataView(b.buffer);
  if ('u64' in value) dv.setBigUint64(0, value.u64, true);
  else if ('u32' in value) dv.setUint32(0, value.u32, true);
  else dv.setUint16(0, value.u16, true);
  return b;
}

const align4 = (n: number): number => (n + 3) & ~3;

/** A generic netlink request: nlmsghdr + genlmsghdr + attributes, each padded to 4 bytes. */
export function encodeGenlRequest(family: number, flags: number, seq: number, cmd: number, version: number, attrs: readonly NlAttr[]): Uint8Array {
  const payloads = attrs.map(([type, value]) => [type, attrPayload(value)] as const);
  const len = NLMSG_HDRLEN + GENL_HDRLEN + payloads.reduce((s, [, p]) => s + align4(NLA_HDRLEN + p.length), 0);
  const out = new Uint8Array(len);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, len, true);
  dv.setUint16(4, family, true);
  dv.setUint16(6, flags, true);
  dv.setUint32(8, seq, true);
  dv.setUint32(12, 0, true);
  out[NLMSG_HDRLEN] = cmd;
  out[NLMSG_HDRLEN + 1] = version;
  let o = NLMSG_HDRLEN + GENL_HDRLEN;
  for (const [type, p] of payloads) {
    if (NLA_HDRLEN + p.length > 0xffff) throw new RangeError(`netlink attribute ${type} of ${p.length} bytes`);
    dv.setUint16(o, NLA_HDRLEN + p.length, true);
    dv.setUint16(o + 2, type, true);
    out.set(p, o + NLA_HDRLEN);
    o += align4(NLA_HDRLEN + p.length);
  }
  return out;
}

/** Attributes of a message body: type -> payload (later duplicates win). Malformed tails are refused. */
export function parseAttrs(b: Uint8Array): Map<number, Uint8Array> {
  const out = new Map<number, Uint8Array>();
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 0;
  while (o + NLA_HDRLEN <= b.length) {
    const len = dv.getUint16(o, true);
    if (len < NLA_HDRLEN || o + len > b.length) throw new RangeError(`netlink attribute at ${o} claims ${len} bytes of ${b.length - o}`);
    out.set(dv.getUint16(o + 2, true) & NLA_TYPE_MASK, b.subarray(o + NLA_HDRLEN, o + len));
    o += align4(len);
  }
  return out;
}

function attrString(a: Map<number, Uint8Array>, type: number): string | undefined {
  const v = a.get(type);
  if (v === undefined) return undefined;
  const nul = v.indexOf(0);
  return Buffer.from(v.subarray(0, nul < 0 ? v.length : nul)).toString('utf8');
}
function attrUint(a: Map<number, Uint8Array>, type: number): number | undefined {
  const v = a.get(type);
  if (v === undefined) return undefined;
  const dv = new DataView(v.buffer, v.byteOffset, v.byteLength);
  if (v.length >= 4) return dv.getUint32(0, true);
  if (v.length >= 2) return dv.getUint16(0, true);
  return v.length === 1 ? dv.getUint8(0) : undefined;
}
function attrU64(a: Map<number, Uint8Array>, type: number): bigint | undefined {
  const v = a.get(type);
  if (v === undefined || v.length < 8) return undefined;
  return new DataView(v.buffer, v.byteOffset, 8).getBigUint64(0, true);
}

/** A management device (VDPA_CMD_MGMTDEV_GET). */
export interface VdpaMgmtDev {
  /** Bus name (e.g. "pci"), absent for virtual management devices such as "vduse". */
  readonly busName?: string;
  /** Device name, e.g. "vduse". */
  readonly devName: string;
  /** Bit mask of the virtio device ids it can create. */
  readonly supportedClasses: bigint;
  /** Most virtqueues a device may have, when reported. */
  readonly maxVqs?: number;
}

/** A vdpa device (VDPA_CMD_DEV_GET). */
export interface VdpaDevInfo {
  /** Device name. */
  readonly name: string;
  /** Virtio device id (2 = blk). */
  readonly deviceId: number;
  /** Vendor id. */
  readonly vendorId: number;
  /** Number of virtqueues. */
  readonly maxVqs: number;
  /** Largest virtqueue size. */
  readonly maxVqSize: number;
  /** Management device that created it. */
  readonly mgmtdev: string;
}

const RECV_BUF_SIZE = 64 * 1024;
const REPLY_TIMEOUT_MS = 30_000;

/**
 * A generic netlink socket speaking one request at a time. Errors are {@link sys.SysError}s with
 * the errno name as `code` and the command plus the kernel's extended-ack text in the message.
 */
export class GenlSocket {
  private fd: number;
  private seq = 1;
  private readonly buf = new Uint8Array(RECV_BUF_SIZE);
  private chain: Promise<unknown> = Promise.resolve();

  /** Opens a NETLINK_GENERIC socket. */
  constructor() {
    this.fd = sys.netlinkOpen(sys.NETLINK_GENERIC);
  }

  /**
   * Sends a request and collects the reply bodies (attribute bytes after the genl header).
   * `dump` asks for every object (NLM_F_DUMP); otherwise the request is acknowledged.
   */
  request(family: number, cmd: number, version: number, attrs: readonly NlAttr[], dump: boolean, what: string): Promise<Uint8Array[]> {
    const run = (): Promise<Uint8Array[]> => this.transact(family, cmd, version, attrs, dump, what);
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async transact(family: number, cmd: number, version: number, attrs: readonly NlAttr[], dump: boolean, what: string): Promise<Uint8Array[]> {
    if (this.fd < 0) throw new sys.SysError(EBADF, 'netlink', `${what}: socket is closed`);
    const seq = this.seq++;
    const msg = encodeGenlRequest(family, NLM_F_REQUEST | NLM_F_ACK | (dump ? NLM_F_DUMP : 0), seq, cmd, version, attrs);
    await sys.netlinkSendAsync(this.fd, msg);
    const bodies: Uint8Array[] = [];
    for (;;) {
      const n = await this.recv(what);
      const done = this.parseDatagram(this.buf.subarray(0, n), seq, bodies, what);
      if (done) return bodies;
    }
  }

  /** Returns true once the final message of request `seq` was seen. */
  private parseDatagram(d: Uint8Array, seq: number, bodies: Uint8Array[], what: string): boolean {
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    let o = 0;
    let done = false;
    while (o + NLMSG_HDRLEN <= d.length) {
      const len = dv.getUint32(o, true);
      if (len < NLMSG_HDRLEN || o + len > d.length) throw new sys.SysError(EBADMSG, 'netlink', `${what}: reply message of ${len} bytes at ${o} in ${d.length}`);
      const type = dv.getUint16(o + 4, true);
      const flags = dv.getUint16(o + 6, true);
      const mseq = dv.getUint32(o + 8, true);
      const body = d.subarray(o + NLMSG_HDRLEN, o + len);
      o += align4(len);
      if (mseq !== seq) continue; // a late reply to an earlier request
      if (type === NLMSG_ERROR) {
        const err = new DataView(body.buffer, body.byteOffset, body.byteLength).getInt32(0, true);
        if (err === 0) { done = true; continue; }
        throw new sys.SysError(-err, 'netlink', `${what}${extackMessage(body, flags)}`);
      }
      if (type === NLMSG_DONE) {
        const err = body.length >= 4 ? new DataView(body.buffer, body.byteOffset, 4).getInt32(0, true) : 0;
        if (err < 0) throw new sys.SysError(-err, 'netlink', `${what}${extackMessage(body, flags)}`);
        done = true;
        continue;
      }
      // A non-dump reply is followed by its ACK, a dump by NLMSG_DONE.
      if (body.length >= GENL_HDRLEN) bodies.push(body.slice(GENL_HDRLEN));
    }
    return done;
  }

  private async recv(what: string): Promise<number> {
    const n = sys.netlinkRecv(this.fd, this.buf);
    if (n !== null) return n;
    await new Promise<void>((resolve, reject) => {
      const w = sys.watchFd(this.fd, sys.POLLIN, () => { clearTimeout(timer); w.close(); resolve(); });
      const timer = setTimeout(() => { w.close(); reject(new sys.SysError(ETIMEDOUT, 'netlink', `${what}: no reply within ${REPLY_TIMEOUT_MS} ms`)); }, REPLY_TIMEOUT_MS);
    });
    return this.recv(what);
  }

  /** Resolves a generic netlink family name to its id (ENOENT when no such family is registered). */
  async familyId(name: string): Promise<number> {
    const bodies = await this.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, [[CTRL_ATTR_FAMILY_NAME, name]], false, `CTRL_CMD_GETFAMILY ${name}`);
    for (const b of bodies) {
      const id = attrUint(parseAttrs(b), CTRL_ATTR_FAMILY_ID);
      if (id !== undefined) return id;
    }
    throw new sys.SysError(ENOENT, 'netlink', `CTRL_CMD_GETFAMILY ${name}: no family id in the reply`);
  }

  /** Closes the socket (idempotent). */
  close(): void {
    if (this.fd < 0) return;
    sys.close(this.fd);
    this.fd = -1;
  }
}

/** Text of the extended ack (NLMSGERR_ATTR_MSG) in an NLMSG_ERROR body, as ": text", or "". */
function extackMessage(body: Uint8Array, flags: number): string {
  if ((flags & NLM_F_ACK_TLVS) === 0 || body.length < 4 + NLMSG_HDRLEN) return '';
  const dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const origLen = (flags & NLM_F_CAPPED) !== 0 ? NLMSG_HDRLEN : dv.getUint32(4, true);
  const at = 4 + align4(origLen);
  if (at > body.length) return '';
  try {
    const text = attrString(parseAttrs(body.subarray(at)), NLMSGERR_ATTR_MSG);
    return text ? `: ${text}` : '';
  } catch {
    return '';
  }
}

/**
 * The vdpa management API. {@link open} resolves the "vdpa" family (ENOENT when the vdpa module
 * is not loaded). Adding a device needs CAP_NET_ADMIN.
 */
export class VdpaNetlink {
  /** The generic netlink id the kernel gave the vdpa family. */
  readonly familyId: number;

  private constructor(private readonly sock: GenlSocket, familyId: number) {
    this.familyId = familyId;
  }

  /** Opens a netlink socket and resolves the vdpa family. */
  static async open(): Promise<VdpaNetlink> {
    const sock = new GenlSocket();
    try {
      return new VdpaNetlink(sock, await sock.familyId(VDPA_GENL_NAME));
    } catch (e) {
      sock.close();
      if (e instanceof sys.SysError && e.code === 'ENOENT') {
        throw new sys.SysError(e.errno, 'netlink', `generic netlink family '${VDPA_GENL_NAME}' is not registered (is the vdpa module loaded?)`);
      }
      throw e;
    }
  }

  private cmd(cmd: number, attrs: readonly NlAttr[], dump: boolean, detail: string): Promise<Uint8Array[]> {
    return this.sock.request(this.familyId, cmd, VDPA_GENL_VERSION, attrs, dump, `${COMMAND_NAMES[cmd] ?? cmd}${detail}`);
  }

  /**
   * VDPA_CMD_DEV_NEW: creates vdpa device `name` on management device `mgmtdev` ("vduse": the
   * VDUSE device of that name must exist). Sent from the threadpool, so a VDUSE daemon on this
   * thread can answer the driver probe the kernel runs meanwhile.
   */
  async addDevice(name: string, mgmtdev = 'vduse', mgmtBus?: string): Promise<void> {
    const attrs: NlAttr[] = [];
    if (mgmtBus !== undefined) attrs.push([VDPA_ATTR_MGMTDEV_BUS_NAME, mgmtBus]);
    attrs.push([VDPA_ATTR_MGMTDEV_DEV_NAME, mgmtdev], [VDPA_ATTR_DEV_NAME, name]);
    await this.cmd(VDPA_CMD_DEV_NEW, attrs, false, ` ${name} on ${mgmtdev}`);
  }

  /** VDPA_CMD_DEV_DEL: removes vdpa device `name` (its driver is unbound first). */
  async deleteDevice(name: string): Promise<void> {
    await this.cmd(VDPA_CMD_DEV_DEL, [[VDPA_ATTR_DEV_NAME, name]], false, ` ${name}`);
  }

  /** VDPA_CMD_MGMTDEV_GET dump: every management device. */
  async managementDevices(): Promise<VdpaMgmtDev[]> {
    const bodies = await this.cmd(VDPA_CMD_MGMTDEV_GET, [], true, '');
    return bodies.map((b) => {
      const a = parseAttrs(b);
      const busName = attrString(a, VDPA_ATTR_MGMTDEV_BUS_NAME);
      const maxVqs = attrUint(a, VDPA_ATTR_DEV_MGMTDEV_MAX_VQS);
      return {
        ...(busName !== undefined ? { busName } : {}),
        devName: attrString(a, VDPA_ATTR_MGMTDEV_DEV_NAME) ?? '',
        supportedClasses: attrU64(a, VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES) ?? 0n,
        ...(maxVqs !== undefined ? { maxVqs } : {}),
      };
    });
  }

  /** VDPA_CMD_DEV_GET dump: every vdpa device. */
  async devices(): Promise<VdpaDevInfo[]> {
    return (await this.cmd(VDPA_CMD_DEV_GET, [], true, '')).map(decodeDev);
  }

  /** VDPA_CMD_DEV_GET of one device (ENODEV when there is none of that name). */
  async device(name: string): Promise<VdpaDevInfo> {
    const bodies = await this.cmd(VDPA_CMD_DEV_GET, [[VDPA_ATTR_DEV_NAME, name]], false, ` ${name}`);
    const b = bodies[0];
    if (b === undefined) throw new sys.SysError(ENODEV, 'netlink', `VDPA_CMD_DEV_GET ${name}: empty reply`);
    return decodeDev(b);
  }

  /** Closes the socket. */
  close(): void {
    this.sock.close();
  }
}

function decodeDev(b: Uint8Array): VdpaDevInfo {
  const a = parseAttrs(b);
  return {
    name: attrString(a, VDPA_ATTR_DEV_NAME) ?? '',
    deviceId: attrUint(a, VDPA_ATTR_DEV_ID) ?? 0,
    vendorId: attrUint(a, VDPA_ATTR_DEV_VENDOR_ID) ?? 0,
    maxVqs: attrUint(a, VDPA_ATTR_DEV_MAX_VQS) ?? 0,
    maxVqSize: attrUint(a, VDPA_ATTR_DEV_MAX_VQ_SIZE) ?? 0,
    mgmtdev: attrString(a, VDPA_ATTR_MGMTDEV_DEV_NAME) ?? '',
  };
}
