import { generateKeyPairSync, randomBytes } from 'node:crypto';
import type { KubeConfig, KubernetesObject, V1ConfigMap, V1Namespace } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import {
  ControlPlane,
  ControlPlaneMetrics,
  loopbackCaller,
  meteredObserver,
  startControlPlaneAdmin,
  startControlPlaneServer,
} from '../controlplane/index.js';
import { KmtlsError } from '../errors.js';
import { parseSpiffeId } from '../identity/index.js';
import { controlPlaneIdentity } from '../mesh/index.js';
import type { StoredCa } from '../pki/index.js';
import {
  CA_SECRET_NAME,
  CertificateAuthority,
  ClientCertificateAuthenticator,
  caMaterialFromFiles,
  caToSecret,
  createRoot,
  initialCaState,
  loadCa,
  materialOf,
} from '../pki/index.js';
import { KubeWatch } from './client.js';
import { LEADER_ELECTION_LEASE } from './constants.js';
import { LeaderElector } from './leader.js';
import { MANAGED_BY, ROOT_CONFIGMAP, RootPublisher } from './publisher.js';
import { KubeSecretStore } from './secret-store.js';
import { KubeSource } from './source.js';
import type { TlsSecretWant } from './tls-secrets.js';
import {
  defaultTlsSecretName,
  TLS_SECRET_NAME,
  TLS_SECRET_OPT_IN,
  TlsSecretReconciler,
} from './tls-secrets.js';
import { TokenReviewAuthenticator } from './token-review.js';

/** Istio's plug-in CA Secret: when present in the control plane's namespace, it is the CA. */
export const CACERTS_SECRET = 'cacerts';

export interface KubeControlPlaneOptions {
  readonly kc: KubeConfig;
  /** The control plane's own namespace (where kmtls-ca, cacerts and the Lease live). */
  readonly namespace: string;
  /** This replica's name, for the Lease. */
  readonly podName: string;
  readonly trustDomain: string;
  readonly rootNamespace: string;
  readonly listen: { host: string; port: number };
  readonly admin: { host: string; port: number };
  readonly log: Logger;
  /** How sidecars intercept traffic; set in a cluster (iptables), absent for tests without it. */
  readonly interception?: { readonly inbound: string; readonly outbound: string };
  /** Extra work once the CA is known: the injection webhook server, for one. */
  readonly extraServers?: (ctx: {
    ca: () => CertificateAuthority;
    source: KubeSource;
    serving: (
      dnsNames: readonly string[],
      ipAddresses: readonly string[],
    ) => { certPem: string; keyPem: string };
  }) => Promise<{ close(): Promise<void>; refresh?(): Promise<void> | void }>;
  readonly leaseDurationMs?: number;
  /** How often every replica re-reads the CA Secret (default 2 s). */
  readonly caSyncMs?: number;
  /** How often the leader re-checks what it keeps (CA Secret, root ConfigMaps, caBundle, TLS Secrets). */
  readonly resyncMs?: number;
  /** Lifetime of sidecars' certificates (default: the CA's 24h). */
  readonly leafTtlMs?: number;
  /** Lifetime of the opt-in TLS Secrets' certificates (default 24h). */
  readonly tlsSecretTtlMs?: number;
}

/**
 * Loads the CA the cluster has: the `cacerts` plug-in Secret first (Istio's layout), else kmtls's own
 * `kmtls-ca` Secret, else creates one — with create-if-absent, so replicas starting together agree
 * on one CA instead of each writing its own.
 */
