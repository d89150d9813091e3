import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { CoreV1Api, VersionApi } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { controlPlaneIdentity } from '../mesh/index.js';
import type { CertificateAuthority } from '../pki/index.js';
import { handleAdmissionReview } from './admission.js';
import { CONTROL_PLANE_NAME, CONTROL_PLANE_PORTS, WEBHOOK_PATH } from './constants.js';
import { DEFAULT_PROXY_IMAGE, supportsNativeSidecar } from './inject.js';
import type { KubeSource } from './source.js';

/** Where the API server sends AdmissionReviews (the MutatingWebhookConfiguration's path). */
export const INJECT_PATH = WEBHOOK_PATH;
const MAX_BODY = 4 * 1024 * 1024;

/**
 * Whether the cluster runs native sidecars: the API server and every node's kubelet at 1.29 or
 * later (kubelets may lag the API server by up to three minor versions, and an older kubelet would
 * run the sidecar as an init container that never ends, so the pod never starts).
 */
export async function clusterSupportsNativeSidecars(kc: KubeConfig): Promise<boolean> {
  try {
    if (!supportsNativeSidecar(await kc.makeApiClient(VersionApi).getCode())) return false;
    const nodes = (await kc.makeApiClient(CoreV1Api).listNode()).items;
    if (nodes.length === 0) return false;
    return nodes.every((n) => {
      const m = /^v?(\d+)\.(\d+)/.exec(n.status?.nodeInfo?.kubeletVersion ?? '');
      return m !== null && supportsNativeSidecar({ major: m[1]!, minor: m[2]! });
    });
  } catch {
    return false;
  }
}

/**
 * The sidecar injection webhook: HTTPS with a certificate from the mesh CA (the controller keeps the
 * configuration's caBundle in step), answering AdmissionReviews for pod creation. Namespace labels
 * come from the control plane's informer cache. An answer is always given: a pod the injector
 * refuses (a malformed interception annotation) is denied with the reason; anything unexpected is
 * allowed without a patch and logged, so a kmtls bug never blocks a pod silently.
 */
export async function startInjectionWebhook(opts: {
  ca: () => CertificateAuthority;
  source: KubeSource;
  serving: (
    dnsNames: readonly string[],
    ipAddresses: readonly string[],
  ) => { certPem: string; keyPem: string };
  kc: KubeConfig;
  namespace: string;
  listen: { host: string; port: number };
  log: Logger;
  image?: string;
  controlPlaneAddress?: string;
  nativeSidecar?: boolean;
  trustDomain?: string;
}): Promise<{ close(): Promise<void>; refresh(): void }> {
  const dns = [
    `kmtls-controlplane.${opts.namespace}.svc`,
    `kmtls-controlplane.${opts.namespace}.svc.cluster.local`,
  ];
  const ips = [
    '127.0.0.1',
    ...(opts.listen.host !== '0.0.0.0' && opts.listen.host !== '127.0.0.1' ? [opts.listen.host] : []),
  ];
  // Native sidecars where the cluster runs them (API server and every kubelet at 1.29+, checked at
  // start); KMTLS_NATIVE_SIDECAR=true or false overrides the check.
  const choice = process.env.KMTLS_NATIVE_SIDECAR ?? 'auto';
  const native =
    opts.nativeSidecar ??
    (choice === 'true' ? true : choice === 'false' ? false : await clusterSupportsNativeSidecars(opts.kc));
  const image = opts.image ?? process.env.KMTLS_PROXY_IMAGE ?? DEFAULT_PROXY_IMAGE;
  const controlPlaneAddress =
    opts.controlPlaneAddress ??
    process.env.KMTLS_INJECT_CONTROL_PLANE_ADDRESS ??
    `${CONTROL_PLANE_NAME}.${opts.namespace}.svc:${CONTROL_PLANE_PORTS.api.port}`;
  const labelsOf = (ns: string) =>
    opts.source.current().resources.namespaces.find((n) => n.meta.name === ns)?.meta.labels;
  const core = opts.kc.makeApiClient(CoreV1Api);
  const liveLabels = async (ns: string): Promise<Record<string, string> | undefined> => {
    try {
      return (await core.readNamespace({ name: ns })).metadata?.labels ?? {};
    } catch {
      return undefined; // The cache answers instead.
    }
  };
  const server = https.createServer(
    { ...toTls(opts.serving(dns, ips)), minVersion: 'TLSv1.2' },
    (req, res) => {
      if (req.method !== 'POST' || req.url?.split('?')[0] !== INJECT_PATH) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end('{"error":"not found"}\n');
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY) req.destroy();
        else chunks.push(c);
      });
      req.on('end', async () => {
        let answer: unknown;
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
          // The namespace's labels as the API server has them now: an informer cache a moment behind
          // (a namespace labelled just before the pod was created) would let a pod in unmeshed.
          const ns = (body as { request?: { namespace?: unknown } }).request?.namespace;
          const live = typeof ns === 'string' ? await liveLabels(ns) : undefined;
          answer = handleAdmissionReview(body, {
            image,
            nativeSidecar: native,
            controlPlaneAddress,
            namespaceLabels: (n) => (n === ns && live ? live : labelsOf(n)),
            trustDomain: opts.ca().trustDomain,
            controlPlaneIdentity: controlPlaneIdentity(opts.ca().trustDomain, opts.namespace),
          });
          const r = (
            answer as {
              response?: { allowed?: boolean; patch?: string; uid?: string; status?: { message?: string } };
            }
          ).response;
          const request = (
            body as {
              request?: {
                namespace?: string;
                object?: { metadata?: { name?: string; generateName?: string } };
              };
            }
          ).request;
          const pod = `${request?.namespace}/${request?.object?.metadata?.name ?? `${request?.object?.metadata?.generateName ?? ''}*`}`;
          if (r?.allowed === false)
            opts.log.warn({ pod, reason: r.status?.message }, 'injection refused the pod');
          else if (r?.patch) opts.log.info({ pod, nativeSidecar: native }, 'sidecar injected');
        } catch (err) {
          opts.log.error({ err: (err as Error).message }, 'unreadable AdmissionReview');
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: (err as Error).message }));
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
      });
    },
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  // The certificate lives a day: take a fresh one at half of it.
  const renew = setInterval(() => server.setSecureContext(toTls(opts.serving(dns, ips))), 12 * 3_600_000);
  renew.unref();
  opts.log.info(
    { listen: `${opts.listen.host}:${opts.listen.port}`, nativeSidecar: native, image },
    'injection webhook ready',
  );
  return {
    // A new CA: a certificate from it at once (the controller puts its root in the caBundle).
    refresh: () => server.setSecureContext(toTls(opts.serving(dns, ips))),
    close: async () => {
      clearInterval(renew);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function toTls(s: { certPem: string; keyPem: string }): { cert: string; key: string } {
  return { cert: s.certPem, key: s.keyPem };
}
