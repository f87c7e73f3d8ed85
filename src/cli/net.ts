#!/usr/bin/env node
/**
 * `vhost-user-net` entry point: loads the daemon (./net-main.js) and runs it. Kept to this so
 * that loading happens after loadWithoutOptimizing switched TurboFan off (see ./startup.js).
 * @module
 */
import { loadWithoutOptimizing } from './startup.js';

const { main } = await loadWithoutOptimizing(() => import('./net-main.js'));
process.exit(await main(process.argv.slice(2)));