export async function loadOrCreateClusterCa(
  store: KubeSecretStore,
  namespace: string,
  trustDomain: string,
  log: Logger,
): Promise<StoredCa> {
  const cacerts = await store.get(namespace, CACERTS_SECRET);
  if (cacerts) {
    const text = (k: string) => {
      const v = cacerts.data[k];
      if (!v)
        throw new KmtlsError('KMTLS_PKI_CACERTS_INVALID', `Secret ${namespace}/${CACERTS_SECRET} lacks ${k}`);
      return v.toString('utf8');
    };
    const files = {
      caCertPem: text('ca-cert.pem'),
      caKeyPem: text('ca-key.pem'),
      rootCertPem: text('root-cert.pem'),
      certChainPem: cacerts.data['cert-chain.pem']?.toString('utf8') ?? text('ca-cert.pem'),
    };
    log.info({ secret: `${namespace}/${CACERTS_SECRET}` }, 'using the plug-in CA');
    return {
      mode: 'plug-in',
      material: caMaterialFromFiles({ trustDomain, ...files }),
      files,
      longestLeafTtlMs: 0,
    };
  }
  const existing = await loadCa(store, namespace);
  if (existing) return existing;
  const created: StoredCa = {
    mode: 'self-signed',
    state: initialCaState(trustDomain, createRoot({ trustDomain, now: Date.now(), random: randomBytes })),
  };
  if (await store.createIfAbsent(caToSecret(created, namespace))) {
    log.info({ secret: `${namespace}/${CA_SECRET_NAME}`, trustDomain }, 'created the mesh CA');
    return created;
  }
  const winner = await loadCa(store, namespace);
  if (!winner)
    throw new KmtlsError(
      'KMTLS_KUBE_API',
      `Secret ${namespace}/${CA_SECRET_NAME} vanished while being created`,
    );
  return winner;
}

/**
 * The control plane in a cluster: resources from informers, CA in Secrets, sidecars authenticated
 * by TokenReview, and — on the replica holding the Lease — the writers: the CA Secret (recreated if
 * deleted), the root bundle ConfigMap in every namespace, the webhook's caBundle, and opt-in TLS
 * Secrets with their RBAC. Every replica serves signing and config.
 */
