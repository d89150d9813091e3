import path from 'node:path';
import { KmtlsError } from '../errors.js';
import { collectStatus, formatStatus, readRuntime } from '../local/index.js';
import { parseCommandArgs } from './args.js';
import { toJson } from './format.js';
import type { CommandIo } from './io.js';
import { DEFAULT_MESH_DIR, defaultStateDir } from './up.js';

export const STATUS_USAGE = `Usage:
  kmtls status [DIR] [--state-dir DIR] [-o text|json]

The running local mesh as data: pods, addresses, identities, each port's mode with what arrived
(mTLS, plaintext with the calling pods, refusals by reason), certificate time left, config versions,
how long the last policy change took to reach every sidecar, and manifest errors.
`;

export async function runStatus(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    'state-dir': { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout(STATUS_USAGE);
    return 0;
  }
  const output = outputFormat(values.output);
  const stateDir = path.resolve(values['state-dir'] ?? defaultStateDir(positionals[0] ?? DEFAULT_MESH_DIR));
  const status = await collectStatus(await readRuntime(stateDir));
  io.stdout(output === 'json' ? toJson(status) : formatStatus(status));
  return 0;
}

export function outputFormat(value: string | undefined): 'text' | 'json' {
  const output = value ?? 'text';
  if (output !== 'text' && output !== 'json') {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `unknown output format: ${JSON.stringify(output)} (use text or json)`,
    );
  }
  return output;
}
