import assert from 'node:assert/strict';
import {
  createHash,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  X509Certificate,
} from 'node:crypto';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { AuthenticatedCaller } from '../../src/pki/ca.js';
import {
  CertificateAuthority,
  caMaterialFromFiles,
  createRoot,
  DEFAULT_LEAF_TTL_MS,
  MAX_LEAF_TTL_MS,
  selfSignedMaterial,
} from '../../src/pki/ca.js';
import { DAY_MS } from '../../src/pki/clock.js';
import { createCsr, verifyCsr } from '../../src/pki/csr.js';
import { keyIdentifier, OID, toPem } from '../../src/pki/x509.js';
import { readCertificate } from '../../src/pki/x509-read.js';
import { signIntermediate } from '../helpers/ca.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');

function id(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  assert.ok(r.ok);
  return r.id;
}

const PAYMENTS = id('spiffe://cluster.local/ns/finance/sa/payments');
const caller = (...ids: SpiffeId[]): AuthenticatedCaller => ({ identities: ids, method: 'test' });

function ec(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

function newCa(now = T0, opts: { rootTtlMs?: number } = {}) {
  let clock = now;
  const root = createRoot({
    trustDomain: 'cluster.local',
    now,
    random: randomBytes,
    ...(opts.rootTtlMs ? { ttlMs: opts.rootTtlMs } : {}),
  });
  const ca = new CertificateAuthority(selfSignedMaterial('cluster.local', root), {
    clock: { now: () => clock },
    random: randomBytes,
  });
  return { ca, root, setNow: (ms: number) => (clock = ms) };
}

function expectCode(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof KmtlsError, `expected KmtlsError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (message) assert.match(err.message, message);
    return true;
  });
}

test('the root is a self-signed ECDSA P-256 CA for 10 years with O = trust domain', () => {
  const { root } = newCa();
  const c = readCertificate(root.certificate);
  assert.equal(c.isCa, true);
  assert.deepEqual(c.keyUsage, ['keyCertSign', 'cRLSign']);
  assert.match(c.subject, /^O=cluster\.local, CN=kmtls root CA /);
  assert.equal(c.subject, c.issuer);
  assert.equal(c.notAfter.getTime() - T0, 3650 * DAY_MS);
  const x = new X509Certificate(root.certificate);
  assert.ok(x.verify(x.publicKey), 'self-signed');
  assert.equal(x.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
});

test('a leaf carries the caller identity as a critical URI SAN, whatever the CSR asks for', () => {
  const { ca, root } = newCa();
  const csr = createCsr(ec(), { uris: ['spiffe://cluster.local/ns/kube-system/sa/admin'] });
  const issued = ca.sign(csr, caller(PAYMENTS));
  const c = readCertificate(issued.certificate);
  assert.deepEqual(c.uris, [PAYMENTS.uri]);
  assert.equal(c.sanCritical, true);
  assert.equal(c.subject, '');
  assert.equal(c.isCa, false);
  assert.deepEqual(c.keyUsage, ['digitalSignature', 'keyEncipherment']);
  assert.deepEqual(c.extKeyUsage, [OID.serverAuth, OID.clientAuth]);
  assert.deepEqual(c.authorityKeyId, readCertificate(root.certificate).subjectKeyId);
  assert.deepEqual(c.subjectKeyId, keyIdentifier(c.subjectPublicKeyInfo));
  assert.equal(
    c.subjectKeyId?.toString('hex'),
    createHash('sha1')
      .update(c.subjectPublicKeyInfo.subarray(c.subjectPublicKeyInfo.length - 65))
      .digest('hex'),
  );
});

test('validity: NotBefore backdated 2 minutes, NotAfter now + TTL, 24h by default', () => {
  const { ca } = newCa();
  const issued = ca.sign(createCsr(ec()), caller(PAYMENTS));
  assert.equal(issued.notBefore.getTime(), T0 - 120_000);
  assert.equal(issued.notAfter.getTime(), T0 + DEFAULT_LEAF_TTL_MS);
  const c = readCertificate(issued.certificate);
  assert.equal(c.notBefore.getTime(), T0 - 120_000);
  assert.equal(c.notAfter.getTime(), T0 + DEFAULT_LEAF_TTL_MS);
});

test('a TTL of zero or less means the default, as in Istio', () => {
  const { ca } = newCa();
  for (const ttlMs of [0, -5]) {
    assert.equal(
      ca.sign(createCsr(ec()), caller(PAYMENTS), { ttlMs }).notAfter.getTime(),
      T0 + DEFAULT_LEAF_TTL_MS,
    );
  }
});

test('a TTL of exactly 90 days is granted; one millisecond more is refused naming both values', () => {
  const { ca } = newCa();
  assert.equal(
    ca.sign(createCsr(ec()), caller(PAYMENTS), { ttlMs: MAX_LEAF_TTL_MS }).notAfter.getTime(),
    T0 + MAX_LEAF_TTL_MS,
  );
  expectCode(
    () => ca.sign(createCsr(ec()), caller(PAYMENTS), { ttlMs: MAX_LEAF_TTL_MS + 3_600_000 }),
    'KMTLS_PKI_TTL_TOO_LONG',
    /requested TTL 90d1h is greater than the max allowed TTL 90d/,
  );
});

test('NotAfter never goes beyond the signer', () => {
  const { ca, root } = newCa(T0, { rootTtlMs: 10 * 3_600_000 });
  const issued = ca.sign(createCsr(ec()), caller(PAYMENTS));
  assert.equal(issued.notAfter.getTime(), readCertificate(root.certificate).notAfter.getTime());
});

test('an expired signer signs nothing', () => {
  const { ca, setNow } = newCa(T0, { rootTtlMs: DAY_MS });
  setNow(T0 + DAY_MS + 1000);
  expectCode(() => ca.sign(createCsr(ec()), caller(PAYMENTS)), 'KMTLS_PKI_SIGNER_EXPIRED', /expired at/);
});

test('serials are random, positive and distinct', () => {
  const { ca } = newCa();
  const serials = new Set<string>();
  for (let i = 0; i < 50; i++) {
    const s = ca.sign(createCsr(ec()), caller(PAYMENTS)).serialHex;
    assert.equal(s.length, 32);
    assert.ok(Number.parseInt(s.slice(0, 2), 16) < 0x80, 'positive');
    serials.add(s);
  }
  assert.equal(serials.size, 50);
});

test('the chain is leaf first, root last, and verifies with Node (OpenSSL)', () => {
  const { ca, root } = newCa();
  const issued = ca.sign(createCsr(ec()), caller(PAYMENTS));
  assert.equal(issued.chain.length, 2);
  assert.ok(issued.chain[1]?.equals(root.certificate));
  const leaf = new X509Certificate(issued.chain[0]!);
  assert.ok(leaf.verify(new X509Certificate(root.certificate).publicKey));
  assert.equal(issued.chainPem.match(/BEGIN CERTIFICATE/g)?.length, 2);
});

test('an identity outside the trust domain is refused', () => {
  const { ca } = newCa();
  expectCode(
    () => ca.sign(createCsr(ec()), caller(id('spiffe://other.example/ns/a/sa/b'))),
    'KMTLS_PKI_UNKNOWN_TRUST_DOMAIN',
    /other\.example/,
  );
});

test('a caller without identity is refused', () => {
  const { ca } = newCa();
  expectCode(() => ca.sign(createCsr(ec()), caller()), 'KMTLS_PKI_UNAUTHENTICATED');
});

test('malformed CSRs are refused with KMTLS_PKI_CSR_MALFORMED', () => {
  const { ca } = newCa();
  const good = createCsr(ec());
  const cases: [string, Buffer | string][] = [
    ['garbage', Buffer.from('not a csr at all')],
    ['empty', Buffer.alloc(0)],
    ['truncated', good.subarray(0, good.length - 10)],
    ['trailing bytes', Buffer.concat([good, Buffer.from([0])])],
    ['two PEM blocks', toPem(good, 'CERTIFICATE REQUEST') + toPem(good, 'CERTIFICATE REQUEST')],
    ['a certificate instead', toPem(newCa().root.certificate)],
  ];
  for (const [name, input] of cases) {
    assert.throws(
      () => ca.sign(input, caller(PAYMENTS)),
      (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_PKI_CSR_MALFORMED',
      name,
    );
  }
});

test('a CSR whose signature was made by a different key is refused', () => {
  const { ca } = newCa();
  const a = createCsr(ec());
  const b = createCsr(ec());
  // Graft B's public key into A's request: the signature no longer matches the key it carries.
  const spkiA = verifyCsr(a).subjectPublicKeyInfo;
  const spkiB = verifyCsr(b).subjectPublicKeyInfo;
  const forged = Buffer.from(a);
  forged.set(spkiB, a.indexOf(spkiA));
  expectCode(() => ca.sign(forged, caller(PAYMENTS)), 'KMTLS_PKI_CSR_SIGNATURE');
});

test('a flipped signature bit is refused', () => {
  const { ca } = newCa();
  const csr = Buffer.from(createCsr(ec()));
  csr[csr.length - 3]! ^= 0x01;
  assert.throws(
    () => ca.sign(csr, caller(PAYMENTS)),
    (err: unknown) => err instanceof KmtlsError && /CSR_(SIGNATURE|MALFORMED)/.test(err.code),
  );
});

test('weak or unsupported keys are refused; P-384 and RSA 2048 are accepted', () => {
  const { ca } = newCa();
  const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey;
  expectCode(
    () => ca.sign(createCsr(rsa1024), caller(PAYMENTS)),
    'KMTLS_PKI_CSR_KEY_UNSUPPORTED',
    /RSA 1024 bits/,
  );
  const ed = generateKeyPairSync('ed25519').privateKey;
  assert.throws(() => ca.sign(createCsr(ed), caller(PAYMENTS)));
  const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey;
  assert.ok(ca.sign(createCsr(p384), caller(PAYMENTS)).certificate.length > 0);
  const rsa2048 = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  assert.ok(ca.sign(createCsr(rsa2048), caller(PAYMENTS)).certificate.length > 0);
});

test('a PEM CSR works as well as DER', () => {
  const { ca } = newCa();
  const pem = toPem(createCsr(ec()), 'CERTIFICATE REQUEST');
  assert.deepEqual(readCertificate(ca.sign(pem, caller(PAYMENTS)).certificate).uris, [PAYMENTS.uri]);
});

function intermediateSetup() {
  const root = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const { certificate: inter, key: interKey } = signIntermediate(root, {
    nowMs: T0,
    commonName: 'intermediate',
    notBeforeMs: T0 - 60_000,
  });
  return { root, inter, interKey };
}

test('a plug-in CA (cacerts) signs with the intermediate; the chain runs leaf, intermediate, root', () => {
  const { root, inter, interKey } = intermediateSetup();
  const material = caMaterialFromFiles({
    trustDomain: 'cluster.local',
    caCertPem: toPem(inter),
    caKeyPem: interKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    rootCertPem: toPem(root.certificate),
    certChainPem: toPem(inter) + toPem(root.certificate),
  });
  const ca = new CertificateAuthority(material, { clock: { now: () => T0 }, random: randomBytes });
  const issued = ca.sign(createCsr(ec()), caller(PAYMENTS));
  assert.equal(issued.chain.length, 3);
  assert.ok(issued.chain[1]?.equals(inter));
  assert.ok(issued.chain[2]?.equals(root.certificate));
  assert.equal(readCertificate(issued.certificate).issuer, 'O=cluster.local, CN=intermediate');
});

test('plug-in CA material that does not fit together is refused, saying what is wrong', () => {
  const { root, inter, interKey } = intermediateSetup();
  const other = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const base = {
    trustDomain: 'cluster.local',
    caCertPem: toPem(inter),
    caKeyPem: interKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    rootCertPem: toPem(root.certificate),
    certChainPem: toPem(inter) + toPem(root.certificate),
  };
  const cases: [string, Partial<typeof base>, RegExp][] = [
    [
      'key of another certificate',
      { caKeyPem: ec().export({ format: 'pem', type: 'pkcs8' }).toString() },
      /does not match/,
    ],
    ['root that did not sign the chain', { rootCertPem: toPem(other.certificate) }, /does not link up/],
    [
      'garbage certificate',
      { caCertPem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n' },
      /unreadable ca-cert\.pem/,
    ],
    ['garbage key', { caKeyPem: 'nope' }, /unreadable ca-key\.pem/],
  ];
  for (const [name, change, message] of cases) {
    assert.throws(
      () => caMaterialFromFiles({ ...base, ...change }),
      (err: unknown) =>
        err instanceof KmtlsError && err.code === 'KMTLS_PKI_CACERTS_INVALID' && message.test(err.message),
      name,
    );
  }
});

test('a leaf certificate cannot be used as a signer', () => {
  const { ca } = newCa();
  const key = ec();
  const leaf = ca.sign(createCsr(key), caller(PAYMENTS)).certificate;
  assert.throws(
    () => selfSignedMaterial('cluster.local', { certificate: leaf, key }),
    (err: unknown) => err instanceof KmtlsError && /not a CA certificate/.test(err.message),
  );
});

test('signAsync issues the same certificate shape on the thread pool, and refuses the same way', async () => {
  const { ca, root } = newCa();
  const issued = await ca.signAsync(createCsr(ec()), caller(PAYMENTS));
  const c = readCertificate(issued.certificate);
  assert.deepEqual(c.uris, [PAYMENTS.uri]);
  assert.equal(issued.notAfter.getTime(), T0 + DEFAULT_LEAF_TTL_MS);
  assert.ok(new X509Certificate(issued.certificate).verify(new X509Certificate(root.certificate).publicKey));
  const a = createCsr(ec());
  const forged = Buffer.from(a);
  forged.set(verifyCsr(createCsr(ec())).subjectPublicKeyInfo, a.indexOf(verifyCsr(a).subjectPublicKeyInfo));
  await assert.rejects(
    ca.signAsync(forged, caller(PAYMENTS)),
    (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_PKI_CSR_SIGNATURE',
  );
  await assert.rejects(
    ca.signAsync(Buffer.from('junk'), caller(PAYMENTS)),
    (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_PKI_CSR_MALFORMED',
  );
  await assert.rejects(
    ca.signAsync(createCsr(ec()), caller(PAYMENTS), { ttlMs: MAX_LEAF_TTL_MS + 1000 }),
    (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_PKI_TTL_TOO_LONG',
  );
});

test("the control plane's own identity is issued only to the operator, never to a workload", async () => {
  const { ca } = newCa();
  const cpId = id('spiffe://cluster.local/ns/kmtls-system/sa/kmtls-controlplane');
  const key = ec();
  const csr = createCsr(key);
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  for (const method of ['bootstrap-token', 'client-certificate', 'token-review', 'controller']) {
    const workload = { identities: [cpId], method };
    expectCode(() => ca.sign(csr, workload), 'KMTLS_PKI_BAD_IDENTITY', /reserved for the control plane/);
    expectCode(() => ca.signPublicKey(spki, workload), 'KMTLS_PKI_BAD_IDENTITY', new RegExp(method));
    await assert.rejects(ca.signAsync(csr, workload), (err: unknown) => {
      assert.ok(err instanceof KmtlsError);
      assert.equal(err.code, 'KMTLS_PKI_BAD_IDENTITY');
      return true;
    });
    // Asking for it beside a legitimate identity does not help.
    expectCode(() => ca.sign(csr, { identities: [PAYMENTS, cpId], method }), 'KMTLS_PKI_BAD_IDENTITY');
  }
  const issued = ca.signPublicKey(spki, { identities: [cpId], method: 'operator' });
  assert.deepEqual(
    issued.identities.map((i) => i.uri),
    [cpId.uri],
  );
  // Other service accounts of the control-plane namespace are ordinary identities.
  ca.sign(csr, caller(id('spiffe://cluster.local/ns/kmtls-system/sa/kmtls-check')));
});

test('the reserved identities follow the control plane namespace when given', () => {
  const root = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const cpElsewhere = id('spiffe://cluster.local/ns/mesh-ops/sa/kmtls-controlplane');
  const ca = new CertificateAuthority(selfSignedMaterial('cluster.local', root), {
    clock: { now: () => T0 },
    random: randomBytes,
    reservedIdentities: [cpElsewhere.uri],
  });
  const csr = createCsr(ec());
  expectCode(() => ca.sign(csr, caller(cpElsewhere)), 'KMTLS_PKI_BAD_IDENTITY');
  // The default one is not reserved any more: the set replaces the default.
  ca.sign(csr, caller(id('spiffe://cluster.local/ns/kmtls-system/sa/kmtls-controlplane')));
});
