/**
 * verifyPeerChain as a table: what a STRICT port and the CA's renewal path accept and, when not, the
 * refusal they log. Every certificate is made in-process; time comes only from the nowMs argument,
 * and the certificates live in 2035 so that a stray read of the wall clock would fail every case.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import { CertificateAuthority, createRoot, selfSignedMaterial } from '../../src/pki/ca.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { createCsr } from '../../src/pki/csr.js';
import type { ChainRefusal } from '../../src/pki/verify.js';
import { verifyPeerChain } from '../../src/pki/verify.js';
import { buildCertificate, encodeName, keyIdentifier } from '../../src/pki/x509.js';
import { readCertificate } from '../../src/pki/x509-read.js';

const T0 = Date.parse('2035-06-01T00:00:00Z');
const TRUST_DOMAINS = ['cluster.local'];

function spiffe(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  assert.ok(r.ok, uri);
  return r.id;
}

const PAYMENTS = spiffe('spiffe://cluster.local/ns/finance/sa/payments');
const OTHER_TD = spiffe('spiffe://other.example/ns/finance/sa/payments');

interface KeyPair {
  readonly certificate: Buffer;
  readonly key: KeyObject;
}

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

/** A certificate signed by `issuer`, with exactly the fields asked for. */
function craft(
  issuer: KeyPair,
  opts: { isCa: boolean; uris?: readonly string[]; name?: string; notBefore: number; notAfter: number },
): KeyPair {
  const key = ecKey();
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const issuerFields = readCertificate(issuer.certificate);
  const certificate = buildCertificate(
    {
      serial: randomBytes(8),
      issuerName: issuerFields.subjectName,
      subjectName: opts.name === undefined ? encodeName({}) : encodeName({ commonName: opts.name }),
      notBefore: new Date(opts.notBefore),
      notAfter: new Date(opts.notAfter),
      subjectPublicKeyInfo: spki,
      isCa: opts.isCa,
      uris: opts.uris ?? [],
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: issuerFields.subjectKeyId,
    },
    issuer.key,
  );
  return { certificate, key };
}

/** A leaf as the CA issues it at T0: NotBefore T0 - 2 min, NotAfter T0 + ttl. */
function issue(signer: CertificateAuthority, id: SpiffeId, ttlMs = DAY_MS): Buffer {
  return signer.sign(createCsr(ecKey()), { identities: [id], method: 'test' }, { ttlMs }).certificate;
}

function caOf(trustDomain: string, root: KeyPair): CertificateAuthority {
  return new CertificateAuthority(selfSignedMaterial(trustDomain, root), {
    clock: { now: () => T0 },
    random: randomBytes,
  });
}

const ROOT = createRoot({ trustDomain: 'cluster.local', now: T0 - 30 * DAY_MS, random: randomBytes });
const MESH_CA = caOf('cluster.local', ROOT);
const FOREIGN_ROOT = createRoot({ trustDomain: 'cluster.local', now: T0 - 30 * DAY_MS, random: randomBytes });
const OTHER_TD_ROOT = createRoot({
  trustDomain: 'other.example',
  now: T0 - 30 * DAY_MS,
  random: randomBytes,
});

const INTERMEDIATE = craft(ROOT, {
  isCa: true,
  name: 'intermediate',
  notBefore: T0 - DAY_MS,
  notAfter: T0 + 365 * DAY_MS,
});
/** An intermediate that expires an hour after T0, while the leaf it signed runs a day. */
const SHORT_INTERMEDIATE = craft(ROOT, {
  isCa: true,
  name: 'short-lived intermediate',
  notBefore: T0 - DAY_MS,
  notAfter: T0 + HOUR_MS,
});
/** A CA:FALSE certificate of the root, used as if it were an intermediate. */
const NOT_A_CA = craft(ROOT, {
  isCa: false,
  name: 'not a CA',
  uris: [PAYMENTS.uri],
  notBefore: T0 - DAY_MS,
  notAfter: T0 + 365 * DAY_MS,
});

const leafOf = (issuer: KeyPair, uris: readonly string[] = [PAYMENTS.uri]) =>
  craft(issuer, { isCa: false, uris, notBefore: T0 - 2 * 60_000, notAfter: T0 + DAY_MS }).certificate;

const LEAF = issue(MESH_CA, PAYMENTS);
const LEAF_NOT_BEFORE = T0 - 2 * 60_000;
const LEAF_NOT_AFTER = T0 + DAY_MS;
const INTERMEDIATE_LEAF = leafOf(INTERMEDIATE);

