import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { DirectorySource } from '../config/index.js';
import type { Watched } from '../controlplane/index.js';
import {
  ControlPlane,
  ControlPlaneMetrics,
  meteredObserver,
  startControlPlaneAdmin,
  startControlPlaneServer,
} from '../controlplane/index.js';
import { KmtlsError } from '../errors.js';
import type { SpiffeId } from '../identity/index.js';
import { DEFAULT_TRUST_DOMAIN, parseSpiffeId } from '../identity/index.js';
import { loadKubeConfig, startInjectionWebhook, startKubeControlPlane } from '../kube/index.js';
import type { Placement } from '../mesh/index.js';
import { controlPlaneIdentity, placementSchema } from '../mesh/index.js';
import {
  BootstrapTokenAuthenticator,
  CertificateAuthority,
  ClientCertificateAuthenticator,
  caToSecret,
  createRoot,
  FileSecretStore,
  initialCaState,
  loadCa,
  MAX_LEAF_TTL_MS,
  materialOf,
  parseDuration,
  saveCa,
  writeFileAtomic,
} from '../pki/index.js';
import { parseAddress } from '../proxy/index.js';
import { parseCommandArgs } from './args.js';
import type { CommandIo } from './io.js';

export const CONTROLPLANE_USAGE = `Usage:
  kmtls controlplane --dir DIR --state-dir STATE [--listen ADDR] [--admin ADDR]
                     [--placement FILE] [--tokens FILE] [--trust-domain TD]
                     [--root-namespace NS] [--leaf-ttl 24h] [--log-level info]
  kmtls controlplane --source kubernetes [--kubeconfig FILE] [--namespace NS] [--pod-name NAME]
                     [--listen ADDR] [--admin ADDR] [--webhook ADDR] [--no-interception]
                     [--trust-domain TD] [--root-namespace NS] [--log-level info]

Serves the mesh CA and a ProxyConfig stream per sidecar over mTLS, from the manifests in DIR (watched;
a file that becomes invalid is reported and its last good version keeps serving).
  --state-dir   where the CA lives (Secret kmtls-system/kmtls-ca; created on first run) and where
                root-cert.pem is written for sidecars to verify the control plane
  --listen      the mTLS API (default 127.0.0.1:15012)
  --admin       /ready /metrics /status over plain HTTP (default 127.0.0.1:15014)
  --placement   JSON: where each pod runs (written by kmtls up)
  --tokens      JSON: bootstrap token digests → identity (written by kmtls up)

With --source kubernetes it reads the cluster (informers), keeps the CA in Secret NS/kmtls-ca (or
uses the plug-in CA in NS/cacerts), authenticates sidecars with TokenReview, serves the injection
webhook (--webhook, default 0.0.0.0:15017), and on the replica holding the Lease publishes the root
bundle ConfigMap kmtls-ca-root-cert in every namespace and issues opt-in TLS Secrets.
  --namespace   default $POD_NAMESPACE, else kmtls-system
  --listen      default 0.0.0.0:15012;  --admin default 0.0.0.0:15014
`;

async function readJson(file: string): Promise<unknown> {
  return JSON.parse(await readFile(file, 'utf8')) as unknown;
}

/** The placement file, watched: a bad version is reported and the last good one stays. */
export async function watchPlacement(
  file: string | undefined,
  onError: (message: string) => void,
): Promise<Watched<Placement> & { close(): void }> {
  let current: Placement = { pods: [] };
  const listeners = new Set<(p: Placement) => void>();
  if (!file) return { current: () => current, subscribe: () => () => {}, close: () => {} };
  let lastText = '';
  const read = async () => {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      return;
    }
    if (text === lastText) return;
    lastText = text;
    try {
      const parsed = placementSchema.safeParse(JSON.parse(text));
      if (!parsed.success) {
        const first = parsed.error.issues[0];
        onError(
          `placement ${file} refused: ${first?.path.map(String).join('.') || '(root)'}: ${first?.message ?? 'bad shape'}`,
        );
        return;
      }
      current = parsed.data;
      for (const l of listeners) l(current);
    } catch (err) {
      onError(`placement ${file} refused: ${(err as Error).message.split('\n')[0]}`);
    }
  };
  await read();
  const w = watch(path.dirname(file), () => void read());
  return {
    current: () => current,
    subscribe: (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    close: () => w.close(),
  };
}

async function readTokens(file: string | undefined): Promise<Record<string, SpiffeId>> {
  if (!file) return {};
  let raw: unknown;
  try {
    raw = await readJson(file);
  } catch {
    return {};
  }
  const out: Record<string, SpiffeId> = {};
  const tokens = (raw as { tokens?: Record<string, string> }).tokens ?? {};
  for (const [digest, uri] of Object.entries(tokens)) {
    const id = parseSpiffeId(uri);
    if (id.ok) out[digest] = id.id;
  }
  return out;
}

