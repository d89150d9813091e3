import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { KmtlsError } from '../errors.js';
import { auditSecretReaders, loadKubeConfig } from '../kube/index.js';
import { formatCheck, readRuntime, runCheck, table } from '../local/index.js';
import { parseCommandArgs } from './args.js';
import { toJson } from './format.js';
import type { CommandIo } from './io.js';
import { outputFormat } from './status.js';
import { DEFAULT_MESH_DIR, defaultStateDir } from './up.js';

export const CHECK_USAGE = `Usage:
  kmtls check [DIR] [--state-dir DIR] [--flows FILE] [-o text|json]
  kmtls check --kube [--kubeconfig FILE] [--namespace NS] [-o text|json]

Probes every port of every pod of the running local mesh with (a) plaintext, (b) mesh mTLS with an
identity issued for the probe, (c) TLS with a certificate from a foreign CA, and prints what was
observed next to what the policies say. --flows FILE also tries declared flows, one per line:
  frontend/web -> finance/payments:8080 = mtls        # mtls | plaintext | refused
Exit 0 when everything matches, 1 on any mismatch.

--kube audits a cluster instead: who can read the mesh's Secrets (the CA in NS/kmtls-ca, a plug-in
CA in NS/cacerts, the opt-in TLS Secrets) through RBAC. Each Secret's own ServiceAccount and the
control plane are expected, Kubernetes' system: roles are built in; anyone else is reported and
the exit code is 1. NS is the control plane's namespace (default kmtls-system).
`;

export async function runCheckCommand(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    'state-dir': { type: 'string' },
    flows: { type: 'string' },
    kube: { type: 'boolean' },
    kubeconfig: { type: 'string' },
    namespace: { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout(CHECK_USAGE);
    return 0;
  }
  const output = outputFormat(values.output);
  if (values.kube) {
    const readers = await auditSecretReaders(loadKubeConfig(values.kubeconfig), {
      controlPlaneNamespace: values.namespace ?? 'kmtls-system',
    });
    const excess = readers.filter((r) => r.kind === 'excess');
    if (output === 'json') io.stdout(toJson({ readers, excess: excess.length }));
    else {
      const rows = [
        ['SECRET', 'SUBJECT', 'VERBS', 'KIND', 'VIA'],
        ...readers.map((r) => [
          r.secret,
          r.subject,
          r.verbs.join(','),
          r.kind === 'excess' ? 'EXCESS' : r.kind,
          r.via,
        ]),
      ];
      io.stdout(
        `${table(rows).join('\n')}\n\n${excess.length === 0 ? 'no subject beyond the expected ones can read mesh Secrets' : `${excess.length} grant(s) let others read mesh Secrets`}\n`,
      );
    }
    return excess.length === 0 ? 0 : 1;
  }
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
