import type { KeyObject } from 'node:crypto';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import tls, { type SecureContext } from 'node:tls';
import { KmtlsError } from '../errors.js';

/**
 * The identity a sidecar holds: its key, its certificate chain and the roots it trusts, with the
 * TLS contexts built from them. Immutable: a renewal or a new bundle makes a new one, which new
 * connections use at once while established ones keep theirs.
 */
export interface ProxyIdentity {
  readonly chainPem: string;
  readonly keyPem: string;
  readonly bundlePem: string;
  /** DER of the trusted roots, for kmtls's own chain verification. */
  readonly roots: readonly Buffer[];
  readonly leaf: X509Certificate;
  readonly identity: string;
  readonly serial: string;
  readonly notAfter: Date;
  /** Server side: asks for a client certificate; the chain is verified by kmtls, to name refusals. */
  readonly serverContext: SecureContext;
  /** Client side: presents the workload certificate. */
  readonly clientContext: SecureContext;
}

/** TLS 1.2 suites Istio's servers offer: ECDHE with AEAD only (TLS 1.3 suites are all AEAD). */
export const AEAD_CIPHERS = [
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

function certificates(pem: string): X509Certificate[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map(
    (m) => new X509Certificate(m[0]),
  );
}

/** Builds an identity from PEM material, checking that the key matches and the leaf has a SPIFFE ID. */
export function buildIdentity(material: {
  chainPem: string;
  keyPem: string;
  bundlePem: string;
}): ProxyIdentity {
  let chain: X509Certificate[];
  let roots: X509Certificate[];
  let key: KeyObject;
  try {
    chain = certificates(material.chainPem);
    roots = certificates(material.bundlePem);
    key = createPrivateKey(material.keyPem);
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_PROXY_CERTS_INVALID',
      `unreadable certificate material: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const leaf = chain[0];
  if (!leaf) throw new KmtlsError('KMTLS_PROXY_CERTS_INVALID', 'the certificate chain is empty');
  if (roots.length === 0)
    throw new KmtlsError('KMTLS_PROXY_CERTS_INVALID', 'the trust bundle holds no certificate');
  if (!leaf.publicKey.equals(createPublicKey(key))) {
    throw new KmtlsError('KMTLS_PROXY_CERTS_INVALID', 'the key does not match the certificate');
  }
  const identity = (leaf.subjectAltName ?? '')
    .split(', ')
    .find((s) => s.startsWith('URI:spiffe://'))
    ?.slice(4);
  if (!identity) throw new KmtlsError('KMTLS_PROXY_CERTS_INVALID', 'the certificate carries no SPIFFE ID');
  // Present the chain without the root: peers have it, and Istio sends it the same way.
  const presented = chain
    .filter((c) => !(c.checkIssued(c) && roots.some((r) => r.raw.equals(c.raw))))
    .map((c) => c.toString())
    .join('');
  const common = {
    key: material.keyPem,
    cert: presented,
    minVersion: 'TLSv1.2' as const,
    maxVersion: 'TLSv1.3' as const,
    ciphers: AEAD_CIPHERS,
  };
  return {
    chainPem: material.chainPem,
    keyPem: material.keyPem,
    bundlePem: material.bundlePem,
    roots: roots.map((r) => Buffer.from(r.raw)),
    leaf,
    identity,
    serial: leaf.serialNumber,
    notAfter: new Date(leaf.validTo),
    // A session id context is what lets OpenSSL resume sessions when client certificates are asked
    // for; without one every resumption attempt fails ("session id context uninitialized").
    serverContext: tls.createSecureContext({
      ...common,
      ca: material.bundlePem,
      honorCipherOrder: true,
      sessionIdContext: 'kmtls-mesh',
    }),
    clientContext: tls.createSecureContext({ ...common, ca: material.bundlePem }),
  };
}

/**
 * The peer's chain as DER, leaf first, from a TLS socket. Walks `getPeerX509Certificate()` and its
 * issuers: microseconds, where `getPeerCertificate(true)` builds a JS object per certificate.
 */
export function peerChain(socket: tls.TLSSocket): Buffer[] {
  const out: Buffer[] = [];
  let cert: X509Certificate | undefined = socket.getPeerX509Certificate();
  const seen = new Set<string>();
  while (cert && !seen.has(cert.fingerprint256)) {
    seen.add(cert.fingerprint256);
    out.push(Buffer.from(cert.raw));
    const issuer: X509Certificate | undefined = (
      cert as X509Certificate & { issuerCertificate?: X509Certificate }
    ).issuerCertificate;
    cert = issuer;
  }
  return out;
}