export async function startKubeControlPlane(o: KubeControlPlaneOptions): Promise<{ stop(): Promise<void> }> {
  const log = o.log;
  const store = new KubeSecretStore(o.kc);
  let stored = await loadOrCreateClusterCa(store, o.namespace, o.trustDomain, log);
  // The control plane's own identity is never issued to a workload (sidecars pin it for the control plane).
  const newCa = (s: StoredCa) =>
    new CertificateAuthority(materialOf(s), {
      clock: { now: Date.now },
      random: randomBytes,
      reservedIdentities: [controlPlaneIdentity(materialOf(s).trustDomain, o.namespace)],
    });
  let ca = newCa(stored);
  const cpId = parseSpiffeId(controlPlaneIdentity(ca.trustDomain, o.namespace));
  if (!cpId.ok) throw new KmtlsError('KMTLS_PKI_BAD_IDENTITY', cpId.message);
  const serving = (dnsNames: readonly string[] = [], ipAddresses: readonly string[] = []) => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const issued = ca.signPublicKey(
      publicKey.export({ format: 'der', type: 'spki' }),
      { identities: [cpId.id], method: 'operator' },
      { dnsNames, ipAddresses },
    );
    return {
      certPem: issued.chainPem,
      keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    };
  };

  const source = await KubeSource.open(o.kc, {
    log: (level, msg, fields) => log[level](fields ?? {}, msg),
  });
  const reportErrors = () => {
    for (const e of source.current().errors) {
      log.error(
        {
          code: 'KMTLS_MANIFEST_REFUSED',
          object: e.file,
          problems: e.diagnostics.map((d) => `${d.code}: ${d.message}`),
        },
        'object refused and ignored; the rest of the mesh keeps working',
      );
    }
  };
  reportErrors();
  source.subscribe(reportErrors);

  const metrics = new ControlPlaneMetrics();
  const observer = meteredObserver(metrics, log);
  const cp = new ControlPlane({
    source,
    placement: source.placementWatch,
    ca,
    authenticators: [
      new ClientCertificateAuthenticator(
        () => ({ roots: ca.material.trustBundle, trustDomains: [ca.trustDomain] }),
        {
          now: Date.now,
        },
      ),
      new TokenReviewAuthenticator(o.kc, ca.trustDomain),
    ],
    clock: { now: Date.now },
    mesh: { trustDomain: ca.trustDomain, rootNamespace: o.rootNamespace },
    ...(o.leafTtlMs ? { leafTtlMs: o.leafTtlMs } : {}),
    ...(o.interception ? { interception: o.interception } : {}),
    observer,
  });
  const apiServing = () =>
    serving(
      [`kmtls-controlplane.${o.namespace}.svc`, `kmtls-controlplane.${o.namespace}.svc.cluster.local`],
      [o.listen.host === '0.0.0.0' ? '127.0.0.1' : o.listen.host],
    );
  const api = await startControlPlaneServer({
    controlPlane: cp,
    ca,
    clock: { now: Date.now },
    listen: o.listen,
    serving: apiServing(),
    log,
  });
  // /status names every pod, IP and identity: in a cluster only callers on the pod's own loopback
  // (kubectl port-forward, kubectl exec) see it; /ready and /metrics stay open for probes and scrapes.
  const admin = await startControlPlaneAdmin({
    controlPlane: cp,
    metrics,
    listen: o.admin,
    statusAllowed: loopbackCaller,
    log,
  });
  const extra = o.extraServers ? await o.extraServers({ ca: () => ca, source, serving }) : undefined;

  // The writers, on the leader only.
  const publisher = new RootPublisher(o.kc, (level, msg, fields) => log[level](fields ?? {}, msg));
  const tls = new TlsSecretReconciler(
    o.kc,
    store,
    ca.trustDomain,
    (level, msg, fields) => log[level](fields ?? {}, msg),
    o.tlsSecretTtlMs,
  );
  const namespaces = new KubeWatch<V1Namespace>(
    o.kc,
    { apiVersion: 'v1', kind: 'Namespace', plural: 'namespaces', namespaced: false },
    { onChange: () => kick() },
  );
  const configMaps = new KubeWatch<V1ConfigMap>(
    o.kc,
    { apiVersion: 'v1', kind: 'ConfigMap', plural: 'configmaps', namespaced: true },
    {
      onChange: () => kick(),
      labelSelector: Object.entries(MANAGED_BY)
        .map(([k, v]) => `${k}=${v}`)
        .join(','),
      filter: (c) => c.metadata?.name === ROOT_CONFIGMAP,
    },
  );
  const managedSecrets = new KubeWatch<KubernetesObject>(
    o.kc,
    { apiVersion: 'v1', kind: 'Secret', plural: 'secrets', namespaced: true },
    { onChange: () => kick(), labelSelector: 'app.kubernetes.io/managed-by=kmtls' },
  );
  let running: Promise<void> = Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let dueAt = Number.POSITIVE_INFINITY;
  const kick = (delayMs = 50) => {
    if (!elector.isLeader || stopped) return;
    // The earliest deadline wins: a busy cluster's stream of events must not postpone the pass forever.
    const at = Date.now() + delayMs;
    if (timer && dueAt <= at) return;
    if (timer) clearTimeout(timer);
    dueAt = at;
    timer = setTimeout(() => {
      timer = undefined;
      dueAt = Number.POSITIVE_INFINITY;
      running = running.then(reconcile).catch((err: unknown) => {
        log.warn({ err: (err as Error).message }, 'reconcile failed; retrying');
        kick(2_000);
      });
    }, delayMs);
  };
  /**
   * Every replica follows the CA Secret (or the plug-in `cacerts`): a rotation step or a new plug-in
   * CA is picked up, signed with, pushed to sidecars and put in the serving certificates. Only the
   * leader writes the Secret back when someone deleted it.
   */
  const syncCa = async () => {
    let now: StoredCa | undefined;
    try {
      now =
        stored.mode === 'plug-in'
          ? await loadOrCreateClusterCa(store, o.namespace, o.trustDomain, log)
          : await loadCa(store, o.namespace);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot read the CA Secret; keeping the current CA');
      return;
    }
    if (!now) {
      if (elector.isLeader && stored.mode === 'self-signed') {
        await store.put(caToSecret(stored, o.namespace));
        log.warn(
          { secret: `${o.namespace}/${CA_SECRET_NAME}` },
          'the CA Secret was deleted; written again from memory',
        );
      }
      return;
    }
    if (
      JSON.stringify(caToSecret(now, o.namespace).data) ===
      JSON.stringify(caToSecret(stored, o.namespace).data)
    )
      return;
    stored = now;
    ca = newCa(stored);
    cp.setCa(ca);
    api.setServing(apiServing());
    await extra?.refresh?.();
    log.info(
      { roots: ca.material.trustBundle.length },
      'the CA changed (a rotation step?); reloaded and pushed to sidecars',
    );
    kick(0);
  };
  let syncing = Promise.resolve();
  const caTimer = setInterval(() => {
    syncing = syncing.then(syncCa).catch(() => {});
  }, o.caSyncMs ?? 2_000);
  caTimer.unref();
  // The serving certificate lives a day: a fresh one at a quarter of that.
  const servingTimer = setInterval(() => api.setServing(apiServing()), 6 * 3_600_000);
  servingTimer.unref();
  const reconcile = async () => {
    if (!elector.isLeader || stopped) return;
    const bundle = ca.trustBundlePem();
    const written = await publisher.publish(bundle, namespaces.list(), configMaps.list());
    if (written > 0)
      log.info({ configMaps: written }, `root bundle published as ConfigMap ${ROOT_CONFIGMAP}`);
    await publisher.patchWebhookCaBundle(bundle);
    const nextDue = await tls.reconcile(ca, tlsWants(source), Date.now());
    const wait = Math.max(200, Math.min(o.resyncMs ?? 30_000, nextDue - Date.now()));
    kick(wait);
  };
  const elector = new LeaderElector(o.kc, {
    namespace: o.namespace,
    name: LEADER_ELECTION_LEASE,
    identity: o.podName,
    ...(o.leaseDurationMs
      ? { leaseDurationMs: o.leaseDurationMs, renewEveryMs: Math.max(200, o.leaseDurationMs / 5) }
      : {}),
    onStartedLeading: () => kick(0),
    onStoppedLeading: () => {
      if (timer) clearTimeout(timer);
    },
    log: (msg, fields) => log.info(fields ?? {}, msg),
  });
  await Promise.all([namespaces.start(), configMaps.start(), managedSecrets.start()]);
  source.subscribe(() => kick());
  elector.start();
  log.info(
    {
      listen: `${o.listen.host}:${o.listen.port}`,
      admin: `${o.admin.host}:${o.admin.port}`,
      served: source.served.map((r) => `${r.kind} ${r.apiVersion}`),
    },
    'control plane ready (kubernetes)',
  );
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      clearInterval(caTimer);
      clearInterval(servingTimer);
      await syncing;
      await elector.stop();
      await running;
      await Promise.all([namespaces.stop(), configMaps.stop(), managedSecrets.stop()]);
      cp.close();
      source.close();
      await extra?.close();
      admin.closeAllConnections();
      admin.close();
      await api.close();
    },
  };
}

