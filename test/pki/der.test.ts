/**
 * The DER writer against known encodings (the OID and INTEGER vectors are what `openssl asn1parse
 * -genstr` produces), the reader's refusals, and fuzzing of the two parsers that take bytes from
 * outside: verifyCsr (a CSR from any caller of the CA) and readCertificate (any file `ca inspect` is
 * given). The fuzz mutations come from a seeded generator, so a failure names the seed and the bytes.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { createPublicKey, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import { CertificateAuthority, createRoot, selfSignedMaterial } from '../../src/pki/ca.js';
import { DAY_MS } from '../../src/pki/clock.js';
import { createCsr, verifyCsr } from '../../src/pki/csr.js';
import {
  bitString,
  boolean,
  childrenOf,
  DerError,
  decodeOid,
  explicit,
  ia5String,
  implicitPrimitive,
  oid,
  readNode,
  readRoot,
  sequence,
  set,
  smallInteger,
  TAG,
  time,
  tlv,
  unsignedInteger,
  utf8String,
} from '../../src/pki/der.js';
import { buildCertificate, encodeName, keyIdentifier } from '../../src/pki/x509.js';
import { readCertificate } from '../../src/pki/x509-read.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const bytes = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex');

function isDerError(message?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof DerError, `expected a DerError, got ${String(err)}`);
    if (message) assert.match(err.message, message);
    return true;
  };
}

// ---------------------------------------------------------------------------------------------
// Writers

test('lengths use the short form up to 127 and the shortest long form above', () => {
  const cases: [number, string][] = [
    [0, '0400'],
    [1, '0401'],
    [127, '047f'],
    [128, '048180'],
    [255, '0481ff'],
    [256, '04820100'],
    [65535, '0482ffff'],
    [65536, '0483010000'],
  ];
  for (const [length, header] of cases) {
    const out = tlv(TAG.OCTET_STRING, Buffer.alloc(length, 0xab));
    assert.equal(hex(out.subarray(0, header.length / 2)), header, `length ${length}`);
    assert.equal(out.length, header.length / 2 + length, `length ${length}: total size`);
    // And the reader finds the content where the writer put it.
    const node = readRoot(out, TAG.OCTET_STRING);
    assert.equal(node.contentStart, header.length / 2, `length ${length}: content start`);
    assert.equal(node.end - node.contentStart, length, `length ${length}: content length`);
  }
});

test('OBJECT IDENTIFIERs encode as openssl encodes them, multi-byte arcs included, and decode back', () => {
  const cases: [string, string][] = [
    ['2.5.29.17', '0603551d11'],
    ['1.2.840.113549.1.1.11', '06092a864886f70d01010b'],
    ['1.2.840.10045.3.1.7', '06082a8648ce3d030107'],
    ['1.3.6.1.4.1.311.21.20', '06092b0601040182371514'],
    ['1.2.127', '06022a7f'],
    ['1.2.128', '06032a8100'],
    ['1.2.16383', '06032aff7f'],
    ['1.2.16384', '06042a818000'],
    ['1.2.4294967295', '06062a8fffffff7f'],
    ['1.2.4294967296', '06062a9080808000'],
  ];
  for (const [dotted, encoded] of cases) {
    assert.equal(hex(oid(dotted)), encoded, dotted);
    assert.equal(decodeOid(oid(dotted).subarray(2)), dotted, `${dotted} decodes back`);
  }
});

test('an OID that is not dotted non-negative integers is refused', () => {
  for (const bad of ['', '1', '1.2.x', '1.-2.3', '1.2.3.5e-1']) {
    assert.throws(() => oid(bad), isDerError(/bad OID/), JSON.stringify(bad));
  }
});

test('an OID with an empty arc, or an arc that is not plain decimal digits, is refused', () => {
  for (const bad of ['1.2.3.', '1..2', '1.2.0x10', '1. 2', '1.2.1e3']) {
    assert.throws(() => oid(bad), isDerError(/bad OID/), JSON.stringify(bad));
  }
});

test('an OID whose first two arcs make a multi-byte subidentifier (2.999) encodes in base 128', () => {
  assert.equal(hex(oid('2.999.3')), '0603883703');
  assert.equal(decodeOid(bytes('883703')), '2.999.3');
});

test('an OID with a first arc above 2, or a second arc above 39 under 0 or 1, is refused', () => {
  for (const bad of ['1.40.1', '0.40', '3.1']) assert.throws(() => oid(bad), isDerError(), bad);
});

test('unsignedInteger trims leading zeros and pads a set top bit with one 0x00', () => {
  const cases: [string, string, string][] = [
    ['zero', '00', '020100'],
    ['zeros only', '000000', '020100'],
    ['one byte', '01', '020101'],
    ['leading zeros trimmed', '000001', '020101'],
    ['largest without padding', '7f', '02017f'],
    ['top bit set: padded', '80', '02020080'],
    ['top bit set after a leading zero: the zero stays', '0080', '02020080'],
    ['several leading zeros, then top bit set', '000000ff00', '020300ff00'],
    ['inner zeros kept', '010000', '0203010000'],
    ['20-byte serial with the top bit set', `ff${'11'.repeat(19)}`, `021500ff${'11'.repeat(19)}`],
  ];
  for (const [name, magnitude, encoded] of cases) {
    assert.equal(hex(unsignedInteger(bytes(magnitude))), encoded, name);
  }
});

test('unsignedInteger of an empty magnitude is the INTEGER 0, never an empty INTEGER', () => {
  assert.equal(hex(unsignedInteger(Buffer.alloc(0))), '020100');
});

test('smallInteger encodes 0..2^31-1 minimally and refuses anything else', () => {
  const cases: [number, string][] = [
    [0, '020100'],
    [1, '020101'],
    [127, '02017f'],
    [128, '02020080'],
    [255, '020200ff'],
    [256, '02020100'],
    [65535, '020300ffff'],
    [0x7fffffff, '02047fffffff'],
  ];
  for (const [n, encoded] of cases) assert.equal(hex(smallInteger(n)), encoded, String(n));
  for (const bad of [-1, 0.5, 2 ** 31, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(() => smallInteger(bad), isDerError(/integer out of range/), String(bad));
  }
});

test('UTCTime through 2049, GeneralizedTime from 2050 and before 1950, whole seconds, Z', () => {
  const cases: [string, number, string][] = [
    ['2049-12-31T23:59:59Z', TAG.UTC_TIME, '491231235959Z'],
    ['2050-01-01T00:00:00Z', TAG.GENERALIZED_TIME, '20500101000000Z'],
    ['1950-01-01T00:00:00Z', TAG.UTC_TIME, '500101000000Z'],
    ['1949-12-31T23:59:59Z', TAG.GENERALIZED_TIME, '19491231235959Z'],
    ['2026-03-04T05:06:07.890Z', TAG.UTC_TIME, '260304050607Z'],
    ['2000-02-29T12:00:00Z', TAG.UTC_TIME, '000229120000Z'],
  ];
  for (const [iso, tag, text] of cases) {
    const out = time(new Date(iso));
    assert.equal(out[0], tag, `${iso}: tag`);
    assert.equal(out[1], text.length, `${iso}: length`);
    assert.equal(out.subarray(2).toString('ascii'), text, iso);
  }
});

test('times on both sides of the 2050 switch survive a certificate: kmtls and OpenSSL read them back', () => {
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const notBefore = new Date('2049-12-31T23:59:59Z');
  const notAfter = new Date('2050-01-01T00:00:00Z');
  const certificate = buildCertificate(
    {
      serial: Buffer.from([1]),
      issuerName: encodeName({ commonName: 'times' }),
      subjectName: encodeName({ commonName: 'times' }),
      notBefore,
      notAfter,
      subjectPublicKeyInfo: spki,
      isCa: true,
      uris: [],
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: undefined,
    },
    key,
  );
  const read = readCertificate(certificate);
  assert.equal(read.notBefore.toISOString(), notBefore.toISOString());
  assert.equal(read.notAfter.toISOString(), notAfter.toISOString());
  const x = new X509Certificate(certificate);
  assert.equal(Date.parse(x.validFrom), notBefore.getTime());
  assert.equal(Date.parse(x.validTo), notAfter.getTime());
});

test('the other writers produce the TLVs X.690 prescribes', () => {
  const cases: [string, Buffer, string][] = [
    ['BOOLEAN TRUE is 0xff', boolean(true), '0101ff'],
    ['BOOLEAN FALSE', boolean(false), '010100'],
    ['empty SEQUENCE', sequence(), '3000'],
    ['SEQUENCE of two', sequence(boolean(true), smallInteger(1)), '30060101ff020101'],
    ['SET', set(smallInteger(1)), '3103020101'],
    ['BIT STRING with unused bits', bitString(bytes('a0'), 5), '030205a0'],
    ['BIT STRING, no unused bits', bitString(bytes('0102')), '0303000102'],
    ['[3] EXPLICIT is constructed', explicit(3, sequence()), 'a3023000'],
    ['[6] IMPLICIT primitive', implicitPrimitive(6, Buffer.from('a')), '860161'],
    ['UTF8String, multi-byte', utf8String('é'), '0c02c3a9'],
    ['IA5String', ia5String('spiffe://a'), `160a${Buffer.from('spiffe://a').toString('hex')}`],
  ];
  for (const [name, out, encoded] of cases) assert.equal(hex(out), encoded, name);
  assert.throws(() => ia5String('spiffe://é'), isDerError(/ASCII/));
});

// ---------------------------------------------------------------------------------------------
// Reader refusals

test('the reader refuses everything outside DER definite-length form, each with a DerError', () => {
  const cases: [string, () => unknown, RegExp][] = [
    ['empty input', () => readRoot(Buffer.alloc(0), TAG.SEQUENCE), /truncated at byte 0/],
    ['a tag without a length (truncated header)', () => readRoot(bytes('30'), TAG.SEQUENCE), /truncated/],
    ['indefinite length', () => readRoot(bytes('30800000'), TAG.SEQUENCE), /indefinite length at byte 0/],
    [
      'long form for a length below 128',
      () => readRoot(bytes(`048105${'00'.repeat(5)}`), TAG.OCTET_STRING),
      /non-minimal length at byte 0/,
    ],
    [
      'long form with a leading zero byte',
      () => readRoot(bytes(`04820080${'00'.repeat(128)}`), TAG.OCTET_STRING),
      /non-minimal length/,
    ],
    ['length of more than 4 bytes', () => readRoot(bytes('04850100000000'), TAG.OCTET_STRING), /too large/],
    ['length bytes cut off', () => readRoot(bytes('048201'), TAG.OCTET_STRING), /truncated length at byte 0/],
    [
      'content shorter than its length (overrun)',
      () => readRoot(bytes('04050102'), TAG.OCTET_STRING),
      /runs past/,
    ],
    [
      'trailing bytes after the element',
      () => readRoot(bytes('040000'), TAG.OCTET_STRING),
      /1 trailing bytes/,
    ],
    ['multi-byte tag', () => readRoot(bytes('1f810100'), TAG.SEQUENCE), /multi-byte tags/],
    [
      'another tag than expected',
      () => readRoot(bytes('0400'), TAG.SEQUENCE),
      /expected tag 0x30, found 0x4/,
    ],
    [
      'a child running past its parent, though not past the buffer',
      () => {
        const buf = bytes('3003040500000000');
        return childrenOf(buf, readNode(buf, 0));
      },
      /runs past its container/,
    ],
    [
      'a read limited to a container stops at its end',
      () => readNode(bytes('04020102'), 0, 3),
      /runs past its container/,
    ],
  ];
  for (const [name, fn, message] of cases) assert.throws(fn, isDerError(message), name);
});

test('the reader walks well-formed nested elements with the offsets the writer produced', () => {
  const buf = sequence(smallInteger(5), sequence(boolean(true)), tlv(TAG.OCTET_STRING, Buffer.alloc(200)));
  const root = readRoot(buf, TAG.SEQUENCE);
  const children = childrenOf(buf, root);
  assert.deepEqual(
    children.map((c) => [c.tag, c.start, c.contentStart, c.end]),
    [
      // 211 bytes of content: the SEQUENCE's header is 30 81 d3, so the first child starts at 3.
      [TAG.INTEGER, 3, 5, 6],
      [TAG.SEQUENCE, 6, 8, 11],
      [TAG.OCTET_STRING, 11, 14, 214],
    ],
  );
  assert.equal(root.end, buf.length);
});

// ---------------------------------------------------------------------------------------------
// Fuzzing

/** mulberry32: a small seeded generator, so every run makes the same mutations. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values that sit on DER's boundaries: short/long length forms, tags, the sign bit. */
const INTERESTING = [
  0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x1f, 0x30, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff,
];

