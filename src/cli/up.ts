import { stat } from 'node:fs/promises';
import path from 'node:path';
import { KmtlsError } from '../errors.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/index.js';
import { collectStatus, formatStatus, LocalMesh, readRuntime } from '../local/index.js';
import { parseCommandArgs } from './args.js';
import type { CommandIo } from './io.js';

export const DEFAULT_MESH_DIR = 'examples/quickstart';

export const UP_USAGE = `Usage:
  kmtls up [DIR] [--state-dir DIR] [--subnet N] [--trust-domain TD] [--root-namespace NS]
           [--no-view] [--log-level info]

Runs DIR's manifests (default ${DEFAULT_MESH_DIR}) as a mesh on this machine: a control plane with
the CA, a sidecar per injected pod, and each container's command as a process. Pods get loopback
addresses 127.N.x.y (N = --subnet, default 10); Services get virtual IPs 127.(N+2).x.y. Edits to DIR
apply live. State (the CA, logs, runtime information) lives in --state-dir, default .kmtls beside DIR.
Ctrl-C stops every process it started.
`;

const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** `.kmtls` beside DIR: examples/quickstart → examples/.kmtls. */
export function defaultStateDir(dir: string): string {
  return path.join(path.dirname(path.resolve(dir)), '.kmtls');
}

export function parseSubnet(value: string | undefined): number {
  if (value === undefined) return 10;
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || n < 1 || n > 250)
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `not a subnet: --subnet ${JSON.stringify(value)} (1..250, for 127.N.x.y)`,
    );
  return n;
}

/** Long-running: resolves with an exit code when SIGINT/SIGTERM stops the mesh. */
export async function runUp(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    'state-dir': { type: 'string' },
    subnet: { type: 'string' },
    'trust-domain': { type: 'string' },
    'root-namespace': { type: 'string' },
    'no-view': { type: 'boolean' },
    'log-level': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout(UP_USAGE);
    return 0;
  }
  if (positionals.length > 1)
    throw new KmtlsError('KMTLS_CLI_USAGE', `kmtls up takes one DIR\n\n${UP_USAGE}`);
  const dir = path.resolve(positionals[0] ?? DEFAULT_MESH_DIR);
  const isDir = await stat(dir).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!isDir) throw new KmtlsError('KMTLS_CLI_USAGE', `not a directory: ${dir}`);
  const stateDir = path.resolve(values['state-dir'] ?? defaultStateDir(dir));
  try {
    const other = await readRuntime(stateDir);
    throw new KmtlsError(
      'KMTLS_LOCAL_START',
      `a local mesh already runs from ${stateDir} (pid ${other.pid}); stop it first or pass another --state-dir`,
    );
  } catch (err) {
    if ((err as KmtlsError).code !== 'KMTLS_LOCAL_NOT_RUNNING') throw err;
  }
  const tty = process.stdout.isTTY === true && values['no-view'] !== true;
  let dirty = true;
  const mesh = new LocalMesh({
    dir,
    stateDir,
    subnet: parseSubnet(values.subnet),
    trustDomain: values['trust-domain'] ?? DEFAULT_TRUST_DOMAIN,
    rootNamespace: values['root-namespace'] ?? 'istio-system',
    cwd: process.cwd(),
    logLevel: values['log-level'] ?? 'info',
    onChange: () => {
      dirty = true;
    },
  });
  // The children run in their own process groups (so that what they start goes with them), out of
  // reach of the terminal's signals: kmtls up ends them. SIGHUP (the terminal closed) stops as
  // Ctrl-C does. A signal while starting, or a second one while stopping, exits at once, and the
  // exit hook of src/local/processes.ts SIGKILLs every group still alive. Only a SIGKILL of kmtls up
  // itself leaves them running.
  let started = false;
  let requestStop: () => void = () => {};
  const stopSignal = new Promise<void>((resolve) => {
    requestStop = resolve;
  });
  const onSignal = () => {
    for (const sig of STOP_SIGNALS) {
      process.removeListener(sig, onSignal);
      process.once(sig, () => process.exit(130));
    }
    if (!started) process.exit(130);
    requestStop();
  };
  for (const sig of STOP_SIGNALS) process.once(sig, onSignal);
  io.stdout(`starting the local mesh from ${dir} (state in ${stateDir})\n`);
  try {
    await mesh.start();
  } catch (err) {
    for (const sig of STOP_SIGNALS) process.removeListener(sig, onSignal);
    throw err;
  }
  started = true;
  const plan = mesh.currentPlan();
  io.stdout(
    `mesh up: ${plan.pods.length} pods (${plan.pods.filter((p) => p.sidecar).length} with sidecars), ${plan.services.length} services; control plane ${plan.controlPlane.api}\n` +
      `logs in ${path.join(stateDir, 'logs')}; try kmtls status, kmtls check; Ctrl-C stops everything\n`,
  );

  // The view: redrawn in place on a terminal; as plain lines only when something changed otherwise.
  let last = '';
  let drawing = false;
  const draw = async () => {
    if (drawing) return;
    drawing = true;
    try {
      const text = formatStatus(await collectStatus(await readRuntime(stateDir)));
      const full = text;
      if (tty) {
        io.stdout(`\x1b[H\x1b[2J${new Date().toLocaleTimeString()}  kmtls up ${dir}\n${full}`);
      } else if (values['no-view'] !== true && (full !== last || dirty)) {
        // Plain output: only what changed, so logs stay readable.
        if (full !== last) io.stdout(`--- ${new Date().toISOString()}\n${full}`);
      }
      last = full;
      dirty = false;
    } catch {
      // The runtime file is being rewritten; the next tick draws.
    } finally {
      drawing = false;
    }
  };
  const tick = setInterval(() => void draw(), tty ? 1000 : 2000);
  void draw();
  await stopSignal;
  clearInterval(tick);
  io.stdout('\nstopping the local mesh...\n');
  await mesh.stop();
  io.stdout('stopped: every process kmtls started has ended\n');
  return 0;
}
