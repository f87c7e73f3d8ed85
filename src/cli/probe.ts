#!/usr/bin/env node
/**
 * `vhost-user-probe`: connects to a vhost-user back-end as a front-end, runs the standard
 * negotiation and prints what the back-end offers as JSON. It never sets up memory or rings, and
 * does not send SET_FEATURES, so probing leaves a back-end as a fresh connection would.
 *
 *     vhost-user-probe --socket-path PATH [--device-type blk|net|...] [--config-size N] [--timeout MS]
 *
 * Exit status: 0 on success, 1 when the back-end could not be probed (one line on stderr),
 * 2 for bad usage.
 * @module
 */
import { decodeBlkConfig } from '../devices/blk/config.js';
import { parseArgs } from 'node:util';
import * as sys from '../sys/index.js';
import { Frontend } from '../vhost-user/frontend.js';
import { DEFAULT_PROTOCOL_FEATURES, negotiate } from '../vhost-user/negotiate.js';
import { DEVICE_FEATURES, formatFeatures } from '../virtio/features.js';
import { decodeProtocolFeatures } from '../vhost-user/constants.js';
import { ProtocolFeature, VHOST_USER_MAX_CONFIG_SIZE, hasProtocolFeature, protocolFeatureMask } from '../vhost-user/constants.js';

const PROG = 'vhost-user-probe';

const USAGE = `Usage: ${PROG} --socket-path PATH [options]

Connects to the vhost-user back-end listening on PATH, negotiates as a front-end and prints
the back-end's virtio features, protocol features, queue count, memory slots and (optionally)
its config space as JSON.

Options:
  -s, --socket-path PATH   back-end socket (required)
  -t, --device-type TYPE   name device-specific feature bits as TYPE
                           (${Object.keys(DEVICE_FEATURES).join(', ')}); vhost-user does not
                           tell the device type, so without it they print as "bit N"
  -c, --config-size N      also read N bytes (1-${VHOST_USER_MAX_CONFIG_SIZE}) of config space with GET_CONFIG
                           (with --device-type blk the whole config space is read and decoded)
                           (needs VHOST_USER_PROTOCOL_F_CONFIG)
      --timeout MS         connect and per-request reply timeout (default 5000)
  -h, --help               show this help

Exit status: 0 success, 1 probe failed (reason on stderr), 2 usage error.`;

/** A failure worth one line on stderr and the given exit status. */
class ProbeError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

/** Parsed command line. */
interface ProbeOptions {
  socketPath: string;
  deviceType: string | undefined;
  configSize: number | undefined;
  timeoutMs: number;
}

function intOption(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ProbeError(`--${name} must be an integer in ${min}..${max}, got '${value}'`, 2);
  return n;
}

/** Parses argv; returns null for --help. */
function parseOptions(argv: string[]): ProbeOptions | null {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'socket-path': { type: 'string', short: 's' },
        'device-type': { type: 'string', short: 't' },
        'config-size': { type: 'string', short: 'c' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new ProbeError(`${(e as Error).message.split('\n')[0] ?? 'bad arguments'} (see --help)`, 2);
  }
  if (values.help === true) return null;
  const socketPath = values['socket-path'];
  if (socketPath === undefined || socketPath === '') throw new ProbeError('--socket-path is required (see --help)', 2);
  const deviceType = values['device-type'];
  if (deviceType !== undefined && !Object.hasOwn(DEVICE_FEATURES, deviceType)) {
    throw new ProbeError(`unknown --device-type '${deviceType}' (known: ${Object.keys(DEVICE_FEATURES).join(', ')})`, 2);
  }
  return {
    socketPath,
    deviceType,
    configSize: intOption(values['config-size'], 'config-size', 1, VHOST_USER_MAX_CONFIG_SIZE),
    timeoutMs: intOption(values.timeout, 'timeout', 1, 3_600_000) ?? 5000,
  };
}