/** One to three mutations of `input`: bit flips, byte changes, insertions, deletions, truncations. */
function mutate(input: Buffer, rand: () => number): Buffer {
  const int = (n: number) => Math.floor(rand() * n);
  let out = Buffer.from(input);
  const rounds = 1 + int(3);
  for (let r = 0; r < rounds; r++) {
    const at = int(out.length);
    switch (int(6)) {
      case 0:
        out[at] = out[at]! ^ (1 << int(8));
        break;
      case 1:
        out[at] = int(256);
        break;
      case 2:
        out[at] = INTERESTING[int(INTERESTING.length)]!;
        break;
      case 3:
        out = Buffer.concat([out.subarray(0, at), Buffer.from([int(256)]), out.subarray(at)]);
        break;
      case 4:
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]);
        break;
      default:
        out = out.subarray(0, int(out.length));
        break;
    }
  }
  return out;
}

const CSR_CODES = new Set([
  'KMTLS_PKI_CSR_MALFORMED',
  'KMTLS_PKI_CSR_SIGNATURE',
  'KMTLS_PKI_CSR_KEY_UNSUPPORTED',
]);

test('verifyCsr on 3000 seeded mutations of real CSRs: a coded CSR refusal every time, never a forgery accepted', () => {
  const keys: [string, KeyObject][] = [
    ['P-256', generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey],
    ['P-384', generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey],
    ['RSA 2048', generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey],
  ];
  const counts = new Map<string, number>();
  for (const [index, [name, key]] of keys.entries()) {
    const csr = createCsr(key, { uris: ['spiffe://cluster.local/ns/finance/sa/payments'] });
    assert.ok(verifyCsr(csr).publicKey, `${name}: the unmutated CSR verifies`);
    const seed = 0xc5a0 + index;
    const rand = seeded(seed);
    for (let i = 0; i < 1000; i++) {
      const input = mutate(csr, rand);
      const isUnchanged = input.equals(csr);
      const where = `${name}, seed ${seed}, mutation ${i}: ${input.toString('base64')}`;
      let outcome: string;
      try {
        verifyCsr(input);
        outcome = 'accepted';
      } catch (err) {
        assert.ok(err instanceof KmtlsError, `${where}: threw ${String(err)}`);
        assert.ok(CSR_CODES.has(err.code), `${where}: code ${err.code}`);
        outcome = err.code;
      }
      assert.equal(outcome === 'accepted', isUnchanged, `${where}: ${outcome}`);
      counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
    }
  }
  // Both kinds of refusal must have been reached, or the mutations never got past the parser.
  assert.ok((counts.get('KMTLS_PKI_CSR_MALFORMED') ?? 0) > 100, JSON.stringify([...counts]));
  assert.ok((counts.get('KMTLS_PKI_CSR_SIGNATURE') ?? 0) > 100, JSON.stringify([...counts]));
});

