import type { KeyObject } from 'node:crypto';
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { KmtlsError } from '../errors.js';
import type { SpiffeId } from '../identity/index.js';
import { checkTrustDomain } from '../identity/index.js';
import type { Clock, RandomBytes } from './clock.js';
import { DAY_MS, formatDuration, HOUR_MS } from './clock.js';
import { verifyCsr, verifyCsrAsync } from './csr.js';
import type { SignatureAlgorithm } from './x509.js';
import {
  assembleCertificate,
  buildCertificate,
  buildTbs,
  encodeName,
  keyIdentifier,
  randomSerial,
  signatureAlgorithmFor,
  toPem,
} from './x509.js';
import type { CertificateFields } from './x509-read.js';
import { readCertificate } from './x509-read.js';

export const DEFAULT_LEAF_TTL_MS = 24 * HOUR_MS;
export const MAX_LEAF_TTL_MS = 90 * DAY_MS;
export const DEFAULT_ROOT_TTL_MS = 3650 * DAY_MS;
/** NotBefore is backdated by this much, for peers whose clocks run behind (Istio's ClockSkewGracePeriod). */
export const CLOCK_SKEW_GRACE_MS = 2 * 60_000;

/** A certificate and key that sign: the root, or an intermediate of a plug-in CA. */
export interface Signer {
  readonly certificate: CertificateFields;
  readonly key: KeyObject;
  readonly algorithm: SignatureAlgorithm;
}

/** The identities a caller proved, and how. The CA issues for these and nothing else. */
export interface AuthenticatedCaller {
  readonly identities: readonly SpiffeId[];
  /** How the caller authenticated: `bootstrap-token`, `client-certificate`, `token-review`, `operator`. */
  readonly method: string;
}

/**
 * What signs and what is trusted. `chain` runs from the signer's certificate up to and including
 * its root (for a self-signed CA: just the root). `trustBundle` holds every root workloads trust;
 * during a root rotation it holds two.
 */
export interface CaMaterial {
  readonly trustDomain: string;
  readonly signer: Signer;
  readonly chain: readonly Buffer[];
  readonly trustBundle: readonly Buffer[];
}

