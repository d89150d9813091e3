import type { Diagnostic } from '../policy/index.js';
import { hasErrors, sortDiagnostics } from '../policy/index.js';
import { MANIFEST_OPTIONS, manifestFlags, parseCommandArgs } from './args.js';
import { formatDiagnostic, summarize, toJson } from './format.js';
import type { CommandIo } from './io.js';
import { loadSnapshot } from './load.js';

export const VALIDATE_USAGE = `Usage:
  kmtls validate -f PATH... [-o text|json]

Checks manifests as the API server and Istio's webhook would: exit 0 when valid (warnings are
printed), 1 when any error, 2 on usage errors.
`;

export function printDiagnostics(
  io: CommandIo,
  output: 'text' | 'json',
  list: readonly Diagnostic[],
  files: readonly string[],
): void {
  const sorted = sortDiagnostics(list);
  if (output === 'json') {
    io.stdout(toJson({ valid: !hasErrors(sorted), files, diagnostics: sorted }));
    return;
  }
  for (const d of sorted) io.stdout(`${formatDiagnostic(d)}\n`);
  io.stdout(`${files.length} file${files.length === 1 ? '' : 's'}: ${summarize(sorted)}\n`);
}

export async function runValidate(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, MANIFEST_OPTIONS);
  if (values.help) {
    io.stdout(VALIDATE_USAGE);
    return 0;
  }
  const flags = manifestFlags(values, positionals);
  const loaded = await loadSnapshot(flags, io);
  printDiagnostics(io, flags.output, loaded.diagnostics, loaded.files);
  return hasErrors(loaded.diagnostics) ? 1 : 0;
}
