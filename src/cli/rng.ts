#!/usr/bin/env node
/**
 * `vhost-user-rng` entry point: loads the daemon (./rng-main.js) and runs it. Kept to this so
 * that loading happens after loadWithoutOptimizing switched TurboFan off (see ./startup.js).
 * @module
 */
import { loadWithoutOptimizing } from './startup.js';

const { main } = await loadWithoutOptimizing(() => import('./rng-main.js'));
process.exit(await main());
