import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { KmtlsError } from '../errors.js';
import { formatCheck, readRuntime, runCheck } from '../local/index.js';
import { parseCommandArgs } from './args.js';
import { toJson } from './format.js';
import type { CommandIo } from './io.js';
import { outputFormat } from './status.js';
import { DEFAULT_MESH_DIR, defaultStateDir } from './up.js';

export const CHECK_USAGE = `Usage:
  kmtls check [DIR] [--state-dir DIR] [--flows FILE] [-o text|json]

Probes every port of every pod of the running local mesh with (a) plaintext, (b) mesh mTLS with an
identity issued for the probe, (c) TLS with a certificate from a foreign CA, and prints what was
observed next to what the policies say. --flows FILE also tries declared flows, one per line:
  frontend/web -> finance/payments:8080 = mtls        # mtls | plaintext | refused
Exit 0 when everything matches, 1 on any mismatch.
`;

export async function runCheckCommand(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    'state-dir': { type: 'string' },
    flows: { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout(CHECK_USAGE);
    return 0;
  }
  const output = outputFormat(values.output);
  const stateDir = path.resolve(values['state-dir'] ?? defaultStateDir(positionals[0] ?? DEFAULT_MESH_DIR));
  let flows: { text: string; file: string } | undefined;
  if (values.flows !== undefined) {
    try {
      flows = { text: await readFile(values.flows, 'utf8'), file: values.flows };
    } catch (err) {
      throw new KmtlsError(
        'KMTLS_CHECK_FLOWS_INVALID',
        `cannot read ${values.flows}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
  }
  const report = await runCheck(await readRuntime(stateDir), flows);
  io.stdout(output === 'json' ? toJson(report) : formatCheck(report));
  return report.mismatches === 0 ? 0 : 1;
}
