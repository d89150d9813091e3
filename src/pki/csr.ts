import type { KeyObject } from 'node:crypto';
import { createPublicKey, sign, verify } from 'node:crypto';
import { KmtlsError } from '../errors.js';
import {
  asciiBytes,
  bitString,
  boolean,
  bytesOf,
  childrenOf,
  contentOf,
  DerError,
  decodeOid,
  expectTag,
  implicitPrimitive,
  octetString,
  oid,
  readRoot,
  sequence,
  set,
  smallInteger,
  TAG,
  tlv,
} from './der.js';
import { encodeName, OID, pemBlocks, signatureAlgorithmFor } from './x509.js';

/** A PKCS#10 request whose signature was checked: only its public key is ever used. */
export interface VerifiedCsr {
  /** The SubjectPublicKeyInfo, exactly as the requester encoded it. */
  readonly subjectPublicKeyInfo: Buffer;
  readonly publicKey: KeyObject;
}

const SIGNATURE_HASH: Readonly<Record<string, 'sha256' | 'sha384' | 'sha512'>> = {
  [OID.ecdsaWithSha256]: 'sha256',
  [OID.ecdsaWithSha384]: 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  [OID.sha256WithRsa]: 'sha256',
  [OID.sha384WithRsa]: 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
};

/** Workload keys kmtls accepts: ECDSA P-256 or P-384, or RSA of at least 2048 bits (Istio's agent default). */
export function checkWorkloadKey(key: KeyObject): void {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec' && (d?.namedCurve === 'prime256v1' || d?.namedCurve === 'secp384r1'))
    return;
  if (key.asymmetricKeyType === 'rsa' && (d?.modulusLength ?? 0) >= 2048) return;
  const what =
    key.asymmetricKeyType === 'rsa'
      ? `RSA ${d?.modulusLength ?? '?'} bits`
      : `${key.asymmetricKeyType ?? 'unknown'}${d?.namedCurve ? ` ${d.namedCurve}` : ''}`;
  throw new KmtlsError(
    'KMTLS_PKI_CSR_KEY_UNSUPPORTED',
    `unsupported key in certificate request: ${what} (use ECDSA P-256, P-384 or RSA of 2048 bits or more)`,
  );
}

/** DER prefixes of SubjectPublicKeyInfo for uncompressed EC points on P-256 and P-384. */
const EC_SPKI_PREFIXES = [
  {
    crv: 'P-256',
    size: 32,
    prefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex'),
  },
  { crv: 'P-384', size: 48, prefix: Buffer.from('3076301006072a8648ce3d020106052b81040022036200', 'hex') },
] as const;

/**
 * Imports a public key. EC keys go through JWK, which OpenSSL 3 imports about twice as fast as
 * DER through its decoder framework; this is on the issuance hot path (one import per CSR).
 */
export function importPublicKey(spki: Buffer): KeyObject {
  for (const { crv, size, prefix } of EC_SPKI_PREFIXES) {
    if (
      spki.length === prefix.length + 1 + 2 * size &&
      spki.subarray(0, prefix.length).equals(prefix) &&
      spki[prefix.length] === 0x04
    ) {
      const x = spki.subarray(prefix.length + 1, prefix.length + 1 + size).toString('base64url');
      const y = spki.subarray(prefix.length + 1 + size).toString('base64url');
      return createPublicKey({ key: { kty: 'EC', crv, x, y }, format: 'jwk' });
    }
  }
  return createPublicKey({ key: spki, format: 'der', type: 'spki' });
}

function toDer(input: Buffer | string): Buffer {
  const text = typeof input === 'string' ? input : input.subarray(0, 64).toString('latin1');
  if (text.includes('-----BEGIN')) {
    const full = typeof input === 'string' ? input : input.toString('utf8');
    const blocks = [...pemBlocks(full, 'CERTIFICATE REQUEST'), ...pemBlocks(full, 'NEW CERTIFICATE REQUEST')];
    if (blocks.length !== 1) {
      throw new KmtlsError(
        'KMTLS_PKI_CSR_MALFORMED',
        `malformed certificate request: expected one PEM block, found ${blocks.length}`,
      );
    }
    return blocks[0]!;
  }
  return typeof input === 'string' ? Buffer.from(input, 'base64') : input;
}

/** A parsed request whose signature is still to be checked. */
interface ParsedCsr {
  readonly info: Buffer;
  readonly spki: Buffer;
  readonly publicKey: KeyObject;
  readonly hash: 'sha256' | 'sha384' | 'sha512';
  readonly signature: Buffer;
}

const BAD_SIGNATURE =
  'certificate request signature does not verify (it was not signed by the key it carries)';