export interface IssuedCertificate {
  readonly certificate: Buffer;
  /** Leaf first, root last: what a workload presents (it may drop the root) and what `cert-chain.pem` holds. */
  readonly chain: readonly Buffer[];
  readonly chainPem: string;
  readonly identities: readonly SpiffeId[];
  readonly serialHex: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

function signerFrom(certDer: Buffer, key: KeyObject): Signer {
  const certificate = readCertificate(certDer);
  const expected = createPublicKey({ key: certificate.subjectPublicKeyInfo, format: 'der', type: 'spki' });
  const actual = createPublicKey(key);
  if (!expected.equals(actual)) {
    throw new KmtlsError(
      'KMTLS_PKI_CACERTS_INVALID',
      'CA key does not match the CA certificate: the key belongs to another certificate',
    );
  }
  if (
    !certificate.isCa ||
    (certificate.keyUsage !== undefined && !certificate.keyUsage.includes('keyCertSign'))
  ) {
    throw new KmtlsError(
      'KMTLS_PKI_CACERTS_INVALID',
      `not a CA certificate: ${certificate.subject} (basicConstraints CA and keyUsage keyCertSign are required)`,
    );
  }
  return { certificate, key, algorithm: signatureAlgorithmFor(key) };
}

/** A new self-signed root: ECDSA P-256, subject O=<trust domain>, 10 years unless told otherwise. */
export function createRoot(opts: {
  trustDomain: string;
  now: number;
  random: RandomBytes;
  ttlMs?: number;
  key?: KeyObject;
}): { certificate: Buffer; key: KeyObject } {
  const problem = checkTrustDomain(opts.trustDomain);
  if (problem)
    throw new KmtlsError(
      'KMTLS_PKI_UNKNOWN_TRUST_DOMAIN',
      `invalid trust domain: ${opts.trustDomain} (${problem.reason})`,
    );
  const key = opts.key ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const ski = keyIdentifier(spki);
  const notBefore = new Date(opts.now - CLOCK_SKEW_GRACE_MS);
  const name = encodeName({
    organization: opts.trustDomain,
    commonName: `kmtls root CA ${new Date(opts.now).toISOString().slice(0, 10)} ${ski.subarray(0, 4).toString('hex')}`,
  });
  const certificate = buildCertificate(
    {
      serial: randomSerial(opts.random),
      issuerName: name,
      subjectName: name,
      notBefore,
      notAfter: new Date(opts.now + (opts.ttlMs ?? DEFAULT_ROOT_TTL_MS)),
      subjectPublicKeyInfo: spki,
      isCa: true,
      uris: [],
      subjectKeyId: ski,
      authorityKeyId: undefined,
    },
    key,
  );
  return { certificate, key };
}

/**
 * Checks plug-in CA material (Istio's `cacerts` layout): the key matches `ca-cert.pem`, it is a CA,
 * `cert-chain.pem` links it to `root-cert.pem` signature by signature, and the root is self-signed.
 */
export function caMaterialFromFiles(files: {
  trustDomain: string;
  caCertPem: string;
  caKeyPem: string;
  rootCertPem: string;
  certChainPem: string;
  extraRootsPem?: string;
}): CaMaterial {
  const one = (pem: string, what: string): Buffer => {
    try {
      return Buffer.from(new X509Certificate(pem).raw);
    } catch (err) {
      throw new KmtlsError('KMTLS_PKI_CACERTS_INVALID', `unreadable ${what}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  };
  const all = (pem: string, what: string): Buffer[] =>
    [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) =>
      one(m[0], what),
    );
  let key: KeyObject;
  try {
    key = createPrivateKey(files.caKeyPem);
  } catch (err) {
    throw new KmtlsError('KMTLS_PKI_CACERTS_INVALID', `unreadable ca-key.pem: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const caCert = one(files.caCertPem, 'ca-cert.pem');
  const root = one(files.rootCertPem, 'root-cert.pem');
  const chainCerts = all(files.certChainPem, 'cert-chain.pem');
  // cert-chain.pem may or may not start with ca-cert.pem and may or may not end with the root.
  const chain = [caCert, ...chainCerts.filter((c) => !c.equals(caCert) && !c.equals(root)), root];
  if (caCert.equals(root)) chain.splice(1);
  for (let i = 0; i + 1 < chain.length; i++) {
    const child = new X509Certificate(chain[i]!);
    const parent = new X509Certificate(chain[i + 1]!);
    if (!child.checkIssued(parent) || !child.verify(parent.publicKey)) {
      throw new KmtlsError(
        'KMTLS_PKI_CACERTS_INVALID',
        `cert-chain.pem does not link up: ${(child.subject ?? '(empty)').replace(/\n/g, ', ')} is not signed by ${(parent.subject ?? '(empty)').replace(/\n/g, ', ')}`,
      );
    }
  }
  const rootX = new X509Certificate(root);
  if (!rootX.checkIssued(rootX) || !rootX.verify(rootX.publicKey)) {
    throw new KmtlsError('KMTLS_PKI_CACERTS_INVALID', 'root-cert.pem is not a self-signed root');
  }
  const signer = signerFrom(caCert, key);
  const extra = files.extraRootsPem ? all(files.extraRootsPem, 'trust bundle') : [];
  return {
    trustDomain: files.trustDomain,
    signer,
    chain,
    trustBundle: [root, ...extra.filter((r) => !r.equals(root))],
  };
}

/** CA material for a self-signed root (the signer is the root). */
export function selfSignedMaterial(
  trustDomain: string,
  root: { certificate: Buffer; key: KeyObject },
  extraRoots: readonly Buffer[] = [],
): CaMaterial {
  return {
    trustDomain,
    signer: signerFrom(root.certificate, root.key),
    chain: [root.certificate],
    trustBundle: [root.certificate, ...extraRoots.filter((r) => !r.equals(root.certificate))],
  };
}

/**
 * The control plane's own identity in the default `kmtls-system` namespace; the same string as
 * `controlPlaneIdentity` in src/mesh/placement.ts (not imported: pki does not depend on mesh).
 */
function defaultReservedIdentity(trustDomain: string): string {
  return `spiffe://${trustDomain}/ns/kmtls-system/sa/kmtls-controlplane`;
}

/**
 * The mesh certificate authority: signs workload certificates for authenticated callers. Pure
 * apart from the OpenSSL signature: time and randomness are injected; it reads and writes nothing.
 */
export class CertificateAuthority {
  readonly material: CaMaterial;
  private readonly clock: Clock;
  private readonly random: RandomBytes;
  private readonly serialBytes: RandomBytes;
  private readonly chainTail: readonly Buffer[];
  private readonly chainTailPem: string;
  private readonly reserved: ReadonlySet<string>;

  /**
   * `reservedIdentities`: SPIFFE IDs issued only to the `operator` (the control plane's own
   * serving certificate), never to a workload, since sidecars pin them to recognise the control
   * plane. Default: the control plane's identity in `kmtls-system` for the material's trust domain.
   */
  constructor(
    material: CaMaterial,
    deps: { clock: Clock; random: RandomBytes; reservedIdentities?: readonly string[] },
  ) {
    this.material = material;
    this.reserved = new Set(deps.reservedIdentities ?? [defaultReservedIdentity(material.trustDomain)]);
    this.clock = deps.clock;
    this.random = deps.random;
    this.serialBytes = pooledRandom(deps.random);
    this.chainTail = material.chain;
    this.chainTailPem = material.chain.map((c) => toPem(c)).join('');
  }

  get trustDomain(): string {
    return this.material.trustDomain;
  }

  /** The roots a workload must trust, PEM. */
  trustBundlePem(): string {
    return this.material.trustBundle.map((c) => toPem(c)).join('');
  }

  /**
   * Issues a certificate for the caller's identities from a CSR. Only the CSR's key is used; its
   * signature must verify. Refusals throw KmtlsError with a KMTLS_PKI_* code and change nothing.
   */
  sign(csr: Buffer | string, caller: AuthenticatedCaller, opts: { ttlMs?: number } = {}): IssuedCertificate {
    const ttlMs = this.checkTtl(opts.ttlMs);
    this.checkIdentities(caller);
    const verified = verifyCsr(csr);
    return this.issue(verified.subjectPublicKeyInfo, caller.identities, ttlMs);
  }

  /** Issues for a public key the operator holds (`kmtls ca issue`); same checks as `sign` but the CSR's. */
  signPublicKey(
    spki: Buffer,
    caller: AuthenticatedCaller,
    opts: { ttlMs?: number; dnsNames?: readonly string[]; ipAddresses?: readonly string[] } = {},
  ): IssuedCertificate {
    const ttlMs = this.checkTtl(opts.ttlMs);
    this.checkIdentities(caller);
    const hosts = { dnsNames: opts.dnsNames ?? [], ipAddresses: opts.ipAddresses ?? [] };
    if ((hosts.dnsNames.length > 0 || hosts.ipAddresses.length > 0) && caller.method !== 'operator') {
      // Workloads get their SPIFFE ID only; host names are for the control plane's own servers.
      throw new KmtlsError('KMTLS_PKI_BAD_IDENTITY', 'DNS and IP names are issued only to the operator');
    }
    for (const ip of hosts.ipAddresses) {
      if (!/^(\d{1,3})(\.\d{1,3}){3}$/.test(ip) || ip.split('.').some((o) => Number(o) > 255))
        throw new KmtlsError('KMTLS_PKI_BAD_IDENTITY', `not an IPv4 address: ${JSON.stringify(ip)}`);
    }
    return this.issue(spki, caller.identities, ttlMs, hosts);
  }

  private checkTtl(requested: number | undefined): number {
    // Istio: a TTL of zero or less means the default.
    if (requested === undefined || requested <= 0) return DEFAULT_LEAF_TTL_MS;
    if (!Number.isFinite(requested))
      throw new KmtlsError('KMTLS_PKI_TTL_INVALID', `invalid TTL: ${requested}`);
    if (requested > MAX_LEAF_TTL_MS) {
      throw new KmtlsError(
        'KMTLS_PKI_TTL_TOO_LONG',
        `requested TTL ${formatDuration(requested)} is greater than the max allowed TTL ${formatDuration(MAX_LEAF_TTL_MS)}`,
      );
    }
    return requested;
  }

  private checkIdentities(caller: AuthenticatedCaller): void {
    if (caller.identities.length === 0) {
      throw new KmtlsError(
        'KMTLS_PKI_UNAUTHENTICATED',
        `caller has no identity (authenticated by ${caller.method})`,
      );
    }
    for (const id of caller.identities) {
      if (id.trustDomain !== this.material.trustDomain) {
        throw new KmtlsError(
          'KMTLS_PKI_UNKNOWN_TRUST_DOMAIN',
          `identity outside this CA's trust domain: ${id.uri} (the CA issues for ${this.material.trustDomain})`,
        );
      }
      if (this.reserved.has(id.uri) && caller.method !== 'operator') {
        throw new KmtlsError(
          'KMTLS_PKI_BAD_IDENTITY',
          `identity reserved for the control plane: ${id.uri} is never issued to a workload (caller authenticated by ${caller.method}); sidecars trust it as the control plane`,
        );
      }
    }
  }

  /**
   * `sign` with the signature checks and the signing on libuv's thread pool: a burst of requests
   * then uses every core. Same checks, same result, same codes.
   */
  async signAsync(
    csr: Buffer | string,
    caller: AuthenticatedCaller,
    opts: { ttlMs?: number } = {},
  ): Promise<IssuedCertificate> {
    const ttlMs = this.checkTtl(opts.ttlMs);
    this.checkIdentities(caller);
    const verified = await verifyCsrAsync(csr);
    const p = this.prepare(verified.subjectPublicKeyInfo, caller.identities, ttlMs);
    const alg = this.material.signer.algorithm;
    const signature = await new Promise<Buffer>((resolve, reject) =>
      sign(alg.hash, p.tbs, { key: this.material.signer.key, dsaEncoding: 'der' }, (err, sig) =>
        err ? reject(err) : resolve(sig),
      ),
    );
    return this.complete(p, assembleCertificate(p.tbs, alg, signature));
  }

  private issue(
    spki: Buffer,
    identities: readonly SpiffeId[],
    ttlMs: number,
    hosts: { dnsNames: readonly string[]; ipAddresses: readonly string[] } = {
      dnsNames: [],
      ipAddresses: [],
    },
  ): IssuedCertificate {
    const p = this.prepare(spki, identities, ttlMs, hosts);
    const alg = this.material.signer.algorithm;
    return this.complete(
      p,
      assembleCertificate(
        p.tbs,
        alg,
        sign(alg.hash, p.tbs, { key: this.material.signer.key, dsaEncoding: 'der' }),
      ),
    );
  }

  /** Checks the signer and builds the leaf's TBS: everything but the signature. */
  private prepare(
    spki: Buffer,
    identities: readonly SpiffeId[],
    ttlMs: number,
    hosts: { dnsNames: readonly string[]; ipAddresses: readonly string[] } = {
      dnsNames: [],
      ipAddresses: [],
    },
  ): PreparedLeaf {
    const now = this.clock.now();
    const s = this.material.signer.certificate;
    if (now > s.notAfter.getTime()) {
      throw new KmtlsError(
        'KMTLS_PKI_SIGNER_EXPIRED',
        `the CA certificate expired at ${s.notAfter.toISOString()}: it signs nothing`,
      );
    }
    if (now < s.notBefore.getTime()) {
      throw new KmtlsError(
        'KMTLS_PKI_SIGNER_NOT_YET_VALID',
        `the CA certificate is valid only from ${s.notBefore.toISOString()}`,
      );
    }
    // Whole seconds, as DER encodes them, so the times reported are the times in the certificate.
    const nowS = Math.floor(now / 1000) * 1000;
    const notBefore = new Date(nowS - CLOCK_SKEW_GRACE_MS);
    // Never beyond the signer's own expiry: a leaf outliving its issuer would fail verification anyway.
    const notAfter = new Date(Math.min(nowS + ttlMs, s.notAfter.getTime()));
    const serial = randomSerial(this.serialBytes);
    const tbs = buildTbs(
      {
        serial,
        issuerName: s.subjectName,
        subjectName: EMPTY_NAME,
        notBefore,
        notAfter,
        subjectPublicKeyInfo: spki,
        isCa: false,
        uris: identities.map((i) => i.uri),
        dnsNames: hosts.dnsNames,
        ipAddresses: hosts.ipAddresses,
        subjectKeyId: keyIdentifier(spki),
        authorityKeyId: s.subjectKeyId,
      },
      this.material.signer.algorithm,
    );
    return { tbs, serial, notBefore, notAfter, identities };
  }

  private complete(p: PreparedLeaf, certificate: Buffer): IssuedCertificate {
    return {
      certificate,
      chain: [certificate, ...this.chainTail],
      chainPem: toPem(certificate) + this.chainTailPem,
      identities: p.identities,
      serialHex: p.serial.toString('hex'),
      notBefore: p.notBefore,
      notAfter: p.notAfter,
    };
  }
}

interface PreparedLeaf {
  readonly tbs: Buffer;
  readonly serial: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly identities: readonly SpiffeId[];
}

const EMPTY_NAME = encodeName({});

/** Hands out random bytes from a pool refilled in large draws: one `random` call per 64 serials. */
function pooledRandom(random: RandomBytes, size = 1024): RandomBytes {
  let pool: Buffer = Buffer.alloc(0);
  let at = 0;
  return (n: number) => {
    if (n > size) return random(n);
    if (at + n > pool.length) {
      pool = random(size);
      at = 0;
    }
    const out = Buffer.from(pool.subarray(at, at + n));
    at += n;
    return out;
  };
}
