import { readFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { parseManifestText } from '../config/index.js';
import { KmtlsError } from '../errors.js';
import type { InjectOptions } from '../kube/inject.js';
import { DEFAULT_CONTROL_PLANE_ADDRESS, DEFAULT_PROXY_IMAGE, injectObject } from '../kube/inject.js';
import type { Diagnostic } from '../policy/index.js';
import { diagnostic, hasErrors } from '../policy/index.js';
import { parseCommandArgs } from './args.js';
import { formatDiagnostic } from './format.js';
import type { CommandIo } from './io.js';

export const INJECT_USAGE = `Usage:
  kmtls inject -f FILE|- [-o yaml|json] [--image IMAGE] [--native-sidecar]
               [--control-plane-address HOST:PORT]

Manual sidecar injection, like istioctl kube-inject: prints the manifests with the init container,
the kmtls-proxy sidecar, its volumes and rewritten probes added to every Pod and to the pod template
of every Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job and CronJob.
Namespace labels are not consulted; a pod that opts out (sidecar.istio.io/inject: "false" or
kmtls.io/inject: "false"), a hostNetwork pod and an already-injected pod are printed unchanged, with
a note on stderr. Other objects are printed unchanged. Pipe the result to kubectl apply -f -.

  -f FILE|-                       a file, or - for standard input (repeatable; multi-document, Lists)
  -o yaml|json                    output format (default yaml; json prints one object or a v1 List)
  --image IMAGE                   sidecar and init image (default ${DEFAULT_PROXY_IMAGE})
  --native-sidecar                the sidecar as an init container with restartPolicy: Always
                                  (Kubernetes >= 1.29; Jobs complete, init containers get mTLS)
  --control-plane-address A       default ${DEFAULT_CONTROL_PLANE_ADDRESS}
`;

const OPTIONS = {
  filename: { type: 'string', short: 'f', multiple: true },
  output: { type: 'string', short: 'o' },
  image: { type: 'string' },
  'native-sidecar': { type: 'boolean' },
  'control-plane-address': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

async function readInput(file: string, io: CommandIo): Promise<{ text?: string; problem?: Diagnostic }> {
  if (file === '-') return { text: await io.readStdin() };
  try {
    return { text: await readFile(file, 'utf8') };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const reason =
      e.code === 'ENOENT'
        ? 'no such file or directory'
        : e.code === 'EISDIR'
          ? 'is a directory; pass files'
          : (e.code ?? e.message);
    return {
      problem: diagnostic('KMTLS_MANIFEST_UNREADABLE', `cannot read manifest: ${file} (${reason})`, {
        location: { file, line: 1 },
      }),
    };
  }
}

export async function runInject(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, OPTIONS);
  if (values.help) {
    io.stdout(INJECT_USAGE);
    return 0;
  }
  const files = [...(values.filename ?? []), ...positionals];
  if (files.length === 0) {
    throw new KmtlsError('KMTLS_CLI_USAGE', 'no manifests given: pass -f FILE|- (repeatable)');
  }
  const output = values.output ?? 'yaml';
  if (output !== 'yaml' && output !== 'json') {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `unknown output format: ${JSON.stringify(output)} (use yaml or json)`,
    );
  }
  const image = values.image ?? DEFAULT_PROXY_IMAGE;
  if (image.trim() === '' || /\s/.test(image)) {
    throw new KmtlsError('KMTLS_CLI_USAGE', `not an image reference: --image ${JSON.stringify(image)}`);
  }
  const controlPlaneAddress = values['control-plane-address'] ?? DEFAULT_CONTROL_PLANE_ADDRESS;
  if (
    !/^[^\s:]+:[0-9]{1,5}$/.test(controlPlaneAddress) &&
    !/^\[[0-9a-fA-F:.]+\]:[0-9]{1,5}$/.test(controlPlaneAddress)
  ) {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `not an address: --control-plane-address ${JSON.stringify(controlPlaneAddress)} (HOST:PORT)`,
    );
  }
  const options: InjectOptions = {
    image,
    nativeSidecar: values['native-sidecar'] === true,
    controlPlaneAddress,
  };

  const problems: Diagnostic[] = [];
  const objects: Record<string, unknown>[] = [];
  for (const file of files) {
    const input = await readInput(file, io);
    if (input.problem) problems.push(input.problem);
    if (input.text === undefined) continue;
    const parsed = parseManifestText(input.text, file === '-' ? '<stdin>' : file);
    problems.push(...parsed.diagnostics);
    objects.push(...parsed.objects.map((o) => o.body));
  }
  if (hasErrors(problems)) {
    // Half a manifest set piped into kubectl apply is worse than none: print nothing.
    for (const d of problems) io.stderr(`${formatDiagnostic(d)}\n`);
    return 1;
  }

  const out: Record<string, unknown>[] = [];
  for (const object of objects) {
    const result = injectObject(object, options);
    switch (result.outcome) {
      case 'refused':
        throw result.error;
      case 'skipped':
        io.stderr(`kmtls inject: left unchanged: ${describe(object)} (${result.reason})\n`);
        break;
      case 'injected':
        if (!options.nativeSidecar && (object.kind === 'Job' || object.kind === 'CronJob')) {
          io.stderr(
            `kmtls inject: note: ${describe(object)}: without --native-sidecar the sidecar keeps running after the job's containers exit, so the Job does not complete\n`,
          );
        }
        break;
      case 'not-a-workload':
        break;
      default: {
        const never: never = result;
        throw new Error(`BUG: unhandled outcome ${JSON.stringify(never)}`);
      }
    }
    out.push(result.object);
  }

  if (output === 'json') {
    const value = out.length === 1 ? out[0] : { apiVersion: 'v1', kind: 'List', items: out };
    io.stdout(`${JSON.stringify(value, null, 2)}\n`);
  } else {
    // lineWidth 0: the JSON annotations stay on one line instead of being folded.
    io.stdout(out.map((o) => stringify(o, { lineWidth: 0 })).join('---\n'));
  }
  return 0;
}

function describe(object: Record<string, unknown>): string {
  const meta = (object.metadata ?? {}) as Record<string, unknown>;
  const ns = typeof meta.namespace === 'string' ? meta.namespace : 'default';
  return `${String(object.kind)} ${ns}/${typeof meta.name === 'string' ? meta.name : '?'}`;
}