interface Case {
  readonly name: string;
  readonly chain: readonly Buffer[];
  readonly roots?: readonly Buffer[];
  readonly nowMs?: number;
  readonly trustDomains?: readonly string[];
  readonly expect: 'ok' | ChainRefusal;
  /** For a refusal: what the message must say. For ok: the identities returned. */
  readonly message?: RegExp;
  readonly identities?: readonly string[];
}

const CASES: readonly Case[] = [
  { name: 'a leaf of a trusted root', chain: [LEAF], expect: 'ok', identities: [PAYMENTS.uri] },
  {
    name: 'a leaf with its intermediate, the root not sent',
    chain: [INTERMEDIATE_LEAF, INTERMEDIATE.certificate],
    expect: 'ok',
    identities: [PAYMENTS.uri],
  },
  {
    name: 'a leaf with its intermediate and the root sent as well',
    chain: [INTERMEDIATE_LEAF, INTERMEDIATE.certificate, ROOT.certificate],
    expect: 'ok',
    identities: [PAYMENTS.uri],
  },
  {
    name: 'a leaf without the intermediate that signed it',
    chain: [INTERMEDIATE_LEAF],
    expect: 'UNKNOWN_CA',
    message: /does not lead to a trusted root \(issuer: CN=intermediate\)/,
  },
  {
    name: 'a leaf of a root that is not trusted (same trust domain)',
    chain: [issue(caOf('cluster.local', FOREIGN_ROOT), PAYMENTS)],
    expect: 'UNKNOWN_CA',
    message: /does not lead to a trusted root/,
  },
  {
    name: 'a leaf sent with its own root, which the verifier does not trust',
    chain: [issue(caOf('cluster.local', FOREIGN_ROOT), PAYMENTS), FOREIGN_ROOT.certificate],
    expect: 'UNKNOWN_CA',
  },
  { name: 'no trusted roots at all', chain: [LEAF], roots: [], expect: 'UNKNOWN_CA' },
  {
    name: 'a leaf signed by a certificate that is not a CA',
    chain: [leafOf(NOT_A_CA), NOT_A_CA.certificate],
    expect: 'UNKNOWN_CA',
    message: /issuer: CN=not a CA/,
  },
  {
    name: 'a leaf at exactly its NotAfter is still valid',
    chain: [LEAF],
    nowMs: LEAF_NOT_AFTER,
    expect: 'ok',
    identities: [PAYMENTS.uri],
  },
  {
    name: 'a leaf one second past its NotAfter',
    chain: [LEAF],
    nowMs: LEAF_NOT_AFTER + 1000,
    expect: 'CERT_EXPIRED',
    message: new RegExp(`certificate expired at ${new Date(LEAF_NOT_AFTER).toISOString()}`),
  },
  {
    name: 'an intermediate past its NotAfter, while the leaf is within its own',
    chain: [leafOf(SHORT_INTERMEDIATE), SHORT_INTERMEDIATE.certificate],
    nowMs: T0 + 2 * HOUR_MS,
    expect: 'CERT_EXPIRED',
    message: new RegExp(`certificate expired at ${new Date(T0 + HOUR_MS).toISOString()}`),
  },
  {
    name: 'the same chain an hour earlier, before the intermediate expired',
    chain: [leafOf(SHORT_INTERMEDIATE), SHORT_INTERMEDIATE.certificate],
    nowMs: T0 + HOUR_MS,
    expect: 'ok',
    identities: [PAYMENTS.uri],
  },
  {
    name: 'a leaf at exactly its NotBefore is valid',
    chain: [LEAF],
    nowMs: LEAF_NOT_BEFORE,
    expect: 'ok',
    identities: [PAYMENTS.uri],
  },
  {
    name: 'a leaf 90 s before its NotBefore: the skew is in the message',
    chain: [LEAF],
    nowMs: LEAF_NOT_BEFORE - 90_000,
    expect: 'NOT_YET_VALID',
    message: new RegExp(`not valid until ${new Date(LEAF_NOT_BEFORE).toISOString()} \\(skew 90s\\)`),
  },
  {
    name: 'a chain of 2035 judged at a nowMs of 2001',
    chain: [LEAF],
    nowMs: Date.parse('2001-01-01T00:00:00Z'),
    expect: 'NOT_YET_VALID',
  },
  {
    name: 'a leaf without any URI SAN',
    chain: [leafOf(ROOT, [])],
    expect: 'NO_SPIFFE_ID',
    message: /carries no SPIFFE ID/,
  },
  {
    name: 'a leaf whose only URI is not a SPIFFE ID',
    chain: [leafOf(ROOT, ['https://payments.finance.example/'])],
    expect: 'NO_SPIFFE_ID',
  },
  {
    name: 'a leaf whose spiffe URI breaks the SPIFFE rules (upper-case trust domain)',
    chain: [leafOf(ROOT, ['spiffe://Cluster.local/ns/finance/sa/payments'])],
    expect: 'NO_SPIFFE_ID',
  },
  {
    name: 'a leaf of another trust domain whose root is trusted',
    chain: [issue(caOf('other.example', OTHER_TD_ROOT), OTHER_TD)],
    roots: [ROOT.certificate, OTHER_TD_ROOT.certificate],
    expect: 'UNTRUSTED_TRUST_DOMAIN',
    message:
      /peer identity spiffe:\/\/other\.example\/ns\/finance\/sa\/payments is not in a trusted trust domain \(cluster\.local\)/,
  },
  {
    name: 'the same leaf when its trust domain is trusted',
    chain: [issue(caOf('other.example', OTHER_TD_ROOT), OTHER_TD)],
    roots: [ROOT.certificate, OTHER_TD_ROOT.certificate],
    trustDomains: ['cluster.local', 'other.example'],
    expect: 'ok',
    identities: [OTHER_TD.uri],
  },
  {
    name: 'a leaf with two SPIFFE IDs: only the one of a trusted trust domain is returned',
    chain: [leafOf(ROOT, [OTHER_TD.uri, PAYMENTS.uri])],
    expect: 'ok',
    identities: [PAYMENTS.uri],
  },
  { name: 'no trusted trust domains', chain: [LEAF], trustDomains: [], expect: 'UNTRUSTED_TRUST_DOMAIN' },
  { name: 'an empty chain', chain: [], expect: 'NO_CLIENT_CERT', message: /presented no certificate/ },
  {
    name: 'garbage in place of the leaf',
    chain: [Buffer.from('not a certificate')],
    expect: 'BAD_CERTIFICATE',
    message: /unreadable certificate/,
  },
  {
    name: 'a truncated leaf',
    chain: [LEAF.subarray(0, LEAF.length - 20)],
    expect: 'BAD_CERTIFICATE',
  },
];