/** Who asked for a TLS Secret: ServiceAccounts and pods annotated `kmtls.io/tls-secret: "true"`. */
export function tlsWants(source: KubeSource): TlsSecretWant[] {
  const out = new Map<string, TlsSecretWant>();
  const r = source.current().resources;
  const claimed = new Map<string, string>();
  const add = (namespace: string, sa: string, annotations: Readonly<Record<string, string>>) => {
    if (annotations[TLS_SECRET_OPT_IN] !== 'true') return;
    const key = `${namespace}/${sa}`;
    // One Secret per ServiceAccount: the ServiceAccount's own annotation wins over a pod's.
    if (out.has(key)) return;
    const secret = annotations[TLS_SECRET_NAME] ?? defaultTlsSecretName(sa);
    // Two ServiceAccounts naming the same Secret: the first keeps it, the other gets none.
    const owner = claimed.get(`${namespace}/${secret}`);
    if (owner !== undefined && owner !== sa) return;
    claimed.set(`${namespace}/${secret}`, sa);
    out.set(key, { namespace, serviceAccount: sa, secret });
  };
  for (const sa of r.serviceAccounts) add(sa.meta.namespace, sa.meta.name, sa.meta.annotations);
  for (const p of r.podSources) add(p.meta.namespace, p.serviceAccount, p.podAnnotations);
  return [...out.values()].sort((a, b) =>
    `${a.namespace}/${a.secret}` < `${b.namespace}/${b.secret}` ? -1 : 1,
  );
}
