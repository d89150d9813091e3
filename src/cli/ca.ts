import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { KmtlsError } from '../errors.js';
import type { SpiffeId } from '../identity/index.js';
import { DEFAULT_TRUST_DOMAIN, meshIdentity, parseSpiffeId } from '../identity/index.js';
import { KubeSecretStore, loadKubeConfig } from '../kube/index.js';
import type { CertificateReport, RotationStatus, SecretStore, StoredCa } from '../pki/index.js';
import {
  abortRotation,
  beginRotation,
  CA_SECRET_NAME,
  CertificateAuthority,
  caMaterialFromFiles,
  createCsr,
  createRoot,
  DEFAULT_CONTROL_PLANE_NAMESPACE,
  FileSecretStore,
  formatDuration,
  initialCaState,
  inspectCertificates,
  loadCa,
  materialOf,
  parseDuration,
  pemBlocks,
  recordLeafTtl,
  retireOldRoot,
  rotationStatus,
  saveCa,
  switchSigner,
  writeFileAtomic,
} from '../pki/index.js';
import { parseCommandArgs } from './args.js';
import { toJson } from './format.js';
import type { CommandIo } from './io.js';

export const CA_USAGE = `Usage:
  kmtls ca init [--state-dir D] [--trust-domain TD] [--from-cacerts DIR]
  kmtls ca issue (--spiffe-id ID | --namespace NS --service-account SA) [--ttl 24h] --out-dir D [--state-dir D]
  kmtls ca inspect [FILE | --state-dir D]
  kmtls ca rotate status|begin|switch|retire|abort [--force] [--state-dir D]

Every subcommand takes -o text|json. The CA lives in the Secret ${CA_SECRET_NAME} of namespace
${DEFAULT_CONTROL_PLANE_NAMESPACE}, kept as a file under the state directory (default .kmtls), or, with
--kubeconfig FILE instead of --state-dir, in the cluster itself (where kmtls controlplane reads it).
`;

