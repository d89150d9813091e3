import { readFileSync } from 'node:fs';
import { KmtlsError } from '../errors.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/index.js';
import { DEFAULT_KMTLS_NAMESPACE, DEFAULT_LEAF_TTL, DEFAULT_ROOT_NAMESPACE } from '../kube/constants.js';
import type { InstallOptions, IstioCrdsMode } from '../kube/install.js';
import {
  asList,
  buildInstallManifests,
  checkInstallOptions,
  defaultImage,
  installHeader,
  parseKubeVersion,
  renderYaml,
} from '../kube/install.js';
import { parseCommandArgs } from './args.js';
import { toJson } from './format.js';
import type { CommandIo } from './io.js';

export const INSTALL_USAGE = `Usage:
  kmtls install [--namespace NS] [--replicas N] [--image IMAGE] [--istio-crds auto|include|skip]
                [--kube-version 1.X] [--trust-domain TD] [--root-namespace NS] [--leaf-ttl 24h]
                [-o yaml|json]

Prints the manifests that install kmtls in a cluster; apply them with
  kmtls install | kubectl apply -f -
  --namespace      where the control plane runs (default ${DEFAULT_KMTLS_NAMESPACE})
  --replicas       control plane replicas (default 2; a PodDisruptionBudget when more than 1)
  --image          the kmtls image (default kmtls/kmtls:<this version>)
  --istio-crds     the PeerAuthentication and DestinationRule CRDs: include, skip (use it when Istio
                   is installed: applying ours would replace Istio's), or auto (default: include,
                   since install reads nothing from the cluster)
  --kube-version   the target cluster: before 1.21 the PodDisruptionBudget is policy/v1beta1; from
                   1.25 the CRDs carry Istio's CEL validation rules (default: any 1.21 or later)
  --trust-domain, --root-namespace, --leaf-ttl
                   the mesh settings in ConfigMap kmtls-config (defaults ${DEFAULT_TRUST_DOMAIN},
                   ${DEFAULT_ROOT_NAMESPACE}, ${DEFAULT_LEAF_TTL})
  -o               yaml (default: documents separated by ---) or json (one v1 List)
`;

const ISTIO_CRDS_MODES: readonly IstioCrdsMode[] = ['auto', 'include', 'skip'];

/** kmtls's version from package.json: two levels above src/cli under tsx, three above dist/src/cli. */
export function packageVersion(): string {
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'kmtls' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // not at this level: try the next
    }
  }
  throw new Error('BUG: package.json of kmtls not found above src/cli');
}

function usage(message: string): KmtlsError {
  return new KmtlsError('KMTLS_CLI_USAGE', `${message} (see kmtls install --help)`);
}

export type InstallOutput = 'yaml' | 'json';

/** What the command line asks for: help, or options and an output format. */
export type InstallCommand =
  | { readonly help: true }
  | { readonly help: false; readonly options: InstallOptions; readonly output: InstallOutput };

/** Flags to options; every problem is a KMTLS_CLI_USAGE error. `version` is injectable for tests. */
export function parseInstallArgs(argv: readonly string[], version = packageVersion()): InstallCommand {
  const { values, positionals } = parseCommandArgs(argv, {
    namespace: { type: 'string', short: 'n' },
    replicas: { type: 'string' },
    image: { type: 'string' },
    'istio-crds': { type: 'string' },
    'kube-version': { type: 'string' },
    'trust-domain': { type: 'string' },
    'root-namespace': { type: 'string' },
    'leaf-ttl': { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return { help: true };
  if (positionals.length > 0) throw usage(`unexpected argument: ${JSON.stringify(positionals[0])}`);
  const output = values.output ?? 'yaml';
  if (output !== 'yaml' && output !== 'json')
    throw usage(`unknown output format: -o ${JSON.stringify(output)} (use yaml or json)`);
  const replicasText = values.replicas ?? '2';
  if (!/^[0-9]+$/.test(replicasText))
    throw usage(
      `not a replica count: --replicas ${JSON.stringify(replicasText)} (an integer from 1 to 1000)`,
    );
  const istioCrds = values['istio-crds'] ?? 'auto';
  if (!(ISTIO_CRDS_MODES as readonly string[]).includes(istioCrds))
    throw usage(`unknown mode: --istio-crds ${JSON.stringify(istioCrds)} (use auto, include or skip)`);
  let kubeVersion: InstallOptions['kubeVersion'];
  if (values['kube-version'] !== undefined) {
    kubeVersion = parseKubeVersion(values['kube-version']);
    if (!kubeVersion)
      throw usage(
        `not a Kubernetes version: --kube-version ${JSON.stringify(values['kube-version'])} (like 1.29)`,
      );
  }
  const options: InstallOptions = {
    version,
    namespace: values.namespace ?? DEFAULT_KMTLS_NAMESPACE,
    replicas: Number(replicasText),
    image: values.image ?? defaultImage(version),
    istioCrds: istioCrds as IstioCrdsMode,
    kubeVersion,
    trustDomain: values['trust-domain'] ?? DEFAULT_TRUST_DOMAIN,
    rootNamespace: values['root-namespace'] ?? DEFAULT_ROOT_NAMESPACE,
    leafTtl: values['leaf-ttl'] ?? DEFAULT_LEAF_TTL,
  };
  const problems = checkInstallOptions(options);
  if (problems.length > 0) throw usage(problems.join('; '));
  return { help: false, options, output };
}

/** `kmtls install`: prints the manifests; reads nothing and changes nothing. */
export async function runInstall(argv: readonly string[], io: CommandIo): Promise<number> {
  const command = parseInstallArgs(argv);
  if (command.help) {
    io.stdout(INSTALL_USAGE);
    return 0;
  }
  const { options, output } = command;
  const objects = buildInstallManifests(options);
  io.stdout(
    output === 'json' ? toJson(asList(objects)) : renderYaml(objects, installHeader(options, objects)),
  );
  return 0;
}