/** Checks a PKCS#10 request's signature synchronously; see `parseCsr`. */
export function verifyCsr(input: Buffer | string): VerifiedCsr {
  const p = parseCsr(input);
  let valid = false;
  try {
    valid = verify(p.hash, p.info, { key: p.publicKey, dsaEncoding: 'der' }, p.signature);
  } catch {
    valid = false;
  }
  if (!valid) throw new KmtlsError('KMTLS_PKI_CSR_SIGNATURE', BAD_SIGNATURE);
  return { subjectPublicKeyInfo: p.spki, publicKey: p.publicKey };
}

/** The same check on libuv's thread pool, so a burst of requests uses every core. */
export function verifyCsrAsync(input: Buffer | string): Promise<VerifiedCsr> {
  return new Promise((resolve, reject) => {
    let p: ParsedCsr;
    try {
      p = parseCsr(input);
    } catch (err) {
      reject(err);
      return;
    }
    verify(p.hash, p.info, { key: p.publicKey, dsaEncoding: 'der' }, p.signature, (err, valid) => {
      if (err || !valid) reject(new KmtlsError('KMTLS_PKI_CSR_SIGNATURE', BAD_SIGNATURE));
      else resolve({ subjectPublicKeyInfo: p.spki, publicKey: p.publicKey });
    });
  });
}

/**
 * Parses a PKCS#10 CertificationRequest and imports its key. The subject and any SAN it asks for
 * are deliberately not read: the CA issues for the authenticated caller, never for what the request says.
 */
function parseCsr(input: Buffer | string): ParsedCsr {
  const der = toDer(input);
  let info: Buffer;
  let spki: Buffer;
  let hash: 'sha256' | 'sha384' | 'sha512' | undefined;
  let algorithm: string;
  let signature: Buffer;
  try {
    const root = readRoot(der, TAG.SEQUENCE);
    const [infoNode, algNode, sigNode] = childrenOf(der, root);
    expectTag(infoNode, TAG.SEQUENCE, 'certificationRequestInfo');
    const infoParts = childrenOf(der, infoNode!);
    expectTag(infoParts[0], TAG.INTEGER, 'version');
    expectTag(infoParts[1], TAG.SEQUENCE, 'subject');
    const spkiNode = expectTag(infoParts[2], TAG.SEQUENCE, 'subjectPKInfo');
    info = bytesOf(der, infoNode!);
    spki = Buffer.from(bytesOf(der, spkiNode));
    const [algOid] = childrenOf(der, expectTag(algNode, TAG.SEQUENCE, 'signatureAlgorithm'));
    algorithm = decodeOid(contentOf(der, expectTag(algOid, TAG.OID, 'signature algorithm OID')));
    hash = SIGNATURE_HASH[algorithm];
    const sigBits = contentOf(der, expectTag(sigNode, TAG.BIT_STRING, 'signature'));
    if (sigBits[0] !== 0) throw new DerError('signature has unused bits');
    signature = sigBits.subarray(1);
  } catch (err) {
    if (err instanceof KmtlsError) throw err;
    throw new KmtlsError(
      'KMTLS_PKI_CSR_MALFORMED',
      `malformed certificate request: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (hash === undefined) {
    throw new KmtlsError(
      'KMTLS_PKI_CSR_MALFORMED',
      `unsupported certificate request signature algorithm: ${algorithm}`,
    );
  }
  let publicKey: KeyObject;
  try {
    publicKey = importPublicKey(spki);
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_PKI_CSR_MALFORMED',
      `malformed certificate request: unreadable public key (${(err as Error).message})`,
      {
        cause: err,
      },
    );
  }
  checkWorkloadKey(publicKey);
  return { info, spki, publicKey, hash, signature };
}

/**
 * A PKCS#10 request for a key, asking for the given URI SANs (the CA ignores them and issues for
 * the authenticated caller, but they make the request self-describing, as Istio's agent does).
 */
export function createCsr(privateKey: KeyObject, opts: { uris?: readonly string[] } = {}): Buffer {
  const spki = createPublicKey(privateKey).export({ format: 'der', type: 'spki' });
  const attributes: Buffer[] = [];
  if (opts.uris && opts.uris.length > 0) {
    const san = sequence(...opts.uris.map((u) => implicitPrimitive(6, asciiBytes(u))));
    const extensions = sequence(sequence(oid(OID.subjectAltName), boolean(true), octetString(san)));
    // extensionRequest (PKCS#9) attribute: SEQUENCE { OID, SET { Extensions } }.
    attributes.push(sequence(oid('1.2.840.113549.1.9.14'), set(extensions)));
  }
  const info = sequence(smallInteger(0), encodeName({}), spki, tlv(0xa0, Buffer.concat(attributes)));
  const alg = signatureAlgorithmFor(privateKey);
  const signature = sign(alg.hash, info, { key: privateKey, dsaEncoding: 'der' });
  return sequence(info, alg.algorithmIdentifier, bitString(signature));
}
