import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { SelfSignedCaState } from '../../src/pki/index.js';
import {
  beginRotation,
  CertificateAuthority,
  createRoot,
  ensureTlsSecret,
  FileSecretStore,
  HOUR_MS,
  initialCaState,
  pemBlocks,
  SECRET_TYPE_TLS,
  selfSignedMaterial,
  TLS_SECRET_ANNOTATION,
} from '../../src/pki/index.js';

const NOW = Date.now();
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function setup() {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-tls-secret-'));
  dirs.push(dir);
  const store = new FileSecretStore(dir);
  let state: SelfSignedCaState = initialCaState(
    'cluster.local',
    createRoot({ trustDomain: 'cluster.local', now: NOW - HOUR_MS, random: randomBytes }),
  );
  let now = NOW;
  const ca = () =>
    new CertificateAuthority(selfSignedMaterial(state.trustDomain, state.root, state.trustBundle), {
      clock: { now: () => now },
      random: randomBytes,
    });
  return {
    store,
    ca,
    setNow: (ms: number) => (now = ms),
    now: () => now,
    rotate: () => (state = beginRotation(state, { nowMs: now, random: randomBytes })),
  };
}

function id(uri: string) {
  const r = parseSpiffeId(uri);
  assert.ok(r.ok);
  return r.id;
}

const DB = id('spiffe://cluster.local/ns/data/sa/postgres');
const REQUEST = { namespace: 'data', name: 'postgres-tls', identity: DB };

test('a missing kubernetes.io/tls Secret is created with chain, key, bundle and annotations', async () => {
  const s = await setup();
  const r = await ensureTlsSecret(s.store, s.ca(), REQUEST, { nowMs: s.now(), random: () => 0.5 });
  assert.equal(r.action, 'created');
  const secret = await s.store.get('data', 'postgres-tls');
  assert.ok(secret);
  assert.equal(secret.type, SECRET_TYPE_TLS);
  assert.deepEqual(Object.keys(secret.data).sort(), ['ca.crt', 'tls.crt', 'tls.key']);
  assert.equal(secret.annotations[TLS_SECRET_ANNOTATION.identity], DB.uri);
  assert.equal(secret.annotations[TLS_SECRET_ANNOTATION.notAfter], r.notAfter.toISOString());
  // Renewal at half the lifetime (24h + the 2 minute backdate), jitter centred by random 0.5.
  assert.equal(Date.parse(secret.annotations[TLS_SECRET_ANNOTATION.renewAt] ?? ''), r.renewAtMs);
  assert.ok(
    Math.abs(r.renewAtMs - (s.now() + 12 * HOUR_MS)) < 5 * 60_000,
    `renew at ${new Date(r.renewAtMs).toISOString()}`,
  );
  const [leaf, root] = pemBlocks(secret.data['tls.crt']!.toString());
  const [bundleRoot] = pemBlocks(secret.data['ca.crt']!.toString());
  assert.ok(new X509Certificate(leaf!).verify(new X509Certificate(bundleRoot!).publicKey));
  assert.ok(root?.equals(bundleRoot!));
  const key = createPrivateKey(secret.data['tls.key']!);
  assert.ok(createPublicKey(key).equals(new X509Certificate(leaf!).publicKey), 'tls.key matches tls.crt');
});

test('a valid Secret is left untouched until it is due, then renewed with a new key', async () => {
  const s = await setup();
  const first = await ensureTlsSecret(s.store, s.ca(), REQUEST, { nowMs: s.now(), random: () => 0.5 });
  const before = await s.store.get('data', 'postgres-tls');
  s.setNow(first.renewAtMs - 1000);
  const again = await ensureTlsSecret(s.store, s.ca(), REQUEST, { nowMs: s.now(), random: () => 0.5 });
  assert.equal(again.action, 'unchanged');
  assert.deepEqual(await s.store.get('data', 'postgres-tls'), before);
  s.setNow(first.renewAtMs);
  const renewed = await ensureTlsSecret(s.store, s.ca(), REQUEST, { nowMs: s.now(), random: () => 0.5 });
  assert.equal(renewed.action, 'renewed');
  assert.equal(renewed.reason, 'it is due for renewal');
  const after = await s.store.get('data', 'postgres-tls');
  assert.notDeepEqual(after?.data['tls.key'], before?.data['tls.key']);
  assert.notEqual(
    after?.annotations[TLS_SECRET_ANNOTATION.serial],
    before?.annotations[TLS_SECRET_ANNOTATION.serial],
  );
});

test('a Secret for another identity, or with a stale trust bundle, is reissued', async () => {
  const s = await setup();
  await ensureTlsSecret(s.store, s.ca(), REQUEST, { nowMs: s.now(), random: () => 0.5 });
  const other = { ...REQUEST, identity: id('spiffe://cluster.local/ns/data/sa/replica') };
  const r = await ensureTlsSecret(s.store, s.ca(), other, { nowMs: s.now(), random: () => 0.5 });
  assert.equal(r.action, 'renewed');
  assert.match(r.reason, /not spiffe:\/\/cluster\.local\/ns\/data\/sa\/replica/);
  s.rotate();
  const rotated = await ensureTlsSecret(s.store, s.ca(), other, { nowMs: s.now(), random: () => 0.5 });
  assert.equal(rotated.reason, 'the trust bundle changed');
  const secret = await s.store.get('data', 'postgres-tls');
  assert.equal(pemBlocks(secret?.data['ca.crt']?.toString() ?? '').length, 2);
});

test('labels and annotations others put on the Secret survive a renewal', async () => {
  const s = await setup();
  await s.store.put({
    namespace: 'data',
    name: 'postgres-tls',
    type: 'Opaque',
    labels: { team: 'db' },
    annotations: { 'example.com/owner': 'dba' },
    data: { unrelated: Buffer.from('x') },
  });
  const r = await ensureTlsSecret(s.store, s.ca(), REQUEST, { nowMs: s.now(), random: () => 0.5 });
  assert.equal(r.reason, 'it has type Opaque, not kubernetes.io/tls');
  const secret = await s.store.get('data', 'postgres-tls');
  assert.equal(secret?.labels.team, 'db');
  assert.equal(secret?.annotations['example.com/owner'], 'dba');
  assert.equal(secret?.labels['app.kubernetes.io/managed-by'], 'kmtls');
});
