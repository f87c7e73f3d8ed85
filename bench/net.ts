// Frames per second absorbed from DPDK testpmd (net_virtio_user0, txonly) by (a) our
// `vhost-user-net --loopback` and (b) DPDK's own vhost PMD (testpmd net_vhost0, rxonly), for 64 B
// and 1500 B frames on split and packed rings, in the same run. The rate is testpmd's Tx-pps
// (frames the back-end took off the ring), median of the samples after the first; each case runs
// ROUNDS times with the back-ends interleaved and keeps the best round (as `npm run bench` does:
// on a shared 2-core machine interference only ever makes a run slower, and runs here fall into a
// fast or a slow mode depending on where the scheduler puts the processes). The two testpmd
// instances forward on different lcores; our daemon shares the machine with them.
// usage: node dist/bench/net.js [seconds-per-case] [rounds] [extra daemon args...]
import { startTestpmdVhost, startTestpmdVirtioUser, type Testpmd } from '../test/helpers/dpdk.js';
import { startOurDaemon } from '../test/helpers/our-daemon.js';
import { makeTempDir } from '../test/helpers/tmp.js';
import { which } from '../test/helpers/tools.js';

const seconds = Number(process.argv[2] ?? '4');
const rounds = Number(process.argv[3] ?? '3');
const daemonArgs = process.argv.slice(4);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : (s[Math.floor(s.length / 2)] as number);
}

/** Waits until testpmd printed `n` Tx-pps samples. */
async function samples(pmd: Testpmd, n: number): Promise<number[]> {
  await pmd.waitFor(new RegExp(`(?:Tx-pps:[^\\n]*\\n[\\s\\S]*?){${n}}`), (n + 10) * 1000);
  return pmd.txPps();
}

async function measure(sock: string, size: number, packed: boolean): Promise<number> {
  const tx = await startTestpmdVirtioUser({
    socketPath: sock, forwardMode: 'txonly', statsPeriodSec: 1, devargs: [`packed_vq=${packed ? 1 : 0}`],
    appArgs: [`--txpkts=${size}`],
  });
  try {
    const pps = await samples(tx, seconds + 1);
    return median(pps.slice(1));
  } finally {
    await tx.stop();
  }
}

async function main(): Promise<void> {
  const missing = ['dpdk-testpmd', 'stdbuf'].filter((n) => which(n) === undefined);
  if (missing.length > 0) {
    process.stdout.write(`net: SKIPPED, missing ${missing.join(', ')} (Debian: dpdk, coreutils)\n`);
    return;
  }
  const dir = makeTempDir(undefined, 'netbench');
  const rows: string[] = [];
  try {
    for (const size of [64, 1500]) {
      for (const packed of [false, true]) {
        let oursPps = 0;
        let dpdkPps = 0;
        for (let round = 0; round < rounds; round++) {
          const tag = `${size}-${packed ? 'p' : 's'}-${round}`;
          const ourSock = dir.socketPath(`ours-${tag}`);
          const ours = await startOurDaemon('net', ourSock, ['--loopback', ...daemonArgs]);
          try {
            oursPps = Math.max(oursPps, await measure(ourSock, size, packed));
          } finally {
            await ours.stop();
          }
          const dpdkSock = dir.socketPath(`dpdk-${tag}`);
          const vhost = await startTestpmdVhost({ socketPath: dpdkSock, forwardMode: 'rxonly' });
          try {
            dpdkPps = Math.max(dpdkPps, await measure(dpdkSock, size, packed));
          } finally {
            await vhost.stop();
          }
        }
        const line = `${String(size).padStart(5)} B  ${packed ? 'packed' : 'split '}  vhost-user-net ${(oursPps / 1e6).toFixed(3)} Mpps  ` +
          `DPDK net_vhost ${(dpdkPps / 1e6).toFixed(3)} Mpps  ratio ${(oursPps / dpdkPps).toFixed(3)}x`;
        process.stdout.write(`${line}\n`);
        rows.push(line);
      }
    }
  } finally {
    dir.cleanup();
  }
  process.stdout.write(`\nnet: frames/s absorbed from testpmd txonly (best of ${rounds} interleaved rounds, each the median of ${seconds} 1-s samples)\n${rows.join('\n')}\n`);
}

await main();
