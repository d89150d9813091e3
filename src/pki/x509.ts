import type { KeyObject } from 'node:crypto';
import { createHash, sign } from 'node:crypto';
import {
  asciiBytes,
  bitString,
  boolean,
  childrenOf,
  expectTag,
  explicit,
  implicitPrimitive,
  octetString,
  oid,
  readRoot,
  sequence,
  set,
  smallInteger,
  TAG,
  time,
  unsignedInteger,
  utf8String,
} from './der.js';

/**
 * X.509 v3 certificates built directly as DER: one builder for roots, intermediates and leaves,
 * so every certificate kmtls makes has the same, tested encoding. The hot path (leaf issuance)
 * reuses the issuer's encoded name and key identifier and does one synchronous OpenSSL signature.
 */

export const OID = {
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  ecPublicKey: '1.2.840.10045.2.1',
  rsaEncryption: '1.2.840.113549.1.1.1',
  prime256v1: '1.2.840.10045.3.1.7',
  secp384r1: '1.3.132.0.34',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  sha384WithRsa: '1.2.840.113549.1.1.12',
} as const;

/** How a signer signs: the AlgorithmIdentifier written in the certificate and the digest. */
export interface SignatureAlgorithm {
  readonly algorithmIdentifier: Buffer;
  readonly hash: 'sha256' | 'sha384';
}

/** The signature algorithm that matches a signing key, as Go's x509 picks it. */
export function signatureAlgorithmFor(key: KeyObject): SignatureAlgorithm {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec') {
    if (details?.namedCurve === 'prime256v1')
      return { algorithmIdentifier: sequence(oid(OID.ecdsaWithSha256)), hash: 'sha256' };
    if (details?.namedCurve === 'secp384r1')
      return { algorithmIdentifier: sequence(oid(OID.ecdsaWithSha384)), hash: 'sha384' };
    throw new Error(`unsupported signing curve: ${details?.namedCurve ?? 'unknown'} (use P-256 or P-384)`);
  }
  if (key.asymmetricKeyType === 'rsa') {
    // sha256WithRSAEncryption carries NULL parameters (RFC 4055).
    return {
      algorithmIdentifier: sequence(oid(OID.sha256WithRsa), Buffer.from([0x05, 0x00])),
      hash: 'sha256',
    };
  }
  throw new Error(`unsupported signing key type: ${key.asymmetricKeyType ?? 'unknown'} (use ECDSA or RSA)`);
}

