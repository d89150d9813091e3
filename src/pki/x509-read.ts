import {
  bytesOf,
  childrenOf,
  contentOf,
  DerError,
  type DerNode,
  decodeOid,
  expectTag,
  readRoot,
  TAG,
} from './der.js';
import { OID } from './x509.js';

/** What kmtls reads from a certificate: the fields mTLS decisions and `ca inspect` need. */
export interface CertificateFields {
  readonly der: Buffer;
  readonly serialHex: string;
  /** DER of the subject and issuer Names, compared byte for byte when chaining. */
  readonly subjectName: Buffer;
  readonly issuerName: Buffer;
  readonly subject: string;
  readonly issuer: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly subjectPublicKeyInfo: Buffer;
  readonly isCa: boolean;
  readonly pathLength: number | undefined;
  /** Key usage bit names, e.g. digitalSignature, keyCertSign; undefined when the extension is absent. */
  readonly keyUsage: readonly string[] | undefined;
  /** Extended key usage OIDs; undefined when absent. */
  readonly extKeyUsage: readonly string[] | undefined;
  readonly uris: readonly string[];
  readonly dnsNames: readonly string[];
  readonly sanCritical: boolean;
  readonly subjectKeyId: Buffer | undefined;
  readonly authorityKeyId: Buffer | undefined;
}

const KEY_USAGE_BITS = [
  'digitalSignature',
  'contentCommitment',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
  'encipherOnly',
  'decipherOnly',
] as const;

const ATTRIBUTE_NAMES: Readonly<Record<string, string>> = {
  '2.5.4.3': 'CN',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.5': 'serialNumber',
};

function parseTime(buf: Buffer, node: DerNode): Date {
  const s = contentOf(buf, node).toString('ascii');
  const m =
    node.tag === TAG.UTC_TIME
      ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s)
      : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) throw new DerError(`bad time: ${s}`);
  let year = Number(m[1]);
  if (node.tag === TAG.UTC_TIME) year += year >= 50 ? 1900 : 2000;
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

/** `O=cluster.local, CN=kmtls root CA`: a readable form of a Name, in its own order. */
export function describeName(buf: Buffer, name: DerNode): string {
  const parts: string[] = [];
  for (const rdn of childrenOf(buf, name)) {
    for (const atv of childrenOf(buf, rdn)) {
      const [type, value] = childrenOf(buf, atv);
      const id = decodeOid(contentOf(buf, expectTag(type, TAG.OID, 'attribute type')));
      parts.push(`${ATTRIBUTE_NAMES[id] ?? id}=${value ? contentOf(buf, value).toString('utf8') : ''}`);
    }
  }
  return parts.join(', ');
}

/** Parses the certificate fields kmtls uses. Throws DerError on anything malformed. */
export function readCertificate(der: Buffer): CertificateFields {
  const root = readRoot(der, TAG.SEQUENCE);
  const [tbsNode] = childrenOf(der, root);
  const tbs = childrenOf(der, expectTag(tbsNode, TAG.SEQUENCE, 'tbsCertificate'));
  // version is [0] EXPLICIT and optional (v1 certificates omit it).
  const fields = tbs[0]?.tag === 0xa0 ? tbs.slice(1) : tbs;
  const [serial, , issuer, validity, subject, spki, ...rest] = fields;
  const [notBefore, notAfter] = childrenOf(der, expectTag(validity, TAG.SEQUENCE, 'validity'));
  if (!notBefore || !notAfter) throw new DerError('validity needs two times');
  const out = {
    der,
    serialHex: contentOf(der, expectTag(serial, TAG.INTEGER, 'serial')).toString('hex'),
    subjectName: bytesOf(der, expectTag(subject, TAG.SEQUENCE, 'subject')),
    issuerName: bytesOf(der, expectTag(issuer, TAG.SEQUENCE, 'issuer')),
    subject: describeName(der, subject!),
    issuer: describeName(der, issuer!),
    notBefore: parseTime(der, notBefore),
    notAfter: parseTime(der, notAfter),
    subjectPublicKeyInfo: bytesOf(der, expectTag(spki, TAG.SEQUENCE, 'subjectPublicKeyInfo')),
    isCa: false,
    pathLength: undefined as number | undefined,
    keyUsage: undefined as string[] | undefined,
    extKeyUsage: undefined as string[] | undefined,
    uris: [] as string[],
    dnsNames: [] as string[],
    sanCritical: false,
    subjectKeyId: undefined as Buffer | undefined,
    authorityKeyId: undefined as Buffer | undefined,
  };
  const extsWrapper = rest.find((n) => n.tag === 0xa3);
  if (extsWrapper) {
    const [extsSeq] = childrenOf(der, extsWrapper);
    for (const ext of childrenOf(der, expectTag(extsSeq, TAG.SEQUENCE, 'extensions'))) {
      const parts = childrenOf(der, ext);
      const id = decodeOid(contentOf(der, expectTag(parts[0], TAG.OID, 'extension id')));
      const critical = parts[1]?.tag === TAG.BOOLEAN && contentOf(der, parts[1])[0] !== 0;
      const valueNode = expectTag(parts[parts.length - 1], TAG.OCTET_STRING, 'extension value');
      const value = contentOf(der, valueNode);
      const inner = readRoot(value, value[0] ?? 0);
      switch (id) {
        case OID.basicConstraints: {
          const bc = childrenOf(value, inner);
          out.isCa = bc[0]?.tag === TAG.BOOLEAN && contentOf(value, bc[0])[0] !== 0;
          const pl = bc.find((n) => n.tag === TAG.INTEGER);
          if (pl) out.pathLength = contentOf(value, pl).reduce((a, b) => a * 256 + b, 0);
          break;
        }
        case OID.keyUsage: {
          const bits = contentOf(value, expectTag(inner, TAG.BIT_STRING, 'keyUsage'));
          const names: string[] = [];
          KEY_USAGE_BITS.forEach((name, i) => {
            const byte = bits[1 + Math.floor(i / 8)] ?? 0;
            if (byte & (0x80 >> (i % 8))) names.push(name);
          });
          out.keyUsage = names;
          break;
        }
        case OID.extKeyUsage:
          out.extKeyUsage = childrenOf(value, inner).map((n) => decodeOid(contentOf(value, n)));
          break;
        case OID.subjectAltName:
          out.sanCritical = critical;
          for (const gn of childrenOf(value, inner)) {
            if (gn.tag === 0x86) out.uris.push(contentOf(value, gn).toString('ascii'));
            if (gn.tag === 0x82) out.dnsNames.push(contentOf(value, gn).toString('ascii'));
          }
          break;
        case OID.subjectKeyIdentifier:
          out.subjectKeyId = Buffer.from(
            contentOf(value, expectTag(inner, TAG.OCTET_STRING, 'subjectKeyIdentifier')),
          );
          break;
        case OID.authorityKeyIdentifier: {
          const keyId = childrenOf(value, inner).find((n) => n.tag === 0x80);
          if (keyId) out.authorityKeyId = Buffer.from(contentOf(value, keyId));
          break;
        }
        default:
          break;
      }
    }
  }
  return out;
}