const COMMON = {
  'state-dir': { type: 'string' },
  kubeconfig: { type: 'string' },
  'control-plane-namespace': { type: 'string' },
  output: { type: 'string', short: 'o' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Output = 'text' | 'json';

function outputOf(value: string | undefined): Output {
  const o = value ?? 'text';
  if (o !== 'text' && o !== 'json')
    throw new KmtlsError('KMTLS_CLI_USAGE', `unknown output format: ${JSON.stringify(o)} (use text or json)`);
  return o;
}

/** Where the CA Secret lives: files under a state directory, or a cluster (`--kubeconfig`). */
type CaStore = SecretStore & { readonly stateDir: string; pathOf(namespace: string, name: string): string };

function storeOf(stateDir: string | undefined, kubeconfig?: string): CaStore {
  if (kubeconfig !== undefined) {
    if (stateDir !== undefined)
      throw new KmtlsError('KMTLS_CLI_USAGE', 'give --state-dir or --kubeconfig, not both');
    const kc = loadKubeConfig(kubeconfig);
    const store = new KubeSecretStore(kc);
    const where = `the cluster at ${kc.getCurrentCluster()?.server ?? '?'}`;
    return Object.assign(store, {
      stateDir: where,
      pathOf: (namespace: string, name: string) => `Secret ${namespace}/${name} in ${where}`,
    });
  }
  return new FileSecretStore(stateDir ?? '.kmtls');
}

async function requireCa(store: CaStore, namespace: string): Promise<StoredCa> {
  const ca = await loadCa(store, namespace);
  if (!ca) {
    throw new KmtlsError(
      'KMTLS_STATE_NOT_INITIALIZED',
      `no CA in ${store.stateDir} (Secret ${namespace}/${CA_SECRET_NAME} is missing); run kmtls ca init --state-dir ${store.stateDir}`,
    );
  }
  return ca;
}

function describeCa(ca: StoredCa, store: CaStore, namespace: string, nowMs: number) {
  const material = materialOf(ca);
  return {
    trustDomain: material.trustDomain,
    mode: ca.mode,
    secret: `${namespace}/${CA_SECRET_NAME}`,
    file: store.pathOf(namespace, CA_SECRET_NAME),
    signer: inspectCertificates(material.chain, nowMs),
    trustBundle: inspectCertificates(material.trustBundle, nowMs),
    rotation: ca.mode === 'self-signed' ? rotationStatus(ca.state, nowMs) : undefined,
  };
}

function formatReports(title: string, reports: readonly CertificateReport[]): string[] {
  const out = [`${title}:`];
  for (const r of reports) {
    out.push(`  [${r.index}] ${r.role}${r.identities.length ? ` ${r.identities.join(', ')}` : ''}`);
    out.push(`      subject:  ${r.subject || '(empty)'}`);
    out.push(`      issuer:   ${r.issuer}`);
    out.push(`      serial:   ${r.serial}`);
    out.push(
      `      valid:    ${r.notBefore} .. ${r.notAfter} (${r.lifetime}); ${r.timeLeftMs >= 0 ? `${r.timeLeft} left` : r.timeLeft}`,
    );
    out.push(`      usage:    ${[...r.keyUsage, ...r.extKeyUsage].join(', ') || '(none)'}`);
    for (const w of r.warnings) out.push(`      WARNING:  ${w}`);
  }
  return out;
}

function formatRotation(status: RotationStatus): string[] {
  return [
    `rotation: ${status.phase}`,
    `  signing root: ${status.signingRoot.subject} (serial ${status.signingRoot.serial}, until ${status.signingRoot.notAfter})`,
    ...status.trustBundle.map(
      (r) => `  trusted root: ${r.subject} (serial ${r.serial}, until ${r.notAfter})`,
    ),
    `  next: ${status.next}`,
  ];
}

async function readCacerts(
  dir: string,
): Promise<{ caCertPem: string; caKeyPem: string; rootCertPem: string; certChainPem: string }> {
  const read = async (name: string) => {
    try {
      return await readFile(path.join(dir, name), 'utf8');
    } catch (err) {
      throw new KmtlsError(
        'KMTLS_PKI_CACERTS_INVALID',
        `cannot read ${path.join(dir, name)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  };
  return {
    caCertPem: await read('ca-cert.pem'),
    caKeyPem: await read('ca-key.pem'),
    rootCertPem: await read('root-cert.pem'),
    certChainPem: await read('cert-chain.pem'),
  };
}

async function runInit(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    ...COMMON,
    'trust-domain': { type: 'string' },
    'from-cacerts': { type: 'string' },
  });
  const output = outputOf(values.output);
  const store = storeOf(values['state-dir'], values.kubeconfig);
  const namespace = values['control-plane-namespace'] ?? DEFAULT_CONTROL_PLANE_NAMESPACE;
  const trustDomain = values['trust-domain'] ?? DEFAULT_TRUST_DOMAIN;
  const now = Date.now();
  const existing = await loadCa(store, namespace);
  if (existing) {
    const td = materialOf(existing).trustDomain;
    if (td !== trustDomain) {
      throw new KmtlsError(
        'KMTLS_PKI_UNKNOWN_TRUST_DOMAIN',
        `${store.stateDir} already holds a CA for trust domain ${td}, not ${trustDomain}; nothing changed`,
      );
    }
    io.stdout(
      output === 'json'
        ? toJson({ created: false, ...describeCa(existing, store, namespace, now) })
        : `CA already initialized in ${store.stateDir} (trust domain ${td}); nothing changed\n`,
    );
    return 0;
  }
  let ca: StoredCa;
  if (values['from-cacerts'] !== undefined) {
    const files = await readCacerts(values['from-cacerts']);
    ca = {
      mode: 'plug-in',
      material: caMaterialFromFiles({ trustDomain, ...files }),
      files,
      longestLeafTtlMs: 0,
    };
  } else {
    ca = {
      mode: 'self-signed',
      state: initialCaState(trustDomain, createRoot({ trustDomain, now, random: randomBytes })),
    };
  }
  await saveCa(store, ca, namespace);
  const described = describeCa(ca, store, namespace, now);
  if (output === 'json') io.stdout(toJson({ created: true, ...described }));
  else {
    io.stdout(
      [
        `created a ${ca.mode} CA for trust domain ${trustDomain}`,
        `  stored as Secret ${described.secret} in ${described.file}`,
        ...formatReports('signer chain', described.signer),
        '',
      ].join('\n'),
    );
  }
  return 0;
}

function identityFrom(
  values: {
    'spiffe-id'?: string | undefined;
    namespace?: string | undefined;
    'service-account'?: string | undefined;
  },
  trustDomain: string,
): SpiffeId {
  const byId = values['spiffe-id'];
  const byParts = values.namespace !== undefined || values['service-account'] !== undefined;
  if (byId !== undefined && byParts)
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      'give --spiffe-id, or --namespace with --service-account, not both',
    );
  if (byId !== undefined) {
    const r = parseSpiffeId(byId);
    if (!r.ok) throw new KmtlsError('KMTLS_PKI_BAD_IDENTITY', r.message);
    return r.id;
  }
  if (values.namespace === undefined || values['service-account'] === undefined) {
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      'name the identity: --spiffe-id ID, or --namespace NS --service-account SA',
    );
  }
  const r = meshIdentity(trustDomain, values.namespace, values['service-account']);
  if (!r.ok) throw new KmtlsError('KMTLS_PKI_BAD_IDENTITY', r.message);
  return r.id;
}

async function runIssue(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    ...COMMON,
    'spiffe-id': { type: 'string' },
    namespace: { type: 'string' },
    'service-account': { type: 'string' },
    ttl: { type: 'string' },
    'out-dir': { type: 'string' },
  });
  const output = outputOf(values.output);
  if (values['out-dir'] === undefined)
    throw new KmtlsError('KMTLS_CLI_USAGE', 'kmtls ca issue needs --out-dir D');
  let ttlMs: number | undefined;
  if (values.ttl !== undefined) {
    ttlMs = parseDuration(values.ttl);
    if (ttlMs === undefined || ttlMs <= 0)
      throw new KmtlsError(
        'KMTLS_PKI_TTL_INVALID',
        `not a duration: --ttl ${JSON.stringify(values.ttl)} (e.g. 24h, 30d, 1h30m)`,
      );
  }
  const store = storeOf(values['state-dir'], values.kubeconfig);
  const namespace = values['control-plane-namespace'] ?? DEFAULT_CONTROL_PLANE_NAMESPACE;
  const stored = await requireCa(store, namespace);
  const material = materialOf(stored);
  const identity = identityFrom(values, material.trustDomain);
  const ca = new CertificateAuthority(material, { clock: { now: Date.now }, random: randomBytes });
  // The same path as a sidecar: a fresh key, a CSR, and the CA issuing for the caller (the operator).
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const issued = ca.sign(
    createCsr(key, { uris: [identity.uri] }),
    { identities: [identity], method: 'operator' },
    ttlMs !== undefined ? { ttlMs } : {},
  );
  const outDir = values['out-dir'];
  await writeFileAtomic(
    path.join(outDir, 'key.pem'),
    Buffer.from(key.export({ format: 'pem', type: 'pkcs8' })),
    0o600,
  );
  await writeFileAtomic(path.join(outDir, 'cert-chain.pem'), Buffer.from(issued.chainPem), 0o644);
  await writeFileAtomic(path.join(outDir, 'root-cert.pem'), Buffer.from(ca.trustBundlePem()), 0o644);
  // A longer lifetime than any before makes a later root retirement wait longer.
  const lifetime = issued.notAfter.getTime() - issued.notBefore.getTime();
  if (stored.mode === 'self-signed') {
    const next = recordLeafTtl(stored.state, lifetime);
    if (next !== stored.state) await saveCa(store, { mode: 'self-signed', state: next }, namespace);
  } else if (lifetime > stored.longestLeafTtlMs) {
    await saveCa(store, { ...stored, longestLeafTtlMs: lifetime }, namespace);
  }
  const result = {
    identity: identity.uri,
    serial: issued.serialHex,
    notBefore: issued.notBefore.toISOString(),
    notAfter: issued.notAfter.toISOString(),
    ttl: formatDuration(issued.notAfter.getTime() - issued.notBefore.getTime() - 120_000),
    files: ['cert-chain.pem', 'key.pem', 'root-cert.pem'].map((f) => path.join(outDir, f)),
  };
  io.stdout(
    output === 'json'
      ? toJson(result)
      : `issued ${result.identity} (serial ${result.serial}), valid ${result.notBefore} .. ${result.notAfter}\n` +
          result.files.map((f) => `  wrote ${f}\n`).join(''),
  );
  return 0;
}

async function runInspect(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, COMMON);
  const output = outputOf(values.output);
  const now = Date.now();
  if (positionals.length > 1)
    throw new KmtlsError('KMTLS_CLI_USAGE', 'kmtls ca inspect takes one FILE, or --state-dir D');
  if (positionals.length === 1) {
    if (values['state-dir'] !== undefined)
      throw new KmtlsError('KMTLS_CLI_USAGE', 'give FILE or --state-dir, not both');
    const file = positionals[0]!;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new KmtlsError(
        'KMTLS_STATE_IO',
        `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        { cause: err },
      );
    }
    const ders = pemBlocks(text);
    if (ders.length === 0) throw new KmtlsError('KMTLS_STATE_CORRUPT', `no PEM certificate in ${file}`);
    let reports: CertificateReport[];
    try {
      reports = inspectCertificates(ders, now);
    } catch (err) {
      throw new KmtlsError(
        'KMTLS_STATE_CORRUPT',
        `unreadable certificate in ${file}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    io.stdout(
      output === 'json'
        ? toJson({ file, certificates: reports })
        : `${formatReports(file, reports).join('\n')}\n`,
    );
    return reports.some((r) => r.warnings.length > 0) ? 1 : 0;
  }
  const store = storeOf(values['state-dir'], values.kubeconfig);
  const namespace = values['control-plane-namespace'] ?? DEFAULT_CONTROL_PLANE_NAMESPACE;
  const d = describeCa(await requireCa(store, namespace), store, namespace, now);
  if (output === 'json') io.stdout(toJson(d));
  else {
    io.stdout(
      [
        `${d.mode} CA for trust domain ${d.trustDomain}, Secret ${d.secret} (${d.file})`,
        ...formatReports('signer chain', d.signer),
        ...formatReports('trust bundle', d.trustBundle),
        ...(d.rotation ? formatRotation(d.rotation) : []),
        '',
      ].join('\n'),
    );
  }
  return [...d.signer, ...d.trustBundle].some((r) => r.warnings.length > 0) ? 1 : 0;
}

async function runRotate(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, { ...COMMON, force: { type: 'boolean' } });
  const output = outputOf(values.output);
  const step = positionals[0] ?? 'status';
  const store = storeOf(values['state-dir'], values.kubeconfig);
  const namespace = values['control-plane-namespace'] ?? DEFAULT_CONTROL_PLANE_NAMESPACE;
  const stored = await requireCa(store, namespace);
  if (stored.mode !== 'self-signed') {
    throw new KmtlsError(
      'KMTLS_PKI_ROTATION_STEP',
      'this CA is a plug-in CA (cacerts): its root belongs to your PKI; rotate it there and run kmtls ca init --from-cacerts with the new files',
    );
  }
  const now = Date.now();
  let state = stored.state;
  switch (step) {
    case 'status':
      break;
    case 'begin':
      state = beginRotation(state, { nowMs: now, random: randomBytes });
      break;
    case 'switch':
      state = switchSigner(state, { nowMs: now });
      break;
    case 'retire':
      state = retireOldRoot(state, { nowMs: now, force: values.force === true });
      break;
    case 'abort':
      state = abortRotation(state);
      break;
    default:
      throw new KmtlsError(
        'KMTLS_CLI_USAGE',
        `unknown rotate step: ${JSON.stringify(step)} (status, begin, switch, retire, abort)`,
      );
  }
  if (state !== stored.state) await saveCa(store, { mode: 'self-signed', state }, namespace);
  const status = rotationStatus(state, now);
  io.stdout(output === 'json' ? toJson({ step, ...status }) : `${formatRotation(status).join('\n')}\n`);
  return 0;
}

export async function runCa(argv: readonly string[], io: CommandIo): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'init':
      return runInit(rest, io);
    case 'issue':
      return runIssue(rest, io);
    case 'inspect':
      return runInspect(rest, io);
    case 'rotate':
      return runRotate(rest, io);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      io.stdout(CA_USAGE);
      return sub === undefined ? 2 : 0;
    default:
      throw new KmtlsError('KMTLS_CLI_USAGE', `unknown ca subcommand: ${JSON.stringify(sub)}\n\n${CA_USAGE}`);
  }
}
