import type { Command } from './run.js';
import { processIo, runCommand } from './run.js';

/**
 * The sidecar's process entry: `kmtls proxy` and `kmtls proxy-wait`, which bin/kmtls.js sends here
 * instead of to the whole CLI (main.ts). Built as a bundle of its own (scripts/bundle.mjs), it loads
 * nothing the other commands need — manifest schemas, YAML loading, the Kubernetes client — and an
 * idle sidecar, one per pod, holds several MB less (BENCHMARKS.md). Same arguments, errors and exit
 * codes as through main.ts.
 */
export const SIDECAR_COMMANDS: Readonly<Record<string, () => Promise<Command>>> = {
  proxy: async () => (await import('./proxy.js')).runProxy,
  'proxy-wait': async () => (await import('./proxy-wait.js')).runProxyWait,
};

export async function main(): Promise<void> {
  const [name = '', ...rest] = process.argv.slice(2);
  const load = SIDECAR_COMMANDS[name];
  if (!load) throw new Error(`BUG: bin/kmtls.js sent ${JSON.stringify(name)} to the sidecar entry`);
  process.exitCode = await runCommand(
    load,
    rest,
    processIo(async () => {
      throw new Error('BUG: the sidecar commands read no standard input');
    }),
  );
}
