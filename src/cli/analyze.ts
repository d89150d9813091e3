import { collectProbes, discoverCallers } from '../mesh/index.js';
import { analyze, hasErrors } from '../policy/index.js';
import { MANIFEST_OPTIONS, manifestFlags, parseCommandArgs } from './args.js';
import type { CommandIo } from './io.js';
import { loadSnapshot } from './load.js';
import { printDiagnostics } from './validate.js';

export const ANALYZE_USAGE = `Usage:
  kmtls analyze -f PATH... [--root-namespace NS] [-o text|json]

Validates the manifests, then reports findings across them (coded, naming every object involved).
Exit 1 when any error-level finding exists.
`;

export async function runAnalyze(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, MANIFEST_OPTIONS);
  if (values.help) {
    io.stdout(ANALYZE_USAGE);
    return 0;
  }
  const flags = manifestFlags(values, positionals);
  const { snapshot, diagnostics, files } = await loadSnapshot(flags, io);
  const findings = analyze({
    peerAuthentications: snapshot.peerAuthentications,
    destinationRules: snapshot.destinationRules,
    autoMtls: snapshot.options.autoMtls,
    workloads: snapshot.workloads,
    services: snapshot.services,
    callers: discoverCallers(snapshot),
    probes: collectProbes(snapshot),
  });
  const all = [...diagnostics, ...findings];
  printDiagnostics(io, flags.output, all, files);
  return hasErrors(all) ? 1 : 0;
}
