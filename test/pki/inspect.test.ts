/**
 * inspectCertificates, what `kmtls ca inspect` prints: the role of each certificate, its times, and
 * the warnings an operator must see. Certificates that kmtls would never issue (no digitalSignature,
 * no clientAuth, a non-critical SAN) are made by re-signing a built certificate with one field
 * changed. Time comes from the argument only.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { createPublicKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { test } from 'node:test';
import { createRoot } from '../../src/pki/ca.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { bitString, bytesOf, childrenOf, readRoot, sequence, TAG } from '../../src/pki/der.js';
import type { CertificateReport } from '../../src/pki/inspect.js';
import { inspectCertificates } from '../../src/pki/inspect.js';
import { buildCertificate, encodeName, keyIdentifier } from '../../src/pki/x509.js';
import { readCertificate } from '../../src/pki/x509-read.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const PAYMENTS = 'spiffe://cluster.local/ns/finance/sa/payments';

interface KeyPair {
  readonly certificate: Buffer;
  readonly key: KeyObject;
}

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

interface CraftOptions {
  readonly isCa?: boolean;
  readonly uris?: readonly string[];
  readonly name?: string;
  readonly notBefore?: number;
  readonly notAfter?: number;
  readonly key?: KeyObject;
}

/** A certificate signed by `issuer`; by default a kmtls-like leaf valid from T0 - 1h for a day. */
function craft(issuer: KeyPair, opts: CraftOptions = {}): KeyPair {
  const key = opts.key ?? ecKey();
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const issuerFields = readCertificate(issuer.certificate);
  const certificate = buildCertificate(
    {
      serial: randomBytes(8),
      issuerName: issuerFields.subjectName,
      subjectName:
        opts.name === undefined
          ? encodeName({})
          : encodeName({ organization: 'cluster.local', commonName: opts.name }),
      notBefore: new Date(opts.notBefore ?? T0 - HOUR_MS),
      notAfter: new Date(opts.notAfter ?? T0 - HOUR_MS + DAY_MS),
      subjectPublicKeyInfo: spki,
      isCa: opts.isCa ?? false,
      uris: opts.uris ?? (opts.isCa ? [] : [PAYMENTS]),
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: issuerFields.subjectKeyId,
    },
    issuer.key,
  );
  return { certificate, key };
}

/**
 * The certificate with `from` (hex, found exactly once in its tbsCertificate) replaced by `to` of the
 * same length, signed again by `signerKey`: one field changed, everything else as built.
 */
function patched(certificate: Buffer, signerKey: KeyObject, from: string, to: string): Buffer {
  assert.equal(from.length, to.length);
  const [tbsNode, algNode] = childrenOf(certificate, readRoot(certificate, TAG.SEQUENCE));
  const tbs = Buffer.from(bytesOf(certificate, tbsNode!));
  const needle = Buffer.from(from, 'hex');
  const at = tbs.indexOf(needle);
  assert.ok(at >= 0, `${from} is not in the certificate`);
  assert.equal(tbs.indexOf(needle, at + 1), -1, `${from} is in the certificate more than once`);
  Buffer.from(to, 'hex').copy(tbs, at);
  const signature = sign('sha256', tbs, { key: signerKey, dsaEncoding: 'der' });
  return sequence(tbs, bytesOf(certificate, algNode!), bitString(signature));
}

/** keyUsage extension value: BIT STRING, 5 unused bits, digitalSignature + keyEncipherment. */
const KU_LEAF = '0404030205a0';
const KU_CA = '040403020106';
const EKU_SERVER_CLIENT = '06082b0601050507030106082b06010505070302';
const SAN_CRITICAL = '0603551d110101ff';

const ROOT = createRoot({ trustDomain: 'cluster.local', now: T0 - 30 * DAY_MS, random: randomBytes });
const INTERMEDIATE = craft(ROOT, {
  isCa: true,
  name: 'intermediate',
  notBefore: T0 - DAY_MS,
  notAfter: T0 + 365 * DAY_MS,
});
const LEAF = craft(ROOT).certificate;
const ROOT_SUBJECT = readCertificate(ROOT.certificate).subject;

