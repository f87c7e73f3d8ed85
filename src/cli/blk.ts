#!/usr/bin/env node
/**
 * `vhost-user-blk` entry point: loads the daemon (./blk-main.js) and runs it. Kept to this so
 * that loading happens after loadWithoutOptimizing switched TurboFan off (see ./startup.js).
 * @module
 */
import { loadWithoutOptimizing } from './startup.js';

const { main } = await loadWithoutOptimizing(() => import('./blk-main.js'));
process.exit(await main());
