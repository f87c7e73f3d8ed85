/**
 * `vhost-user-net`: a virtio-net back-end on a TAP interface, in loopback, or as an L2 switch
 * between several VMs (one vhost-user socket each) with an optional TAP uplink (the entry point is
 * ./net.js, which loads this module).
 *
 *     vhost-user-net --socket-path P [--socket-path P2 ...] (--tap NAME | --loopback) [--queue-pairs N]
 * @module
 */
import { parseArgs } from 'node:util';
import * as sys from '../sys/index.js';
import { VhostUserDaemon } from '../backend/index.js';
import { DEFAULT_SOCKET_MODE, UnixListener, checkSocketPath } from '../vhost-user/listener.js';
import { RateLimitedLogger, StderrLogger, type Logger } from '../log.js';
import {
  COMMON_OPTIONS, EXIT_FAILURE, EXIT_USAGE, UsageError, handleShutdownSignals, inheritedSocket, intOption, logOptions, packageVersion,
  type Endpoint, type OptionValues,
} from './backend-cli.js';
import {
  DEFAULT_MAC, LoopbackLink, NetSwitch, TapPort, TapWire, VhostUserNetBackend, formatMac, parseMac,
} from '../devices/net/index.js';
import { netStatsLines } from './net-stats.js';

const PROGRAM = 'vhost-user-net';

const OPTIONS = {
  ...COMMON_OPTIONS,
  // Several sockets make a switch.
  'socket-path': { type: 'string', multiple: true },
  tap: { type: 'string' },
  loopback: { type: 'boolean' },
  mac: { type: 'string' },
  mtu: { type: 'string' },
  'queue-pairs': { type: 'string' },
  'queue-size': { type: 'string' },
  'no-offloads': { type: 'boolean' },
  'poll-us': { type: 'string' },
} as const;

const USAGE = `usage: ${PROGRAM} --socket-path PATH [--socket-path PATH2 ...] (--tap NAME | --loopback) [options]

  one --socket-path and --tap NAME     a VM on a TAP interface (created if absent)
  one --socket-path and --loopback     every frame the VM sends comes back to it
  several --socket-path                an L2 learning switch between the VMs (one per socket),
                                       with --tap NAME as an optional uplink port

  --socket-path PATH      listen on this Unix socket (repeat for a switch)
  --fd N                  serve inherited socket N instead (listening or connected; one port)
  --socket-mode MODE      permissions of the socket files, octal (default 0600)
  --socket-group GROUP    group owning the socket files
  --tap NAME              TAP interface (one TAP queue per queue pair)
  --loopback              loop transmitted frames back to the same VM
  --mac MAC               guest MAC in the config space (default ${DEFAULT_MAC}; a switch adds the
                          port number to the last byte)
  --mtu N                 MTU in the config space (default 1500)
  --queue-pairs N         receive/transmit queue pairs per VM (default 1; MQ when > 1)
  --queue-size N          largest queue size, power of two (default 256)
  --no-offloads           do not offer checksum and TSO offloads
  --stats [SECONDS]       log per-port and per-queue packets, bytes and drops every SECONDS (default 1)
  --poll-us N             adaptive polling: a transmit queue that runs empty is checked for N µs
                          more before waiting for a kick (spends CPU to skip kicks; default 0)
                          until a kick (burns a CPU; lower latency)
  --print-capabilities    print the back-end capabilities as JSON and exit
  --log-level LEVEL       debug, info (default), warn or error
  --log-format FORMAT     text (default) or json
  --version               print the version and exit
  -h, --help              print this help and exit
`;

/** `--stats` may come without a value: it then means every second. */
function normalizeArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    out.push(a);
    if (a === '--stats') {
      const next = argv[i + 1];
      if (next === undefined || !/^\d+$/.test(next)) out.push('1');
    }
  }
  return out;
}