/** Long-running: resolves with an exit code when SIGINT/SIGTERM stops it. */
export async function runControlPlane(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    source: { type: 'string' },
    kubeconfig: { type: 'string' },
    namespace: { type: 'string' },
    'pod-name': { type: 'string' },
    webhook: { type: 'string' },
    'no-interception': { type: 'boolean' },
    dir: { type: 'string' },
    'state-dir': { type: 'string' },
    listen: { type: 'string' },
    admin: { type: 'string' },
    placement: { type: 'string' },
    tokens: { type: 'string' },
    'trust-domain': { type: 'string' },
    'root-namespace': { type: 'string' },
    'leaf-ttl': { type: 'string' },
    'log-level': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  const leafTtlMs = leafTtl(values['leaf-ttl']);
  if (values.help) {
    io.stdout(CONTROLPLANE_USAGE);
    return 0;
  }
  if (values.source !== undefined && values.source !== 'kubernetes' && values.source !== 'directory')
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `unknown --source ${JSON.stringify(values.source)} (directory or kubernetes)`,
    );
  if (values.source === 'kubernetes') return runKubernetes({ ...values, leafTtlMs });
  if (!values.dir || !values['state-dir'])
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `kmtls controlplane needs --dir DIR and --state-dir STATE\n\n${CONTROLPLANE_USAGE}`,
    );
  const listen = parseAddress(values.listen ?? '127.0.0.1:15012');
  const adminAddress = parseAddress(values.admin ?? '127.0.0.1:15014');
  const log = pino({ level: values['log-level'] ?? 'info', base: null }).child({ component: 'controlplane' });
  const clock = { now: Date.now };
  const stateDir = values['state-dir'];
  const trustDomain = values['trust-domain'] ?? DEFAULT_TRUST_DOMAIN;

  // The CA: created on first run, kept across restarts.
  const store = new FileSecretStore(stateDir);
  let stored = await loadCa(store);
  if (!stored) {
    stored = {
      mode: 'self-signed',
      state: initialCaState(trustDomain, createRoot({ trustDomain, now: clock.now(), random: randomBytes })),
    };
    await saveCa(store, stored);
    log.info({ trustDomain, secret: store.pathOf('kmtls-system', 'kmtls-ca') }, 'created the mesh CA');
  } else {
    log.info({ trustDomain: materialOf(stored).trustDomain }, 'loaded the mesh CA');
  }
  const ca = new CertificateAuthority(materialOf(stored), { clock, random: randomBytes });
  await writeFileAtomic(path.join(stateDir, 'root-cert.pem'), Buffer.from(ca.trustBundlePem()), 0o644);

  // The control plane's own serving certificate, from its CA; reissued at half its life.
  const cpId = parseSpiffeId(controlPlaneIdentity(ca.trustDomain));
  if (!cpId.ok) throw new KmtlsError('KMTLS_PKI_BAD_IDENTITY', cpId.message);
  // The CA that signs now: the startup one until the control plane exists, then whatever the CA
  // watcher last gave it (cp.setCa), so renewals and the serving certificate follow a rotation.
  let cpRef: ControlPlane | undefined;
  const currentCa = (): CertificateAuthority => cpRef?.ca ?? ca;
  const issueServing = () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const issued = currentCa().signPublicKey(publicKey.export({ format: 'der', type: 'spki' }), {
      identities: [cpId.id],
      method: 'operator',
    });
    return {
      certPem: issued.chainPem,
      keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      notAfter: issued.notAfter,
    };
  };
  let serving = issueServing();

  const tokensFile = values.tokens;
  const bootstrap = new BootstrapTokenAuthenticator(randomBytes, () => readTokens(tokensFile));
  bootstrap.load(await readTokens(tokensFile));
  // kmtls up rewrites tokens.json when it mints or revokes (a pod removed, or its identity changed):
  // load it again so a revoked token stops working, not only when an unknown token comes in.
  let tokensText = '';
  const reloadTokens = () => {
    if (!tokensFile) return;
    void readFile(tokensFile, 'utf8')
      .then(async (text) => {
        if (text === tokensText) return;
        tokensText = text;
        bootstrap.load(await readTokens(tokensFile));
      })
      .catch(() => {}); // Not there (yet): keep what is loaded.
  };
  const tokensWatch = tokensFile ? watch(path.dirname(tokensFile), reloadTokens) : undefined;
  tokensWatch?.on('error', () => {});
  const authenticators = [
    new ClientCertificateAuthenticator(
      () => ({ roots: currentCa().material.trustBundle, trustDomains: [currentCa().trustDomain] }),
      clock,
    ),
    bootstrap,
  ];

  const source = await DirectorySource.open(values.dir);
  const reportErrors = () => {
    for (const e of source.current().errors) {
      log.error(
        {
          code: 'KMTLS_MANIFEST_REFUSED',
          file: e.file,
          servingLastGood: e.servingLastGood,
          problems: e.diagnostics.map((d) => `${d.location?.line ?? '?'}: ${d.code}: ${d.message}`),
        },
        e.servingLastGood
          ? 'manifest refused; its last good version keeps serving'
          : 'manifest refused; it has no good version yet',
      );
    }
  };
  reportErrors();
  source.subscribe(reportErrors);
  const placement = await watchPlacement(values.placement, (m) =>
    log.error({ code: 'KMTLS_CP_PLACEMENT_INVALID' }, m),
  );
  const metrics = new ControlPlaneMetrics();
  const cp = new ControlPlane({
    source,
    placement,
    ca,
    authenticators,
    clock,
    mesh: { trustDomain: ca.trustDomain, rootNamespace: values['root-namespace'] ?? 'istio-system' },
    ...(leafTtlMs ? { leafTtlMs } : {}),
    observer: meteredObserver(metrics, log),
  });
  cpRef = cp;
  const api = await startControlPlaneServer({ controlPlane: cp, ca, clock, listen, serving });
  // A rotation step (`kmtls ca rotate ... --state-dir`) changes the CA Secret: sign with the new
  // state, hand sidecars the new trust bundle, and keep root-cert.pem in step.
  let caText = JSON.stringify(caToSecret(stored, 'kmtls-system').data);
  const watchCa = setInterval(() => {
    void loadCa(store)
      .then(async (now) => {
        if (!now) return;
        const text = JSON.stringify(caToSecret(now, 'kmtls-system').data);
        if (text === caText) return;
        caText = text;
        const next = new CertificateAuthority(materialOf(now), { clock, random: randomBytes });
        cp.setCa(next);
        // The serving certificate must chain to what sidecars now trust: issue it from the new CA.
        serving = issueServing();
        api.setServing(serving);
        await writeFileAtomic(
          path.join(stateDir, 'root-cert.pem'),
          Buffer.from(next.trustBundlePem()),
          0o644,
        );
        log.info(
          { roots: next.material.trustBundle.length },
          'the CA changed; reloaded and pushed to sidecars',
        );
      })
      .catch((err: unknown) =>
        log.error({ err: (err as Error).message }, 'cannot read the CA Secret; keeping the current CA'),
      );
  }, 2_000);
  watchCa.unref();
  const renewServing = setInterval(() => {
    serving = issueServing();
    api.setServing(serving);
  }, 6 * 3_600_000);
  renewServing.unref();
  // pid and stateDir in /status: `kmtls up` checks that what answers is the process it started.
  const admin = await startControlPlaneAdmin({
    controlPlane: cp,
    metrics,
    listen: adminAddress,
    extra: () => ({ pid: process.pid, stateDir: path.resolve(stateDir) }),
  });
  log.info(
    {
      listen: `${listen.host}:${listen.port}`,
      admin: `${adminAddress.host}:${adminAddress.port}`,
      version: cp.status().version,
    },
    'control plane ready',
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  clearInterval(renewServing);
  clearInterval(watchCa);
  tokensWatch?.close();
  cp.close();
  source.close();
  placement.close();
  admin.closeAllConnections();
  admin.close();
  await api.close();
  log.info('control plane stopped');
  return 0;
}

