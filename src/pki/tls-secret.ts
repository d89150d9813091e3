import { generateKeyPairSync } from 'node:crypto';
import type { SpiffeId } from '../identity/index.js';
import type { CertificateAuthority } from './ca.js';
import { DEFAULT_LEAF_TTL_MS } from './ca.js';
import type { RandomBytes } from './clock.js';
import { createCsr } from './csr.js';
import { renewalDelayMs } from './renewal.js';
import type { Secret, SecretStore } from './secret-store.js';
import { SECRET_TYPE_TLS } from './secret-store.js';
import { pemBlocks } from './x509.js';
import { readCertificate } from './x509-read.js';

/** Annotations on a `kubernetes.io/tls` Secret that kmtls issues, so `kubectl get secret -o yaml` says what it is. */
export const TLS_SECRET_ANNOTATION = {
  identity: 'kmtls.io/identity',
  notAfter: 'kmtls.io/not-after',
  renewAt: 'kmtls.io/renew-at',
  serial: 'kmtls.io/serial',
} as const;

export const MANAGED_BY_LABEL = { 'app.kubernetes.io/managed-by': 'kmtls' } as const;

/** A workload that terminates mTLS itself asks for its certificate as a Secret. */
export interface TlsSecretRequest {
  readonly namespace: string;
  readonly name: string;
  readonly identity: SpiffeId;
  readonly ttlMs?: number;
}

export type TlsSecretAction = 'created' | 'renewed' | 'unchanged';

export interface TlsSecretResult {
  readonly action: TlsSecretAction;
  /** Why it was (re)issued, or why it was left alone. */
  readonly reason: string;
  readonly notAfter: Date;
  /** When the next renewal is due; the caller schedules its next pass by this. */
  readonly renewAtMs: number;
}

function dueReason(
  secret: Secret,
  request: TlsSecretRequest,
  trustBundlePem: string,
  nowMs: number,
): string | undefined {
  if (secret.type !== SECRET_TYPE_TLS) return `it has type ${secret.type}, not ${SECRET_TYPE_TLS}`;
  const crt = secret.data['tls.crt'];
  if (!crt || !secret.data['tls.key']) return 'it lacks tls.crt or tls.key';
  let leaf: ReturnType<typeof readCertificate>;
  try {
    const [first] = pemBlocks(crt.toString('utf8'));
    if (!first) return 'tls.crt holds no certificate';
    leaf = readCertificate(first);
  } catch {
    return 'tls.crt is unreadable';
  }
  if (!leaf.uris.includes(request.identity.uri))
    return `it is for ${leaf.uris.join(', ') || 'no identity'}, not ${request.identity.uri}`;
  if ((secret.data['ca.crt']?.toString('utf8') ?? '') !== trustBundlePem) return 'the trust bundle changed';
  const renewAt = Date.parse(secret.annotations[TLS_SECRET_ANNOTATION.renewAt] ?? '');
  if (!Number.isFinite(renewAt)) return 'it has no renewal time';
  if (nowMs >= leaf.notAfter.getTime()) return 'it expired';
  if (nowMs >= renewAt) return 'it is due for renewal';
  return undefined;
}

/**
 * Makes sure a `kubernetes.io/tls` Secret holds a valid certificate for the identity: `tls.crt` (leaf
 * and chain), `tls.key`, `ca.crt` (the trust bundle), annotated with identity, expiry and renewal
 * time. Issues when the Secret is missing, for another identity, stale, due (50 % of its lifetime,
 * ±1 %), or when the trust bundle changed; otherwise leaves it untouched. The key is new each time.
 */
export async function ensureTlsSecret(
  store: SecretStore,
  ca: CertificateAuthority,
  request: TlsSecretRequest,
  deps: { nowMs: number; random: () => number; randomBytes?: RandomBytes },
): Promise<TlsSecretResult> {
  const bundle = ca.trustBundlePem();
  const existing = await store.get(request.namespace, request.name);
  if (existing) {
    const reason = dueReason(existing, request, bundle, deps.nowMs);
    if (reason === undefined) {
      return {
        action: 'unchanged',
        reason: 'valid and not yet due',
        notAfter: new Date(existing.annotations[TLS_SECRET_ANNOTATION.notAfter] ?? 0),
        renewAtMs: Date.parse(existing.annotations[TLS_SECRET_ANNOTATION.renewAt] ?? ''),
      };
    }
    return issueInto(store, ca, request, bundle, deps, 'renewed', reason, existing);
  }
  return issueInto(store, ca, request, bundle, deps, 'created', 'it did not exist', undefined);
}

async function issueInto(
  store: SecretStore,
  ca: CertificateAuthority,
  request: TlsSecretRequest,
  bundle: string,
  deps: { nowMs: number; random: () => number },
  action: TlsSecretAction,
  reason: string,
  existing: Secret | undefined,
): Promise<TlsSecretResult> {
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const issued = ca.sign(
    createCsr(key, { uris: [request.identity.uri] }),
    { identities: [request.identity], method: 'controller' },
    { ttlMs: request.ttlMs ?? DEFAULT_LEAF_TTL_MS },
  );
  const renewAtMs =
    deps.nowMs +
    renewalDelayMs({
      notBeforeMs: issued.notBefore.getTime(),
      notAfterMs: issued.notAfter.getTime(),
      nowMs: deps.nowMs,
      random: deps.random,
    });
  await store.put({
    namespace: request.namespace,
    name: request.name,
    type: SECRET_TYPE_TLS,
    // Labels and annotations others put on the Secret survive; ours are refreshed.
    labels: { ...(existing?.labels ?? {}), ...MANAGED_BY_LABEL },
    annotations: {
      ...(existing?.annotations ?? {}),
      [TLS_SECRET_ANNOTATION.identity]: request.identity.uri,
      [TLS_SECRET_ANNOTATION.notAfter]: issued.notAfter.toISOString(),
      [TLS_SECRET_ANNOTATION.renewAt]: new Date(renewAtMs).toISOString(),
      [TLS_SECRET_ANNOTATION.serial]: issued.serialHex,
    },
    data: {
      'tls.crt': Buffer.from(issued.chainPem),
      'tls.key': Buffer.from(key.export({ format: 'pem', type: 'pkcs8' })),
      'ca.crt': Buffer.from(bundle),
    },
  });
  return { action, reason, notAfter: issued.notAfter, renewAtMs };
}
