import { KmtlsError } from '../errors.js';
import type { LookupFailure, MeshSnapshot, MeshWorkload } from '../mesh/index.js';
import { explainEdge, explainPod, findWorkload } from '../mesh/index.js';
import { hasErrors } from '../policy/index.js';
import { MANIFEST_OPTIONS, manifestFlags, parseCommandArgs, parsePort } from './args.js';
import { formatEdgeExplanation, formatPodExplanation, summarize, toJson } from './format.js';
import type { CommandIo } from './io.js';
import { loadSnapshot } from './load.js';

export const EXPLAIN_USAGE = `Usage:
  kmtls explain pod NAMESPACE/NAME [--port N] -f PATH... [--root-namespace NS] [-o text|json]
  kmtls explain edge NAMESPACE/SOURCE HOST:PORT [--subset NAME] -f PATH... [--root-namespace NS] [-o text|json]

NAME may be a Pod or a workload controller (Deployment, StatefulSet, ...): its pod template is used.
HOST may be svc, svc.ns, svc.ns.svc or svc.ns.svc.cluster.local; PORT is the Service port.
`;

function unwrap<T>(result: ({ ok: true } & T) | LookupFailure): T {
  if (!result.ok) throw new KmtlsError(result.code, result.message);
  return result;
}

function workload(snapshot: MeshSnapshot, target: string): MeshWorkload {
  return unwrap(findWorkload(snapshot, target)).workload;
}

export async function runExplain(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    ...MANIFEST_OPTIONS,
    port: { type: 'string' },
    subset: { type: 'string' },
  });
  if (values.help) {
    io.stdout(EXPLAIN_USAGE);
    return 0;
  }
  const [what, ...rest] = positionals;
  if (what !== 'pod' && what !== 'edge') {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `explain what: ${JSON.stringify(what ?? '')} (use "pod" or "edge")\n\n${EXPLAIN_USAGE}`,
    );
  }
  const wanted = what === 'pod' ? 1 : 2;
  if (rest.length !== wanted) {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `explain ${what} takes ${wanted === 1 ? 'NAMESPACE/NAME' : 'NAMESPACE/SOURCE HOST:PORT'}\n\n${EXPLAIN_USAGE}`,
    );
  }
  if (what === 'pod' && values.subset !== undefined)
    throw new KmtlsError('KMTLS_CLI_USAGE', '--subset goes with explain edge');
  if (what === 'edge' && values.port !== undefined)
    throw new KmtlsError('KMTLS_CLI_USAGE', '--port goes with explain pod; give HOST:PORT');
  const port = parsePort(values.port, '--port');
  const flags = manifestFlags(values);
  const loaded = await loadSnapshot(flags, io);
  if (hasErrors(loaded.diagnostics)) {
    io.stderr(
      `warning: the manifests have problems (${summarize(loaded.diagnostics)}); invalid objects are left out. Run kmtls validate.\n`,
    );
  }
  if (what === 'pod') {
    const explanation = explainPod(loaded.snapshot, workload(loaded.snapshot, rest[0]!), port);
    io.stdout(flags.output === 'json' ? toJson(explanation) : formatPodExplanation(explanation));
    return 0;
  }
  const source = workload(loaded.snapshot, rest[0]!);
  const { explanation } = unwrap(explainEdge(loaded.snapshot, source, rest[1]!, values.subset));
  io.stdout(flags.output === 'json' ? toJson(explanation) : formatEdgeExplanation(explanation));
  return 0;
}