/** A distinguished name of O and CN attributes, in that order, as UTF8Strings. */
export function encodeName(parts: {
  organization?: string | undefined;
  commonName?: string | undefined;
}): Buffer {
  const rdns: Buffer[] = [];
  if (parts.organization !== undefined)
    rdns.push(set(sequence(oid(OID.organization), utf8String(parts.organization))));
  if (parts.commonName !== undefined)
    rdns.push(set(sequence(oid(OID.commonName), utf8String(parts.commonName))));
  return sequence(...rdns);
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's value (unused-bits byte excluded). */
export function keyIdentifier(spkiDer: Buffer): Buffer {
  const root = readRoot(spkiDer, TAG.SEQUENCE);
  const [, key] = childrenOf(spkiDer, root);
  const bits = expectTag(key, TAG.BIT_STRING, 'subjectPublicKey');
  return createHash('sha1')
    .update(spkiDer.subarray(bits.contentStart + 1, bits.end))
    .digest();
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return critical
    ? sequence(oid(id), boolean(true), octetString(value))
    : sequence(oid(id), octetString(value));
}

/** What a certificate says; the builder adds nothing the template does not ask for. */
export interface CertificateTemplate {
  /** Positive, at most 20 bytes (RFC 5280 4.1.2.2). */
  readonly serial: Buffer;
  readonly issuerName: Buffer;
  readonly subjectName: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly subjectPublicKeyInfo: Buffer;
  readonly isCa: boolean;
  /** For a CA: how many intermediates may follow (undefined: no limit). */
  readonly pathLength?: number;
  /** URI SANs (SPIFFE IDs); when present the SAN extension is critical, as Istio marks it. */
  readonly uris: readonly string[];
  /** DNS and IPv4 SANs, for the control plane's own serving certificates (webhook, API). */
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly subjectKeyId: Buffer;
  /** The issuer's subject key identifier; omitted for a self-signed root. */
  readonly authorityKeyId: Buffer | undefined;
}

const EKU_SERVER_CLIENT = sequence(oid(OID.serverAuth), oid(OID.clientAuth));
/** digitalSignature (bit 0) and keyEncipherment (bit 2): 1010 0000, 5 unused bits. */
const KU_LEAF = bitString(Buffer.from([0xa0]), 5);
/** keyCertSign (bit 5) and cRLSign (bit 6): 0000 0110, 1 unused bit. */
const KU_CA = bitString(Buffer.from([0x06]), 1);

/** The leaf's fixed extensions, encoded once: basic constraints CA:FALSE, key usage, EKU. */
const LEAF_FIXED_EXTENSIONS = Buffer.concat([
  extension(OID.basicConstraints, true, sequence()),
  extension(OID.keyUsage, true, KU_LEAF),
  extension(OID.extKeyUsage, false, EKU_SERVER_CLIENT),
]);

/** Encoded AKI extensions by issuer key id: a CA issues under the same one all day. */
const akiCache = new Map<string, Buffer>();

function authorityKeyIdExtension(keyId: Buffer): Buffer {
  const k = keyId.toString('hex');
  let ext = akiCache.get(k);
  if (!ext) {
    ext = extension(OID.authorityKeyIdentifier, false, sequence(implicitPrimitive(0, keyId)));
    if (akiCache.size > 64) akiCache.clear();
    akiCache.set(k, ext);
  }
  return ext;
}

export function buildExtensions(t: CertificateTemplate): Buffer {
  const exts: Buffer[] = [];
  if (t.isCa) {
    const bc =
      t.pathLength === undefined
        ? sequence(boolean(true))
        : sequence(boolean(true), smallInteger(t.pathLength));
    exts.push(extension(OID.basicConstraints, true, bc));
    exts.push(extension(OID.keyUsage, true, KU_CA));
  } else {
    exts.push(LEAF_FIXED_EXTENSIONS);
  }
  exts.push(extension(OID.subjectKeyIdentifier, false, octetString(t.subjectKeyId)));
  if (t.authorityKeyId) exts.push(authorityKeyIdExtension(t.authorityKeyId));
  const dns = t.dnsNames ?? [];
  const ips = t.ipAddresses ?? [];
  if (t.uris.length + dns.length + ips.length > 0) {
    // GeneralName: dNSName [2] IA5String, uniformResourceIdentifier [6] IA5String, iPAddress [7] OCTET STRING.
    const names = [
      ...t.uris.map((u) => implicitPrimitive(6, asciiBytes(u))),
      ...dns.map((d) => implicitPrimitive(2, asciiBytes(d))),
      ...ips.map((ip) => implicitPrimitive(7, Buffer.from(ip.split('.').map(Number)))),
    ];
    // Critical: the subject is empty (RFC 5280 4.2.1.6).
    exts.push(extension(OID.subjectAltName, true, sequence(...names)));
  }
  return explicit(3, sequence(...exts));
}

/** The to-be-signed part of a certificate. */
export function buildTbs(t: CertificateTemplate, alg: SignatureAlgorithm): Buffer {
  return sequence(
    explicit(0, smallInteger(2)),
    unsignedInteger(t.serial),
    alg.algorithmIdentifier,
    t.issuerName,
    sequence(time(t.notBefore), time(t.notAfter)),
    t.subjectName,
    t.subjectPublicKeyInfo,
    buildExtensions(t),
  );
}

/** A certificate from its TBS and the signature over it. */
export function assembleCertificate(tbs: Buffer, alg: SignatureAlgorithm, signature: Buffer): Buffer {
  return sequence(tbs, alg.algorithmIdentifier, bitString(signature));
}

/** Builds and signs a certificate synchronously; returns its DER. */
export function buildCertificate(
  t: CertificateTemplate,
  signerKey: KeyObject,
  alg = signatureAlgorithmFor(signerKey),
): Buffer {
  const tbs = buildTbs(t, alg);
  return assembleCertificate(tbs, alg, sign(alg.hash, tbs, { key: signerKey, dsaEncoding: 'der' }));
}

export function toPem(der: Buffer, label = 'CERTIFICATE'): string {
  const b64 = der.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** Every PEM block of a label in a text, in order, as DER. */
export function pemBlocks(text: string, label = 'CERTIFICATE'): Buffer[] {
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]*?)-----END ${label}-----`, 'g');
  return [...text.matchAll(re)].map((m) => Buffer.from((m[1] ?? '').replace(/\s+/g, ''), 'base64'));
}

/** A random serial: 16 bytes, top bit cleared so the INTEGER stays positive, never zero. */
export function randomSerial(random: (n: number) => Buffer): Buffer {
  const s = random(16);
  s[0] = (s[0]! & 0x7f) | 0x01;
  return s;
}