async function runKubernetes(values: {
  kubeconfig?: string | undefined;
  namespace?: string | undefined;
  'pod-name'?: string | undefined;
  listen?: string | undefined;
  admin?: string | undefined;
  webhook?: string | undefined;
  'no-interception'?: boolean | undefined;
  'trust-domain'?: string | undefined;
  'root-namespace'?: string | undefined;
  'log-level'?: string | undefined;
  leafTtlMs: number | undefined;
}): Promise<number> {
  const log = pino({ level: values['log-level'] ?? 'info', base: null }).child({ component: 'controlplane' });
  const kc = loadKubeConfig(values.kubeconfig);
  const namespace = values.namespace ?? process.env.POD_NAMESPACE ?? 'kmtls-system';
  const webhook = parseAddress(values.webhook ?? '0.0.0.0:15017');
  const cp = await startKubeControlPlane({
    kc,
    namespace,
    podName: values['pod-name'] ?? process.env.POD_NAME ?? hostname(),
    trustDomain: values['trust-domain'] ?? DEFAULT_TRUST_DOMAIN,
    rootNamespace: values['root-namespace'] ?? 'istio-system',
    listen: parseAddress(values.listen ?? '0.0.0.0:15012'),
    admin: parseAddress(values.admin ?? '0.0.0.0:15014'),
    log,
    ...(values['no-interception']
      ? {}
      : { interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' } }),
    extraServers: (ctx) => startInjectionWebhook({ ...ctx, kc, namespace, listen: webhook, log }),
  });
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await cp.stop();
  log.info('control plane stopped');
  return 0;
}

/** `--leaf-ttl`: a duration within the CA's limits (default: the CA's 24h). */
function leafTtl(text: string | undefined): number | undefined {
  if (text === undefined || text === '') return undefined;
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0 || ms > MAX_LEAF_TTL_MS)
    throw new KmtlsError(
      'KMTLS_PKI_TTL_INVALID',
      `--leaf-ttl ${JSON.stringify(text)}: a duration up to 90d, e.g. 24h`,
    );
  return ms;
}
