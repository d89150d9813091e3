import { createHash, X509Certificate } from 'node:crypto';
import type { SpiffeId } from '../identity/index.js';
import { parseSpiffeId } from '../identity/index.js';
import type { CertificateFields } from './x509-read.js';
import { readCertificate } from './x509-read.js';

/** Why a peer's certificate chain is refused; the same names the proxy logs and counts. */
export type ChainRefusal =
  | 'NO_CLIENT_CERT'
  | 'UNKNOWN_CA'
  | 'CERT_EXPIRED'
  | 'NOT_YET_VALID'
  | 'NO_SPIFFE_ID'
  | 'UNTRUSTED_TRUST_DOMAIN'
  | 'BAD_CERTIFICATE';

export type ChainVerdict =
  | { readonly ok: true; readonly identities: readonly SpiffeId[]; readonly notAfter: Date }
  | { readonly ok: false; readonly reason: ChainRefusal; readonly message: string };

function refuse(reason: ChainRefusal, message: string): ChainVerdict {
  return { ok: false, reason, message };
}

/** Parsed roots per bundle array: a bundle is verified against on every connection, parsed once. */
const rootCache = new WeakMap<readonly Buffer[], X509Certificate[]>();

function parsedRoots(roots: readonly Buffer[]): X509Certificate[] {
  let anchors = rootCache.get(roots);
  if (!anchors) {
    anchors = [];
    // An unreadable root in the local bundle anchors nothing; it is not the peer's fault.
    for (const r of roots) {
      try {
        anchors.push(new X509Certificate(r));
      } catch {
        // skipped
      }
    }
    rootCache.set(roots, anchors);
  }
  return anchors;
}

/**
 * What a chain's bytes decide against one bundle at any time: a refusal (signatures, CA flags, path
 * lengths), or the facts the time and identity checks need. Computing it parses every certificate
 * and checks a signature, the dearest part of a connection after the handshake itself.
 */
type ChainFacts =
  | { readonly refusal: ChainVerdict }
  | {
      /** [notBefore, notAfter] in ms of each certificate, leaf first, the anchoring root last. */
      readonly validity: readonly (readonly [number, number])[];
      /** Every SPIFFE ID in the leaf's URI SANs, trusted or not. */
      readonly identities: readonly SpiffeId[];
    };

/** Facts per bundle and chain: the same client or server comes back on every connection. */
const factsCache = new WeakMap<readonly Buffer[], Map<string, ChainFacts>>();
const FACTS_PER_BUNDLE = 512;

/**
 * Verifies a peer's chain (leaf first) against trusted roots at `nowMs`, then its SPIFFE identity
 * against the trusted trust domains: what a STRICT port and the CA's renewal path both require.
 * Each certificate must be signed by the next (or by a root), within its validity, and CAs above
 * the leaf must be CAs. A refusal names the first rule that failed.
 *
 * What does not depend on the time is remembered per bundle (`roots`, by identity) and exact chain
 * bytes, so a peer seen before costs a map lookup, not a parse and a signature check.
 */
export function verifyPeerChain(
  chain: readonly Buffer[],
  roots: readonly Buffer[],
  nowMs: number,
  trustDomains: readonly string[],
): ChainVerdict {
  if (chain.length === 0) return refuse('NO_CLIENT_CERT', 'the peer presented no certificate');
  let byChain = factsCache.get(roots);
  if (!byChain) {
    byChain = new Map();
    factsCache.set(roots, byChain);
  }
  const key = chainKey(chain);
  let facts = byChain.get(key);
  if (facts) {
    byChain.delete(key);
  } else {
    facts = chainFacts(chain, roots);
    if (byChain.size >= FACTS_PER_BUNDLE) byChain.delete(byChain.keys().next().value as string);
  }
  byChain.set(key, facts);
  if ('refusal' in facts) return facts.refusal;
  for (const [from, to] of facts.validity) {
    if (nowMs < from) {
      return refuse(
        'NOT_YET_VALID',
        `certificate not valid until ${new Date(from).toISOString()} (skew ${Math.round((from - nowMs) / 1000)}s)`,
      );
    }
    if (nowMs > to) return refuse('CERT_EXPIRED', `certificate expired at ${new Date(to).toISOString()}`);
  }
  if (facts.identities.length === 0) return refuse('NO_SPIFFE_ID', 'the certificate carries no SPIFFE ID');
  const trusted = facts.identities.filter((id) => trustDomains.includes(id.trustDomain));
  if (trusted.length === 0) {
    return refuse(
      'UNTRUSTED_TRUST_DOMAIN',
      `peer identity ${facts.identities.map((i) => i.uri).join(', ')} is not in a trusted trust domain (${trustDomains.join(', ')})`,
    );
  }
  return { ok: true, identities: trusted, notAfter: new Date(facts.validity[0]![1]) };
}