/** Connects once, waiting up to `timeoutMs` for a back-end that is accepting slowly (EAGAIN). */
async function connect(path: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return sys.connectUnix(path);
    } catch (e) {
      // A missing or dead socket is a definite answer; only a full backlog is worth waiting for.
      const code = e instanceof sys.SysError ? e.code : undefined;
      if (code !== 'EAGAIN' || Date.now() >= deadline) throw new ProbeError(`cannot connect to ${path}: ${code ?? (e as Error).message}`, 1);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The JSON document printed on success. */
export interface ProbeReport {
  socketPath: string;
  deviceType: string | null;
  features: { hex: string; names: string[] };
  protocolFeatures: { hex: string; names: string[] } | null;
  negotiatedProtocolFeatures: { hex: string; names: string[] } | null;
  queueNum?: number;
  maxMemSlots?: number;
  config?: string;
  /** The config space decoded field by field, for device types whose layout is known (blk). */
  configDecoded?: Record<string, unknown>;
}

/** Bytes of virtio_blk_config every QEMU 7.x back-end serves (through write_zeroes_may_unmap). */
const BLK_CONFIG_READ_SIZE = 60;

/** Decodes a config space of `deviceType`, or null when the type's layout is not known here. */
function decodeConfig(deviceType: string | undefined, bytes: Uint8Array): Record<string, unknown> | null {
  if ((deviceType === 'blk' || deviceType === 'block') && bytes.length >= BLK_CONFIG_READ_SIZE) {
    const c = decodeBlkConfig(bytes);
    return { ...c, capacity: c.capacity.toString(), capacityBytes: (c.capacity * 512n).toString() };
  }
  return null;
}

/** Probes the back-end; resolves with the report and an error line for a partial result. */
async function probe(o: ProbeOptions): Promise<{ report: ProbeReport; error: string | null }> {
  const fe = new Frontend(await connect(o.socketPath, o.timeoutMs), { timeoutMs: o.timeoutMs });
  try {
    // CONFIG is always asked for so --config-size can be honoured; the rest is the safe default.
    const wantProtocolFeatures = DEFAULT_PROTOCOL_FEATURES | protocolFeatureMask(ProtocolFeature.CONFIG);
    const n = await negotiate(fe, { setFeatures: false, wantProtocolFeatures });
    const report: ProbeReport = {
      socketPath: o.socketPath,
      deviceType: o.deviceType ?? null,
      features: formatFeatures(n.offeredFeatures, o.deviceType),
      protocolFeatures: n.offeredProtocolFeatures === null ? null : formatProtocol(n.offeredProtocolFeatures),
      negotiatedProtocolFeatures: n.protocolFeatures === null ? null : formatProtocol(n.protocolFeatures),
    };
    if (n.queueNum !== null) report.queueNum = n.queueNum;
    if (n.maxMemSlots !== null) report.maxMemSlots = n.maxMemSlots;
    let error: string | null = null;
    // For a device type whose config layout we know, read it whole unless told otherwise.
    const configSize = o.configSize ?? ((o.deviceType === 'blk' || o.deviceType === 'block') ? BLK_CONFIG_READ_SIZE : undefined);
    if (configSize !== undefined) {
      if (n.protocolFeatures === null || !hasProtocolFeature(n.protocolFeatures, ProtocolFeature.CONFIG)) {
        error = 'back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG: config space not read';
      } else {
        try {
          const bytes = await fe.getConfig(0, configSize);
          report.config = Buffer.from(bytes).toString('hex');
          const decoded = decodeConfig(o.deviceType, bytes);
          if (decoded !== null) report.configDecoded = decoded;
        } catch (e) {
          error = `GET_CONFIG of ${configSize} bytes failed: ${(e as Error).message}`;
        }
      }
    }
    return { report, error };
  } finally {
    fe.close();
  }
}

function formatProtocol(bits: bigint): { hex: string; names: string[] } {
  return { hex: formatFeatures(bits).hex, names: decodeProtocolFeatures(bits) };
}

function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/\s*\n\s*/g, ' ');
}

async function main(argv: string[]): Promise<number> {
  try {
    const o = parseOptions(argv);
    if (o === null) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const { report, error } = await probe(o);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    if (error !== null) {
      process.stderr.write(`${PROG}: ${error}\n`);
      return 1;
    }
    return 0;
  } catch (e) {
    process.stderr.write(`${PROG}: ${oneLine(e)}\n`);
    return e instanceof ProbeError ? e.exitCode : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