for (const c of CASES) {
  test(`verifyPeerChain: ${c.name} → ${c.expect}`, () => {
    const roots = c.roots ?? [ROOT.certificate];
    const verify = () => verifyPeerChain(c.chain, roots, c.nowMs ?? T0, c.trustDomains ?? TRUST_DOMAINS);
    const verdict = verify();
    const said = JSON.stringify(verdict);
    // The second time, the same bundle and bytes come from what the first remembered.
    assert.deepEqual(verify(), verdict);
    if (c.expect === 'ok') {
      assert.ok(verdict.ok, said);
      assert.deepEqual(
        verdict.identities.map((i) => i.uri),
        c.identities,
      );
    } else {
      assert.ok(!verdict.ok, `accepted: ${said}`);
      assert.equal(verdict.reason, c.expect, said);
      if (c.message) assert.match(verdict.message, c.message);
    }
  });
}

test('an accepted chain reports the leaf NotAfter, not the intermediate or root', () => {
  const verdict = verifyPeerChain(
    [INTERMEDIATE_LEAF, INTERMEDIATE.certificate],
    [ROOT.certificate],
    T0,
    TRUST_DOMAINS,
  );
  assert.ok(verdict.ok, JSON.stringify(verdict));
  assert.equal(verdict.notAfter.toISOString(), new Date(T0 + DAY_MS).toISOString());
  assert.equal(verdict.identities[0]?.trustDomain, 'cluster.local');
});

test('a root rotation: a leaf of the new root is refused until the new root is in the trusted set', () => {
  const newRoot = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const leaf = issue(caOf('cluster.local', newRoot), PAYMENTS);
  const before = verifyPeerChain([leaf], [ROOT.certificate], T0, TRUST_DOMAINS);
  assert.equal(before.ok ? 'ok' : before.reason, 'UNKNOWN_CA');
  const during = verifyPeerChain([leaf], [ROOT.certificate, newRoot.certificate], T0, TRUST_DOMAINS);
  assert.ok(during.ok, JSON.stringify(during));
  const old = verifyPeerChain([LEAF], [ROOT.certificate, newRoot.certificate], T0, TRUST_DOMAINS);
  assert.ok(old.ok, `a leaf of the old root is still accepted during the rotation: ${JSON.stringify(old)}`);
});