/**
 * SHA-256 over the chain, each certificate prefixed by its length: a fixed-size key whatever a peer
 * sends (up to OpenSSL's 100 KB of chain), so 512 remembered chains stay small.
 */
function chainKey(chain: readonly Buffer[]): string {
  const hash = createHash('sha256');
  const length = Buffer.alloc(4);
  for (const cert of chain) {
    length.writeUInt32BE(cert.length);
    hash.update(length).update(cert);
  }
  return hash.digest('base64');
}

/**
 * Names a peer chose go into refusal messages (logs, and the facts kept above): at most 200
 * characters. The kept part is copied: a slice would hold on to the whole name.
 */
function clip(text: string): string {
  if (text.length <= MAX_NAME_CHARS) return text;
  const kept = Buffer.from(text.slice(0, MAX_NAME_CHARS), 'utf16le').toString('utf16le');
  return `${kept}… (${text.length} characters)`;
}
const MAX_NAME_CHARS = 200;

function chainFacts(chain: readonly Buffer[], roots: readonly Buffer[]): ChainFacts {
  let certs: X509Certificate[];
  try {
    certs = chain.map((c) => new X509Certificate(c));
  } catch (err) {
    return { refusal: refuse('BAD_CERTIFICATE', `unreadable certificate: ${(err as Error).message}`) };
  }
  const anchors = parsedRoots(roots);
  // Walk up: each certificate must be issued by the next one presented, or by a trusted root.
  let anchored = false;
  for (let i = 0; i < certs.length && !anchored; i++) {
    const cert = certs[i]!;
    const root = anchors.find((a) => cert.checkIssued(a) && cert.verify(a.publicKey));
    if (root) {
      anchored = true;
      certs = certs.slice(0, i + 1);
      certs.push(root);
      break;
    }
    const next = certs[i + 1];
    if (!next || !cert.checkIssued(next) || !cert.verify(next.publicKey) || !next.ca) {
      // An empty issuer name (a leaf used as a CA) leaves `issuer` undefined.
      const issuer = clip((cert.issuer ?? '').replace(/\n/g, ', ')) || '(empty)';
      return {
        refusal: refuse(
          'UNKNOWN_CA',
          `the certificate chain does not lead to a trusted root (issuer: ${issuer})`,
        ),
      };
    }
  }
  if (!anchored) {
    return { refusal: refuse('UNKNOWN_CA', 'the certificate chain does not lead to a trusted root') };
  }
  // RFC 5280 6.1.4: every issuer must be a CA allowed to sign certificates, and a pathLenConstraint
  // bounds how many intermediates may follow it toward the leaf.
  for (let i = 1; i < certs.length; i++) {
    let fields: CertificateFields;
    try {
      fields = readCertificate(Buffer.from(certs[i]!.raw));
    } catch (err) {
      return { refusal: refuse('BAD_CERTIFICATE', `unreadable certificate: ${(err as Error).message}`) };
    }
    if (!fields.isCa || (fields.keyUsage !== undefined && !fields.keyUsage.includes('keyCertSign'))) {
      return {
        refusal: refuse(
          'UNKNOWN_CA',
          `an issuer in the chain is not a CA allowed to sign certificates (${clip(fields.subject) || '(empty)'})`,
        ),
      };
    }
    const below = i - 1;
    if (fields.pathLength !== undefined && below > fields.pathLength) {
      return {
        refusal: refuse(
          'UNKNOWN_CA',
          `the chain is longer than ${clip(fields.subject)} allows (pathLen ${fields.pathLength}, ${below} intermediate${below === 1 ? '' : 's'} below it)`,
        ),
      };
    }
  }
  const uris = (certs[0]!.subjectAltName ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
  const identities: SpiffeId[] = [];
  for (const uri of uris) {
    const parsed = parseSpiffeId(uri);
    if (parsed.ok) identities.push(parsed.id);
  }
  return {
    validity: certs.map((c) => [Date.parse(c.validFrom), Date.parse(c.validTo)] as const),
    identities,
  };
}
