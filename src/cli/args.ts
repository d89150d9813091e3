import { parseArgs } from 'node:util';
import { KmtlsError } from '../errors.js';

export type OutputFormat = 'text' | 'json';

/** The flags every command that reads manifests takes. */
export interface ManifestFlags {
  readonly files: readonly string[];
  readonly rootNamespace: string;
  readonly output: OutputFormat;
}

type OptionSpec = { type: 'string' | 'boolean'; short?: string; multiple?: boolean };

export const MANIFEST_OPTIONS = {
  filename: { type: 'string', short: 'f', multiple: true },
  'root-namespace': { type: 'string' },
  output: { type: 'string', short: 'o' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies Record<string, OptionSpec>;

/** Parses argv strictly: an unknown flag or a missing value is a usage error, never ignored. */
export function parseCommandArgs<T extends Record<string, OptionSpec>>(argv: readonly string[], options: T) {
  try {
    return parseArgs({ args: [...argv], options, allowPositionals: true, strict: true });
  } catch (err) {
    // Node's message goes on about positional arguments; its first sentence is the point.
    const first = (err as Error).message.split(/(?<=\.) /)[0];
    throw new KmtlsError('KMTLS_CLI_USAGE', `bad arguments: ${first} (see --help)`, { cause: err });
  }
}

export function manifestFlags(
  values: {
    filename?: string[] | undefined;
    'root-namespace'?: string | undefined;
    output?: string | undefined;
  },
  positionals: readonly string[] = [],
): ManifestFlags {
  const files = [...(values.filename ?? []), ...positionals];
  if (files.length === 0) {
    throw new KmtlsError('KMTLS_CLI_USAGE', 'no manifests given: pass -f FILE|DIR|- (repeatable)');
  }
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'json') {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `unknown output format: ${JSON.stringify(output)} (use text or json)`,
    );
  }
  const rootNamespace = values['root-namespace'] ?? 'istio-system';
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(rootNamespace)) {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `not a namespace name: --root-namespace ${JSON.stringify(rootNamespace)}`,
    );
  }
  return { files, rootNamespace, output };
}

export function parsePort(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || n < 1 || n > 65535) {
    throw new KmtlsError('KMTLS_CLI_USAGE', `not a port: ${flag} ${JSON.stringify(value)} (1..65535)`);
  }
  return n;
}
