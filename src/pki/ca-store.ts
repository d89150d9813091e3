import type { KeyObject } from 'node:crypto';
import { createPrivateKey } from 'node:crypto';
import { KmtlsError } from '../errors.js';
import type { CaMaterial } from './ca.js';
import { caMaterialFromFiles, DEFAULT_LEAF_TTL_MS, selfSignedMaterial } from './ca.js';
import type { RootKeyPair, RotationState, SelfSignedCaState } from './rotation.js';
import type { Secret, SecretStore } from './secret-store.js';
import { SECRET_TYPE_OPAQUE } from './secret-store.js';
import { pemBlocks, toPem } from './x509.js';

/** The control plane's namespace, where the CA Secret lives. */
export const DEFAULT_CONTROL_PLANE_NAMESPACE = 'kmtls-system';
/** The CA's own Secret: Istio's `cacerts` keys plus the trust bundle and rotation state. */
export const CA_SECRET_NAME = 'kmtls-ca';

const ANNOTATION = {
  mode: 'kmtls.io/ca-mode',
  trustDomain: 'kmtls.io/trust-domain',
  phase: 'kmtls.io/rotation-phase',
  since: 'kmtls.io/rotation-since',
  retireAfter: 'kmtls.io/rotation-retire-after',
  longestLeafTtl: 'kmtls.io/longest-leaf-ttl-ms',
} as const;

/** The CA as stored: either a self-signed root kmtls manages (and can rotate) or a plug-in CA from `cacerts`. */
export type StoredCa =
  | { readonly mode: 'self-signed'; readonly state: SelfSignedCaState }
  | {
      readonly mode: 'plug-in';
      readonly material: CaMaterial;
      readonly files: CacertsFiles;
      readonly longestLeafTtlMs: number;
    };

/** Istio's plug-in CA layout (`cacerts` Secret, or files of these names). */
export interface CacertsFiles {
  readonly caCertPem: string;
  readonly caKeyPem: string;
  readonly rootCertPem: string;
  readonly certChainPem: string;
}

export function materialOf(ca: StoredCa): CaMaterial {
  return ca.mode === 'plug-in'
    ? ca.material
    : selfSignedMaterial(ca.state.trustDomain, ca.state.root, ca.state.trustBundle);
}

function keyPem(key: KeyObject): Buffer {
  return Buffer.from(key.export({ format: 'pem', type: 'pkcs8' }));
}

/** The Secret for a CA. Keys and certificates are PEM, as in Istio's `cacerts`. */
export function caToSecret(ca: StoredCa, namespace: string): Secret {
  const annotations: Record<string, string> = { [ANNOTATION.mode]: ca.mode };
  const data: Record<string, Buffer> = {};
  if (ca.mode === 'plug-in') {
    annotations[ANNOTATION.trustDomain] = ca.material.trustDomain;
    annotations[ANNOTATION.longestLeafTtl] = String(ca.longestLeafTtlMs);
    data['ca-cert.pem'] = Buffer.from(ca.files.caCertPem);
    data['ca-key.pem'] = Buffer.from(ca.files.caKeyPem);
    data['root-cert.pem'] = Buffer.from(ca.files.rootCertPem);
    data['cert-chain.pem'] = Buffer.from(ca.files.certChainPem);
  } else {
    const s = ca.state;
    annotations[ANNOTATION.trustDomain] = s.trustDomain;
    annotations[ANNOTATION.longestLeafTtl] = String(s.longestLeafTtlMs);
    annotations[ANNOTATION.phase] = s.rotation.phase;
    const rootPem = Buffer.from(toPem(s.root.certificate));
    data['ca-cert.pem'] = rootPem;
    data['ca-key.pem'] = keyPem(s.root.key);
    data['root-cert.pem'] = rootPem;
    data['cert-chain.pem'] = rootPem;
    data['trust-bundle.pem'] = Buffer.from(s.trustBundle.map((c) => toPem(c)).join(''));
    if (s.rotation.phase === 'distributing') {
      annotations[ANNOTATION.since] = String(s.rotation.sinceMs);
      data['next-root-cert.pem'] = Buffer.from(toPem(s.rotation.next.certificate));
      data['next-root-key.pem'] = keyPem(s.rotation.next.key);
    } else if (s.rotation.phase === 'signing-with-new') {
      annotations[ANNOTATION.since] = String(s.rotation.sinceMs);
      annotations[ANNOTATION.retireAfter] = String(s.rotation.retireAfterMs);
      data['previous-root-cert.pem'] = Buffer.from(toPem(s.rotation.previous));
    }
  }
  return {
    namespace,
    name: CA_SECRET_NAME,
    type: SECRET_TYPE_OPAQUE,
    labels: { 'app.kubernetes.io/managed-by': 'kmtls' },
    annotations,
    data,
  };
}

function corrupt(secret: Secret, reason: string, cause?: unknown): KmtlsError {
  return new KmtlsError(
    'KMTLS_STATE_CORRUPT',
    `CA state is damaged: Secret ${secret.namespace}/${secret.name} (${reason}); restore it from a backup, or move it away and run kmtls ca init`,
    cause === undefined ? undefined : { cause },
  );
}