/** One port per socket: the device, its daemon and where it listens. */
interface Port {
  dev: VhostUserNetBackend;
  daemon: VhostUserDaemon;
  path: string | null;
}

/** Runs the daemon with `argv` (the arguments after the script); resolves with the exit status. */
export async function main(argv: string[]): Promise<number> {
  const fail = (msg: string, status = EXIT_FAILURE): number => {
    process.stderr.write(`${PROGRAM}: ${msg}\n`);
    return status;
  };
  if (argv.includes('--print-capabilities')) {
    process.stdout.write(`${JSON.stringify({ type: 'net', features: [] })}\n`);
    return 0;
  }
  let values: OptionValues & { 'socket-path'?: string[] | undefined };
  try {
    values = parseArgs({ args: normalizeArgs(argv), options: OPTIONS, strict: true, allowPositionals: false }).values as typeof values;
  } catch (e) {
    return fail(`${(e as Error).message} (see --help)`, EXIT_USAGE);
  }
  if (values.version) {
    process.stdout.write(`${PROGRAM} ${packageVersion()}\n`);
    return 0;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const paths = values['socket-path'] ?? [];
  let endpoints: Endpoint[];
  let statsEvery: number | undefined;
  let pollUs: number | undefined;
  let queuePairs: number;
  let queueSize: number;
  let mtu: number;
  let mac: Uint8Array;
  let logger: Logger;
  const tapName = values.tap as string | undefined;
  const loopback = values.loopback === true;
  try {
    statsEvery = intOption(values, 'stats', 1, 86_400);
    pollUs = intOption(values, 'poll-us', 0, 1_000_000);
    queuePairs = intOption(values, 'queue-pairs', 1, 256) ?? 1;
    queueSize = intOption(values, 'queue-size', 2, 32768) ?? 256;
    if ((queueSize & (queueSize - 1)) !== 0) throw new UsageError('--queue-size must be a power of two');
    mtu = intOption(values, 'mtu', 68, 65535) ?? 1500;
    try {
      mac = parseMac((values.mac as string | undefined) ?? DEFAULT_MAC);
    } catch (e) {
      throw new UsageError(`--mac: ${(e as Error).message}`);
    }
    const fdArg = values.fd as string | undefined;
    if ((paths.length === 0) === (fdArg === undefined)) throw new UsageError('give --socket-path (once, or several times for a switch) or --fd, not both');
    const group = values['socket-group'] as string | undefined;
    const modeArg = values['socket-mode'] as string | undefined;
    if (modeArg !== undefined && !/^0?[0-7]{1,3}$/.test(modeArg)) throw new UsageError(`--socket-mode ${modeArg} is not an octal permission mode (e.g. 0600)`);
    const mode = modeArg !== undefined ? parseInt(modeArg, 8) : group !== undefined ? 0o660 : DEFAULT_SOCKET_MODE;
    if (fdArg !== undefined) {
      endpoints = [inheritedSocket(fdArg)];
    } else {
      if (new Set(paths).size !== paths.length) throw new UsageError('the same --socket-path is given twice');
      endpoints = paths.map((p) => {
        try {
          checkSocketPath(p);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        return { kind: 'path', path: p, mode, group } as Endpoint;
      });
    }
    if (endpoints.length === 1 && tapName === undefined && !loopback) throw new UsageError('one port needs --tap NAME or --loopback (several --socket-path make a switch)');
    if (tapName !== undefined && loopback) throw new UsageError('--tap and --loopback exclude each other');
    if (endpoints.length > 1 && loopback) throw new UsageError('--loopback serves one socket; several --socket-path make a switch');
    logger = new RateLimitedLogger(new StderrLogger(PROGRAM, logOptions(values)));
  } catch (e) {
    return fail((e as Error).message, e instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE);
  }

  const ports: Port[] = endpoints.map((_, i) => {
    const m = mac.slice();
    m[5] = ((m[5] as number) + i) & 0xff;
    const name = endpoints.length === 1 ? 'port' : `port${i}`;
    const dev = new VhostUserNetBackend({ name, mac: m, mtu, queuePairs, queueSize, offloads: values['no-offloads'] !== true, logger, pollUs: pollUs ?? 0 });
    return { dev, daemon: new VhostUserDaemon(PROGRAM, dev, { logger }), path: null };
  });
  let tap: TapPort | null = null;
  if (tapName !== undefined) {
    try {
      tap = TapPort.open({ name: tapName, queues: endpoints.length === 1 ? queuePairs : 1, logger });
    } catch (e) {
      return fail(`cannot open TAP ${tapName}: ${(e as Error).message}`);
    }
  }
  let mode: string;
  if (ports.length === 1 && loopback) {
    new LoopbackLink(ports[0]!.dev);
    mode = 'loopback';
  } else if (ports.length === 1 && tap !== null) {
    new TapWire(ports[0]!.dev, tap);
    mode = `TAP ${tap.name}`;
  } else {
    const sw = new NetSwitch();
    for (const p of ports) sw.addDevice(p.dev);
    if (tap !== null) sw.addUplink(tap);
    mode = `a switch of ${ports.length} ports${tap !== null ? ` with TAP uplink ${tap.name}` : ''}`;
  }
  tap?.start();

  const listening: string[] = [];
  try {
    endpoints.forEach((ep, i) => {
      const p = ports[i]!;
      if (ep.kind === 'path') {
        p.daemon.start(UnixListener.listen(ep.path, { mode: ep.mode, ...(ep.group !== undefined ? { group: ep.group } : {}) }));
        p.path = ep.path;
        listening.push(ep.path);
      } else if (ep.kind === 'listening-fd') {
        p.daemon.start(UnixListener.fromFd(ep.fd));
      } else {
        sys.setNonBlocking(ep.fd, true);
        p.daemon.serveConnectedFd(ep.fd);
      }
    });
  } catch (e) {
    for (const p of ports) await p.daemon.stop();
    tap?.close();
    return fail(`cannot listen: ${(e as Error).message}`);
  }

  const logStats = (reason: string): void => {
    for (const line of netStatsLines(ports.map((p) => p.dev), tap)) logger.log('info', `${reason}: ${line.message}`, line.fields);
  };
  const statsTimer = statsEvery === undefined ? null : setInterval(() => logStats('stats'), statsEvery * 1000);
  statsTimer?.unref();
  const onUsr1 = (): void => logStats('SIGUSR1');
  process.on('SIGUSR1', onUsr1);

  const stopAll = async (): Promise<void> => {
    await Promise.all(ports.map((p) => p.daemon.stop()));
  };
  const removeSignals = handleShutdownSignals(logger, listening, stopAll, 'stopping');

  const where = listening.length > 0 ? listening.join(', ') : '<the socket passed with --fd>';
  const macs = ports.map((p) => formatMac(p.dev.mac)).join(', ');
  process.stdout.write(`${PROGRAM}: serving ${mode} with ${queuePairs} queue pair(s) (MAC ${macs}) on ${where}\n` +
    'Connect QEMU (guest RAM must be shared):\n' +
    '  qemu-system-x86_64 -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\\n' +
    `    -chardev socket,id=c0,path=${listening[0] ?? 'SOCK'} -netdev vhost-user,id=n0,chardev=c0,queues=${queuePairs} \\\n` +
    `    -device virtio-net-pci,netdev=n0${queuePairs > 1 ? ',mq=on' : ''} ...\n`);
  let code = 0;
  try {
    await Promise.all(ports.map((p) => p.daemon.wait()));
  } catch (e) {
    code = fail((e as Error).message);
    await stopAll();
  }
  logStats('exit');
  tap?.close();
  removeSignals();
  process.off('SIGUSR1', onUsr1);
  if (statsTimer !== null) clearInterval(statsTimer);
  return code;
}
