import { KmtlsError } from '../errors.js';
import type { CommandIo } from './io.js';
import type { Command } from './run.js';
import { processIo, runCommand, version } from './run.js';
import { SIDECAR_COMMANDS } from './sidecar.js';

export const USAGE = `kmtls — mutual TLS for Kubernetes services, exact to Istio's PeerAuthentication

Usage: kmtls <command> [flags]

Commands:
  up [DIR]                            run DIR's manifests as a local mesh (default examples/quickstart)
  status [-o json]                    the running local mesh: pods, modes, connections, errors
  check [--flows FILE] [-o json]      probe every pod port; observed next to expected (exit 1 on mismatch)
  explain pod NS/NAME [--port N]      effective inbound mTLS mode and the decision chain
  explain edge NS/POD HOST:PORT       what the client sends, what the server accepts, the verdict
  validate -f PATH...                 schema and Istio webhook validation (exit 1 on errors)
  analyze -f PATH...                  cross-resource findings (exit 1 on error-level findings)
  ca init|issue|inspect|rotate        the mesh certificate authority (see kmtls ca help)
  controlplane --dir DIR --state-dir S  the control plane (CA, config streams); kmtls up runs it
  controlplane --source kubernetes    the control plane in a cluster (see docs/kubernetes.md)
  install [--namespace NS] [--replicas N] [--image I] [--istio-crds auto|include|skip] [--kube-version 1.X]
                                      print the manifests that install kmtls in a cluster
  inject -f FILE                      add the sidecar to workload manifests (manual injection)
  iptables apply|clean|print          the pod's traffic redirection (run by the injected init step)
  check --kube                        who can read mesh Secrets in a cluster, through RBAC
  proxy --config FILE --cert-dir DIR  the sidecar, standalone (or --control-plane ADDR ...)
  version                             print the version

Every command that reads manifests takes -f PATH (file, directory or -, repeatable),
--root-namespace NS (default istio-system) and -o text|json. See docs/cli.md.
`;

/**
 * Each command's module is loaded when the command runs: `kmtls version` or `kmtls validate` need not
 * load the Kubernetes client, the proxy or the control plane, and start in a fraction of the time.
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  ca: async () => (await import('./ca.js')).runCa,
  check: async () => (await import('./check.js')).runCheckCommand,
  controlplane: async () => (await import('./controlplane.js')).runControlPlane,
  explain: async () => (await import('./explain.js')).runExplain,
  inject: async () => (await import('./inject.js')).runInject,
  install: async () => (await import('./install.js')).runInstall,
  iptables: async () => (await import('./iptables.js')).runIptables,
  ...SIDECAR_COMMANDS,
  status: async () => (await import('./status.js')).runStatus,
  up: async () => (await import('./up.js')).runUp,
  validate: async () => (await import('./validate.js')).runValidate,
  analyze: async () => (await import('./analyze.js')).runAnalyze,
};

/** `kmtls version`, run as the commands are: a missing package.json is a coded failure too. */
const printVersion = async (): Promise<Command> => async (_argv, io) => {
  io.stdout(`kmtls ${version()}\n`);
  return 0;
};

const unknownCommand = (name: string) => async (): Promise<Command> => {
  throw new KmtlsError('KMTLS_CLI_USAGE', `unknown command: ${JSON.stringify(name)}\n\n${USAGE}`);
};

/** Runs one command; returns the exit code. Never throws: errors become a coded message. */
export async function run(argv: readonly string[], io: CommandIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    io.stdout(USAGE);
    return name === undefined ? 2 : 0;
  }
  const load =
    name === 'version' || name === '--version' ? printVersion : (COMMANDS[name] ?? unknownCommand(name));
  return runCommand(load, rest, io);
}

/** The process entry: the only place that touches process streams and exit. */
export async function main(): Promise<void> {
  process.exitCode = await run(
    process.argv.slice(2),
    // Loaded when a command reads `-`: src/config brings YAML and the manifest schemas, which no
    // command needs before then.
    processIo(async () => (await import('../config/index.js')).readStdinText()),
  );
}