function fuzzCertificates(): [string, Buffer][] {
  const T0 = Date.parse('2026-01-01T00:00:00Z');
  const root = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const ca = new CertificateAuthority(selfSignedMaterial('cluster.local', root), {
    clock: { now: () => T0 },
    random: randomBytes,
  });
  const r = parseSpiffeId('spiffe://cluster.local/ns/finance/sa/payments');
  assert.ok(r.ok);
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const leaf = ca.sign(createCsr(key), { identities: [r.id], method: 'test' }, { ttlMs: DAY_MS }).certificate;
  return [
    ['root', root.certificate],
    ['leaf', leaf],
  ];
}

test('readCertificate on 3000 seeded mutations of real certificates: a DerError or a clean result, nothing else', () => {
  let refused = 0;
  let read = 0;
  for (const [index, [name, certificate]] of fuzzCertificates().entries()) {
    const original = readCertificate(certificate);
    const seed = 0xce27 + index;
    const rand = seeded(seed);
    for (let i = 0; i < 1500; i++) {
      const input = mutate(certificate, rand);
      const where = `${name}, seed ${seed}, mutation ${i}: ${input.toString('base64')}`;
      let fields: ReturnType<typeof readCertificate>;
      try {
        fields = readCertificate(input);
      } catch (err) {
        assert.ok(err instanceof DerError, `${where}: threw ${String(err)}`);
        refused++;
        continue;
      }
      read++;
      assert.ok(fields.der === input, `${where}: the result is of the bytes given`);
      assert.ok(fields.notBefore instanceof Date && fields.notAfter instanceof Date, where);
      if (input.equals(certificate)) {
        assert.equal(fields.serialHex, original.serialHex, where);
        assert.deepEqual(fields.uris, original.uris, where);
      }
    }
  }
  // Both outcomes occur: mutations in values (serial, key, signature) parse; mutations in structure do not.
  assert.ok(refused > 500, `refused ${refused}`);
  assert.ok(read > 100, `read ${read}`);
});