test('a remembered chain is still checked against the clock at every call', () => {
  const roots = [ROOT.certificate];
  const at = (nowMs: number, chain: readonly Buffer[] = [LEAF]) => {
    const v = verifyPeerChain(chain, roots, nowMs, TRUST_DOMAINS);
    return v.ok ? 'ok' : v.reason;
  };
  assert.equal(at(T0), 'ok');
  assert.equal(at(LEAF_NOT_AFTER + 1), 'CERT_EXPIRED');
  assert.equal(at(LEAF_NOT_BEFORE - 1), 'NOT_YET_VALID');
  assert.equal(at(T0), 'ok');
  // An intermediate that runs out before its leaf ends the chain with it.
  const short = [leafOf(SHORT_INTERMEDIATE), SHORT_INTERMEDIATE.certificate];
  assert.equal(at(T0, short), 'ok');
  assert.equal(at(T0 + 2 * HOUR_MS, short), 'CERT_EXPIRED');
});

test('a remembered chain is checked against the trust domains of each call', () => {
  const roots = [ROOT.certificate];
  const v1 = verifyPeerChain([LEAF], roots, T0, ['other.example']);
  assert.equal(v1.ok ? 'ok' : v1.reason, 'UNTRUSTED_TRUST_DOMAIN');
  const v2 = verifyPeerChain([LEAF], roots, T0, TRUST_DOMAINS);
  assert.ok(v2.ok, JSON.stringify(v2));
});

test('what a chain proved under one bundle is not carried to another', () => {
  const newRoot = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const leaf = issue(caOf('cluster.local', newRoot), PAYMENTS);
  const oldBundle = [ROOT.certificate];
  const newBundle = [ROOT.certificate, newRoot.certificate];
  const reason = (roots: readonly Buffer[]) => {
    const v = verifyPeerChain([leaf], roots, T0, TRUST_DOMAINS);
    return v.ok ? 'ok' : v.reason;
  };
  assert.equal(reason(oldBundle), 'UNKNOWN_CA');
  assert.equal(reason(newBundle), 'ok');
  assert.equal(reason(oldBundle), 'UNKNOWN_CA');
  // The leaf alone is not the key: the same leaf with a stray certificate after it is its own chain.
  const withStray = verifyPeerChain(
    [LEAF, NOT_A_CA.certificate],
    [FOREIGN_ROOT.certificate],
    T0,
    TRUST_DOMAINS,
  );
  assert.equal(withStray.ok ? 'ok' : withStray.reason, 'UNKNOWN_CA');
});

test('more distinct chains than are remembered: each verdict is still exact', () => {
  const roots = [ROOT.certificate];
  // One requester key for all 600 (each leaf still differs, by serial): 600 fresh key pairs made
  // Node 20 deadlock once in CI, a GC finalizing a key-generation job while
  // `asymmetricKeyDetails` held that key's lock (see the session 4 note).
  const csr = createCsr(ecKey());
  const leaves = Array.from(
    { length: 600 },
    () => MESH_CA.sign(csr, { identities: [PAYMENTS], method: 'test' }, { ttlMs: DAY_MS }).certificate,
  );
  for (const leaf of [...leaves, ...leaves]) {
    const v = verifyPeerChain([leaf], roots, T0, TRUST_DOMAINS);
    assert.ok(v.ok, JSON.stringify(v));
  }
  const late = verifyPeerChain([leaves[0]!], roots, LEAF_NOT_AFTER + 1, TRUST_DOMAINS);
  assert.equal(late.ok ? 'ok' : late.reason, 'CERT_EXPIRED');
});

test('a refusal names what the peer chose at bounded length: a huge issuer name is clipped', () => {
  const hugeCa = craft(ROOT, {
    isCa: true,
    name: 'x'.repeat(20_000),
    notBefore: T0 - DAY_MS,
    notAfter: T0 + DAY_MS,
  });
  // The leaf alone: its issuer is no trusted root, and the refusal names that issuer.
  const v = verifyPeerChain([leafOf(hugeCa)], [ROOT.certificate], T0, TRUST_DOMAINS);
  assert.ok(!v.ok);
  assert.equal(v.reason, 'UNKNOWN_CA');
  assert.ok(v.message.length < 400, `${v.message.length} characters`);
  assert.match(v.message, /… \(\d+ characters\)\)$/);
});