function only(reports: readonly CertificateReport[], index: number): CertificateReport {
  const r = reports[index];
  assert.ok(r, `no report ${index}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Roles and fields

test('roles: leaf, intermediate and root in a chain; roots in a bundle; a lone intermediate', () => {
  const viaIntermediate = craft(INTERMEDIATE).certificate;
  const cases: [string, Buffer[], CertificateReport['role'][]][] = [
    ['leaf and root', [LEAF, ROOT.certificate], ['leaf', 'root']],
    [
      'leaf, intermediate, root',
      [viaIntermediate, INTERMEDIATE.certificate, ROOT.certificate],
      ['leaf', 'intermediate', 'root'],
    ],
    [
      'a trust bundle of two roots',
      [
        ROOT.certificate,
        createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes }).certificate,
      ],
      ['root', 'root'],
    ],
    ['an intermediate on its own', [INTERMEDIATE.certificate], ['intermediate']],
    ['a leaf on its own', [LEAF], ['leaf']],
  ];
  for (const [name, ders, roles] of cases) {
    assert.deepEqual(
      inspectCertificates(ders, T0).map((r) => r.role),
      roles,
      name,
    );
  }
});

test('a report carries identity, names, serial, validity, time left and usages as text', () => {
  const [leaf, root] = inspectCertificates([LEAF, ROOT.certificate], T0);
  assert.ok(leaf && root);
  assert.deepEqual(leaf, {
    index: 0,
    role: 'leaf',
    identities: [PAYMENTS],
    subject: '',
    issuer: ROOT_SUBJECT,
    serial: readCertificate(LEAF).serialHex,
    notBefore: new Date(T0 - HOUR_MS).toISOString(),
    notAfter: new Date(T0 - HOUR_MS + DAY_MS).toISOString(),
    lifetime: '1d',
    timeLeftMs: 23 * HOUR_MS,
    timeLeft: '23h',
    keyUsage: ['digitalSignature', 'keyEncipherment'],
    extKeyUsage: ['serverAuth', 'clientAuth'],
    signedByNext: true,
    warnings: [],
  });
  assert.equal(root.role, 'root');
  assert.equal(root.signedByNext, true, 'a root is checked against itself');
  assert.deepEqual(root.keyUsage, ['keyCertSign', 'cRLSign']);
  assert.deepEqual(root.warnings, []);
});

test('the last certificate of a chain without its root has no signer to check against', () => {
  const viaIntermediate = craft(INTERMEDIATE).certificate;
  const reports = inspectCertificates([viaIntermediate, INTERMEDIATE.certificate], T0);
  assert.deepEqual(
    reports.map((r) => r.signedByNext),
    [true, undefined],
  );
  assert.deepEqual(
    reports.map((r) => r.warnings),
    [[], []],
  );
});

// ---------------------------------------------------------------------------------------------
// Warnings, one per row

interface WarningCase {
  readonly name: string;
  readonly ders: () => Buffer[];
  readonly nowMs: number;
  readonly index: number;
  /** Exactly the warnings expected on certificate `index`. */
  readonly warnings: readonly string[];
}

/** A leaf living exactly 100 hours from T0: 20 % of it is 20 hours. */
const HUNDRED_HOURS = craft(ROOT, { notBefore: T0, notAfter: T0 + 100 * HOUR_MS }).certificate;

const WARNING_CASES: readonly WarningCase[] = [
  {
    name: 'exactly 20 % of the lifetime left: not yet expiring soon',
    ders: () => [HUNDRED_HOURS, ROOT.certificate],
    nowMs: T0 + 80 * HOUR_MS,
    index: 0,
    warnings: [],
  },
  {
    name: 'a millisecond under 20 % left: expiring soon, with what is left of what',
    ders: () => [HUNDRED_HOURS, ROOT.certificate],
    nowMs: T0 + 80 * HOUR_MS + 1,
    index: 0,
    warnings: ['expires within 20% of its lifetime (19h59m59s of 4d4h left)'],
  },
  {
    name: 'an hour after NotAfter: expired',
    ders: () => [HUNDRED_HOURS, ROOT.certificate],
    nowMs: T0 + 101 * HOUR_MS,
    index: 0,
    warnings: ['expired 1h ago'],
  },
  {
    name: 'a millisecond before NotBefore: not yet valid',
    ders: () => [HUNDRED_HOURS, ROOT.certificate],
    nowMs: T0 - 1,
    index: 0,
    warnings: [`not yet valid: valid from ${new Date(T0).toISOString()}`],
  },
  {
    name: 'a leaf whose key usage lacks digitalSignature',
    ders: () => [patched(LEAF, ROOT.key, KU_LEAF, '040403020520'), ROOT.certificate],
    nowMs: T0,
    index: 0,
    warnings: ['key usage lacks digitalSignature: TLS handshakes will fail'],
  },
  {
    name: 'a leaf with serverAuth but not clientAuth',
    ders: () => [
      patched(LEAF, ROOT.key, EKU_SERVER_CLIENT, '06082b0601050507030106082b06010505070303'),
      ROOT.certificate,
    ],
    nowMs: T0,
    index: 0,
    warnings: ['extended key usage lacks serverAuth or clientAuth: a mesh certificate needs both'],
  },
  {
    name: 'a leaf with keyCertSign',
    ders: () => [patched(LEAF, ROOT.key, KU_LEAF, '0404030202a4'), ROOT.certificate],
    nowMs: T0,
    index: 0,
    warnings: ['a leaf with keyCertSign'],
  },
  {
    name: 'a leaf without any URI SAN',
    ders: () => [craft(ROOT, { uris: [] }).certificate, ROOT.certificate],
    nowMs: T0,
    index: 0,
    warnings: ['no SPIFFE ID in the subject alternative names'],
  },
  {
    name: 'a leaf whose only URI is not a SPIFFE ID (and whose SAN is critical, as it must be)',
    ders: () => [craft(ROOT, { uris: ['https://payments.example/'] }).certificate, ROOT.certificate],
    nowMs: T0,
    index: 0,
    warnings: ['no SPIFFE ID in the subject alternative names'],
  },
  {
    name: 'an empty subject with a non-critical SAN',
    ders: () => [patched(LEAF, ROOT.key, SAN_CRITICAL, '0603551d11010100'), ROOT.certificate],
    nowMs: T0,
    index: 0,
    warnings: ['empty subject with a non-critical SAN (RFC 5280 wants it critical)'],
  },
  {
    name: 'a CA:FALSE certificate above a leaf',
    ders: () => {
      const notCa = craft(ROOT, { name: 'not a CA', uris: [] });
      return [craft(notCa).certificate, notCa.certificate, ROOT.certificate];
    },
    nowMs: T0,
    index: 1,
    // A leaf's key usage, so it lacks keyCertSign as well.
    warnings: [
      'not a CA (basicConstraints CA:FALSE) but placed above a certificate in the chain',
      'key usage lacks keyCertSign: it cannot sign certificates',
    ],
  },
  {
    name: 'an intermediate whose key usage lacks keyCertSign',
    ders: () => [
      craft(INTERMEDIATE).certificate,
      patched(INTERMEDIATE.certificate, ROOT.key, KU_CA, '040403020102'),
      ROOT.certificate,
    ],
    nowMs: T0,
    index: 1,
    warnings: ['key usage lacks keyCertSign: it cannot sign certificates'],
  },
  {
    name: 'a leaf followed by a root that did not sign it',
    ders: () => [
      LEAF,
      createRoot({ trustDomain: 'cluster.local', now: T0 - DAY_MS, random: randomBytes }).certificate,
    ],
    nowMs: T0,
    index: 0,
    warnings: [`not signed by the next certificate in the file (issuer ${ROOT_SUBJECT})`],
  },
  {
    name: 'a leaf followed by another root with the same subject: the signature decides, not the name',
    ders: () => {
      const twinKey = ecKey();
      const spki = createPublicKey(twinKey).export({ format: 'der', type: 'spki' });
      const name = readCertificate(ROOT.certificate).subjectName;
      const twin = buildCertificate(
        {
          serial: randomBytes(8),
          issuerName: name,
          subjectName: name,
          notBefore: new Date(T0 - DAY_MS),
          notAfter: new Date(T0 + 365 * DAY_MS),
          subjectPublicKeyInfo: spki,
          isCa: true,
          uris: [],
          subjectKeyId: keyIdentifier(spki),
          authorityKeyId: undefined,
        },
        twinKey,
      );
      return [LEAF, twin];
    },
    nowMs: T0,
    index: 0,
    warnings: [`not signed by the next certificate in the file (issuer ${ROOT_SUBJECT})`],
  },
  {
    name: 'a chain in the wrong order: the intermediate first',
    ders: () => [INTERMEDIATE.certificate, craft(INTERMEDIATE).certificate, ROOT.certificate],
    nowMs: T0,
    index: 0,
    warnings: [`not signed by the next certificate in the file (issuer ${ROOT_SUBJECT})`],
  },
  {
    name: 'a self-signed root whose signature does not verify',
    ders: () => {
      const broken = Buffer.from(ROOT.certificate);
      // The last byte is inside the ECDSA signature's s value: the certificate parses, the signature fails.
      broken[broken.length - 1] = broken[broken.length - 1]! ^ 0x01;
      return [broken];
    },
    nowMs: T0,
    index: 0,
    warnings: ['self-signed, but its signature does not verify'],
  },
];

for (const c of WARNING_CASES) {
  test(`inspect warns: ${c.name}`, () => {
    const report = only(inspectCertificates(c.ders(), c.nowMs), c.index);
    assert.deepEqual(report.warnings, c.warnings);
  });
}

test('an expired certificate reports negative time left, in the same words as its warning', () => {
  const report = only(inspectCertificates([HUNDRED_HOURS], T0 + 101 * HOUR_MS), 0);
  assert.equal(report.timeLeftMs, -HOUR_MS);
  assert.equal(report.timeLeft, 'expired 1h ago');
  assert.equal(report.lifetime, '4d4h');
});

test('at exactly NotAfter a certificate is still valid (RFC 5280: inclusive), so it is not reported expired', () => {
  const report = only(inspectCertificates([HUNDRED_HOURS], T0 + 100 * HOUR_MS), 0);
  assert.equal(report.timeLeftMs, 0);
  assert.deepEqual(report.warnings, ['expires within 20% of its lifetime (0s of 4d4h left)']);
  assert.equal(report.timeLeft, '0s');
});

test('time comes from the argument: the same certificates read differently at different times', () => {
  const ders = [HUNDRED_HOURS, ROOT.certificate];
  const at = (nowMs: number) => inspectCertificates(ders, nowMs).map((r) => r.warnings.length);
  assert.deepEqual(at(T0 + HOUR_MS), [0, 0]);
  assert.deepEqual(at(T0 - HOUR_MS), [1, 0]);
  assert.deepEqual(at(T0 + 90 * HOUR_MS), [1, 0]);
  assert.deepEqual(at(T0 + 200 * HOUR_MS), [1, 0]);
  // The root, ten years long, expires too if the clock says so.
  assert.match(only(inspectCertificates(ders, T0 + 4000 * DAY_MS), 1).warnings[0] ?? '', /^expired /);
});

test('the patched certificates differ from the built one only in the field patched', () => {
  // Guards the helper: the warnings above are caused by the patch, not by a broken certificate.
  const noDigitalSignature = readCertificate(patched(LEAF, ROOT.key, KU_LEAF, '040403020520'));
  assert.deepEqual(noDigitalSignature.keyUsage, ['keyEncipherment']);
  assert.deepEqual(noDigitalSignature.uris, [PAYMENTS]);
  const codeSigning = inspectCertificates(
    [
      patched(LEAF, ROOT.key, EKU_SERVER_CLIENT, '06082b0601050507030106082b06010505070303'),
      ROOT.certificate,
    ],
    T0,
  );
  assert.deepEqual(only(codeSigning, 0).extKeyUsage, ['serverAuth', '1.3.6.1.5.5.7.3.3']);
  assert.equal(only(codeSigning, 0).signedByNext, true);
});