/** Reads a CA Secret back, checking every part; a damaged Secret is an error, never a half-loaded CA. */
export function caFromSecret(secret: Secret): StoredCa {
  const text = (key: string): string => {
    const v = secret.data[key];
    if (v === undefined) throw corrupt(secret, `missing ${key}`);
    return v.toString('utf8');
  };
  const cert = (key: string): Buffer => {
    const blocks = pemBlocks(text(key));
    if (blocks.length !== 1) throw corrupt(secret, `${key} holds ${blocks.length} certificates, not 1`);
    return blocks[0]!;
  };
  const key = (name: string): KeyObject => {
    try {
      return createPrivateKey(text(name));
    } catch (err) {
      if (err instanceof KmtlsError) throw err;
      throw corrupt(secret, `${name} is not a private key`, err);
    }
  };
  const number = (name: string): number => {
    const raw = secret.annotations[name];
    // Digits only: Number() reads '' and ' ' as 0, and a retire-after of 0 would retire a root at once.
    const v = raw !== undefined && /^[0-9]+$/.test(raw) ? Number(raw) : Number.NaN;
    if (!Number.isSafeInteger(v)) throw corrupt(secret, `annotation ${name} is not a number`);
    return v;
  };
  const trustDomain = secret.annotations[ANNOTATION.trustDomain];
  if (!trustDomain) throw corrupt(secret, `missing annotation ${ANNOTATION.trustDomain}`);
  const mode = secret.annotations[ANNOTATION.mode];
  const longestLeafTtlMs =
    secret.annotations[ANNOTATION.longestLeafTtl] === undefined
      ? DEFAULT_LEAF_TTL_MS
      : number(ANNOTATION.longestLeafTtl);
  try {
    if (mode === 'plug-in') {
      const files = {
        caCertPem: text('ca-cert.pem'),
        caKeyPem: text('ca-key.pem'),
        rootCertPem: text('root-cert.pem'),
        certChainPem: text('cert-chain.pem'),
      };
      return { mode, material: caMaterialFromFiles({ trustDomain, ...files }), files, longestLeafTtlMs };
    }
    if (mode !== 'self-signed')
      throw corrupt(secret, `unknown ${ANNOTATION.mode}: ${JSON.stringify(mode ?? '')}`);
    const root: RootKeyPair = { certificate: cert('ca-cert.pem'), key: key('ca-key.pem') };
    const trustBundle = pemBlocks(text('trust-bundle.pem'));
    if (!trustBundle.some((c) => c.equals(root.certificate)))
      throw corrupt(secret, 'trust-bundle.pem does not hold the signing root');
    let rotation: RotationState;
    const phase = secret.annotations[ANNOTATION.phase] ?? 'stable';
    if (phase === 'stable') {
      rotation = { phase };
    } else if (phase === 'distributing') {
      const next: RootKeyPair = { certificate: cert('next-root-cert.pem'), key: key('next-root-key.pem') };
      // The next root signs after the switch: check it now, not once it has signed unverifiable leaves.
      try {
        selfSignedMaterial(trustDomain, next);
      } catch (err) {
        throw corrupt(
          secret,
          `next-root-cert.pem and next-root-key.pem do not make a signer: ${(err as Error).message}`,
          err,
        );
      }
      if (!trustBundle.some((c) => c.equals(next.certificate)))
        throw corrupt(secret, 'trust-bundle.pem does not hold the next root');
      rotation = { phase, next, sinceMs: number(ANNOTATION.since) };
    } else if (phase === 'signing-with-new') {
      const previous = cert('previous-root-cert.pem');
      // Leaves of the previous root are still in use: a bundle without it would break them.
      if (!trustBundle.some((c) => c.equals(previous)))
        throw corrupt(secret, 'trust-bundle.pem does not hold the previous root');
      rotation = {
        phase,
        previous,
        sinceMs: number(ANNOTATION.since),
        retireAfterMs: number(ANNOTATION.retireAfter),
      };
    } else {
      throw corrupt(secret, `unknown rotation phase ${JSON.stringify(phase)}`);
    }
    const state: SelfSignedCaState = { trustDomain, root, trustBundle, rotation, longestLeafTtlMs };
    // Build the signer once: it checks that the key matches the certificate and that it is a CA.
    selfSignedMaterial(trustDomain, root, trustBundle);
    return { mode, state };
  } catch (err) {
    if (err instanceof KmtlsError && err.code === 'KMTLS_STATE_CORRUPT') throw err;
    throw corrupt(secret, err instanceof Error ? err.message : String(err), err);
  }
}

export async function loadCa(
  store: SecretStore,
  namespace = DEFAULT_CONTROL_PLANE_NAMESPACE,
): Promise<StoredCa | undefined> {
  const secret = await store.get(namespace, CA_SECRET_NAME);
  return secret === undefined ? undefined : caFromSecret(secret);
}

export async function saveCa(
  store: SecretStore,
  ca: StoredCa,
  namespace = DEFAULT_CONTROL_PLANE_NAMESPACE,
): Promise<void> {
  await store.put(caToSecret(ca, namespace));
}
