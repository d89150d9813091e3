/**
 * The CA as a Secret: what is saved is what a restarted process loads (same root, same key, same
 * rotation step), in Istio's `cacerts` layout, and a damaged Secret or file is refused, naming the
 * problem, without touching what is on disk. Real files in a temp dir; time is passed in.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  X509Certificate,
} from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { CaMaterial } from '../../src/pki/ca.js';
import { CertificateAuthority, caMaterialFromFiles, createRoot } from '../../src/pki/ca.js';
import type { CacertsFiles, StoredCa } from '../../src/pki/ca-store.js';
import {
  CA_SECRET_NAME,
  caFromSecret,
  caToSecret,
  DEFAULT_CONTROL_PLANE_NAMESPACE,
  loadCa,
  materialOf,
  saveCa,
} from '../../src/pki/ca-store.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { createCsr } from '../../src/pki/csr.js';
import { FileSecretStore } from '../../src/pki/file-secret-store.js';
import type { SelfSignedCaState } from '../../src/pki/rotation.js';
import { beginRotation, initialCaState, recordLeafTtl, switchSigner } from '../../src/pki/rotation.js';
import type { Secret } from '../../src/pki/secret-store.js';
import { verifyPeerChain } from '../../src/pki/verify.js';
import { pemBlocks, toPem } from '../../src/pki/x509.js';
import { signIntermediate } from '../helpers/ca.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const NS = DEFAULT_CONTROL_PLANE_NAMESPACE;

async function tempStateDir(t: TestContext): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'kmtls-ca-store-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  return join(root, 'state');
}

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

function keyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

function coded(code: string, message?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof KmtlsError, `expected a KmtlsError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return true;
  };
}

// ---------------------------------------------------------------------------------------------
// CAs in every shape the store holds

/** One self-signed CA in each rotation phase: stable, then begun at T0, then switched an hour later. */
function selfSignedStates(): Record<SelfSignedCaState['rotation']['phase'], SelfSignedCaState> {
  const root = createRoot({ trustDomain: 'cluster.local', now: T0 - DAY_MS, random: randomBytes });
  const stable = initialCaState('cluster.local', root);
  const distributing = beginRotation(stable, { nowMs: T0, random: randomBytes });
  const signingWithNew = switchSigner(recordLeafTtl(distributing, 7 * DAY_MS), { nowMs: T0 + HOUR_MS });
  return { stable, distributing, 'signing-with-new': signingWithNew };
}

function pluginCa(): { stored: StoredCa & { mode: 'plug-in' }; root: Buffer } {
  const root = createRoot({ trustDomain: 'cluster.local', now: T0 - DAY_MS, random: randomBytes });
  const { certificate: inter, key: interKey } = signIntermediate(root, { nowMs: T0 });
  const files: CacertsFiles = {
    caCertPem: toPem(inter),
    caKeyPem: keyPem(interKey),
    rootCertPem: toPem(root.certificate),
    certChainPem: toPem(inter) + toPem(root.certificate),
  };
  const material = caMaterialFromFiles({ trustDomain: 'cluster.local', ...files });
  return {
    stored: { mode: 'plug-in', material, files, longestLeafTtlMs: 3 * DAY_MS },
    root: root.certificate,
  };
}

/** A StoredCa as plain values: certificates and keys as hex/PEM, so deepEqual compares content. */
function plain(ca: StoredCa): unknown {
  const cert = (c: Buffer) => c.toString('hex');
  if (ca.mode === 'plug-in') {
    return {
      mode: ca.mode,
      files: ca.files,
      longestLeafTtlMs: ca.longestLeafTtlMs,
      trustDomain: ca.material.trustDomain,
      chain: ca.material.chain.map(cert),
      trustBundle: ca.material.trustBundle.map(cert),
      signerKey: keyPem(ca.material.signer.key),
    };
  }
  const s = ca.state;
  const r = s.rotation;
  return {
    mode: ca.mode,
    trustDomain: s.trustDomain,
    root: cert(s.root.certificate),
    rootKey: keyPem(s.root.key),
    trustBundle: s.trustBundle.map(cert),
    longestLeafTtlMs: s.longestLeafTtlMs,
    rotation:
      r.phase === 'stable'
        ? r
        : r.phase === 'distributing'
          ? { ...r, next: { certificate: cert(r.next.certificate), key: keyPem(r.next.key) } }
          : { ...r, previous: cert(r.previous) },
  };
}

/** Signs a leaf at T0 and checks it against `roots` as a peer would. */
function signAndVerify(material: CaMaterial, roots: readonly Buffer[], what: string): Buffer {
  const r = parseSpiffeId('spiffe://cluster.local/ns/finance/sa/payments');
  assert.ok(r.ok);
  const ca = new CertificateAuthority(material, { clock: { now: () => T0 }, random: randomBytes });
  const issued = ca.sign(createCsr(ecKey()), { identities: [r.id], method: 'test' });
  const verdict = verifyPeerChain(issued.chain.slice(0, -1), roots, T0, ['cluster.local']);
  assert.ok(verdict.ok, `${what}: ${JSON.stringify(verdict)}`);
  return issued.chain[issued.chain.length - 1]!;
}

// ---------------------------------------------------------------------------------------------
// Round trips

for (const [phase, state] of Object.entries(selfSignedStates())) {
  test(`a self-signed CA in phase ${phase} survives a restart: same root, key, bundle and rotation step`, async (t) => {
    const dir = await tempStateDir(t);
    const saved: StoredCa = { mode: 'self-signed', state };
    await saveCa(new FileSecretStore(dir), saved);
    const loaded = await loadCa(new FileSecretStore(dir));
    assert.ok(loaded, 'loaded');
    assert.deepEqual(plain(loaded), plain(saved));
    // Before and after the restart, the CA signs with the same root: both leaves verify against it.
    const rootBefore = signAndVerify(materialOf(saved), state.trustBundle, 'before the restart');
    const rootAfter = signAndVerify(materialOf(loaded), state.trustBundle, 'after the restart');
    assert.ok(rootBefore.equals(state.root.certificate));
    assert.ok(rootAfter.equals(state.root.certificate));
  });
}

test('a plug-in CA survives a restart: same files, chain and key; leaves of both verify against the root', async (t) => {
  const dir = await tempStateDir(t);
  const { stored, root } = pluginCa();
  await saveCa(new FileSecretStore(dir), stored);
  const loaded = await loadCa(new FileSecretStore(dir));
  assert.ok(loaded?.mode === 'plug-in', `loaded ${loaded?.mode}`);
  assert.deepEqual(plain(loaded), plain(stored));
  signAndVerify(materialOf(stored), [root], 'before the restart');
  signAndVerify(materialOf(loaded), [root], 'after the restart');
});

test('no Secret: loadCa says undefined and creates nothing', async (t) => {
  const dir = await tempStateDir(t);
  assert.equal(await loadCa(new FileSecretStore(dir)), undefined);
  await assert.rejects(stat(dir), { code: 'ENOENT' });
});

// ---------------------------------------------------------------------------------------------
// The Secret's layout

test('a self-signed CA is stored in Istio cacerts keys, the root in each certificate key, with kmtls annotations', async (t) => {
  const dir = await tempStateDir(t);
  const { stable } = selfSignedStates();
  const store = new FileSecretStore(dir);
  await saveCa(store, { mode: 'self-signed', state: stable });
  const secret = await store.get(NS, CA_SECRET_NAME);
  assert.ok(secret);
  assert.equal(secret.type, 'Opaque');
  assert.deepEqual(secret.labels, { 'app.kubernetes.io/managed-by': 'kmtls' });
  assert.deepEqual(secret.annotations, {
    'kmtls.io/ca-mode': 'self-signed',
    'kmtls.io/trust-domain': 'cluster.local',
    'kmtls.io/rotation-phase': 'stable',
    'kmtls.io/longest-leaf-ttl-ms': String(DAY_MS),
  });
  assert.deepEqual(Object.keys(secret.data).sort(), [
    'ca-cert.pem',
    'ca-key.pem',
    'cert-chain.pem',
    'root-cert.pem',
    'trust-bundle.pem',
  ]);
  const rootPem = toPem(stable.root.certificate);
  for (const key of ['ca-cert.pem', 'root-cert.pem', 'cert-chain.pem']) {
    assert.equal(secret.data[key]?.toString(), rootPem, key);
  }
  // ca-key.pem is the root's key, as PKCS#8 PEM, which Istio's plug-in CA reads.
  const key = createPrivateKey(secret.data['ca-key.pem']!.toString());
  assert.ok(createPublicKey(key).equals(new X509Certificate(stable.root.certificate).publicKey));
  assert.match(secret.data['ca-key.pem']!.toString(), /^-----BEGIN PRIVATE KEY-----\n/);
});

test('rotation steps add their keys and annotations: next root in distributing, previous root after the switch', () => {
  const { distributing, 'signing-with-new': signing } = selfSignedStates();
  const d = caToSecret({ mode: 'self-signed', state: distributing }, NS);
  assert.equal(d.annotations['kmtls.io/rotation-phase'], 'distributing');
  assert.equal(d.annotations['kmtls.io/rotation-since'], String(T0));
  assert.ok(d.data['next-root-cert.pem'] && d.data['next-root-key.pem']);
  assert.equal(pemBlocks(d.data['trust-bundle.pem']!.toString()).length, 2);
  const s = caToSecret({ mode: 'self-signed', state: signing }, NS);
  assert.equal(s.annotations['kmtls.io/rotation-phase'], 'signing-with-new');
  assert.equal(s.annotations['kmtls.io/rotation-since'], String(T0 + HOUR_MS));
  assert.equal(
    s.annotations['kmtls.io/rotation-retire-after'],
    String(T0 + HOUR_MS + 7 * DAY_MS + 2 * 60_000),
  );
  assert.equal(s.annotations['kmtls.io/longest-leaf-ttl-ms'], String(7 * DAY_MS));
  assert.ok(s.data['previous-root-cert.pem']);
  assert.equal(s.data['next-root-key.pem'], undefined);
});

test('a plug-in CA is stored as the cacerts files given, byte for byte, with mode plug-in', () => {
  const { stored } = pluginCa();
  const secret = caToSecret(stored, NS);
  assert.deepEqual(secret.annotations, {
    'kmtls.io/ca-mode': 'plug-in',
    'kmtls.io/trust-domain': 'cluster.local',
    'kmtls.io/longest-leaf-ttl-ms': String(3 * DAY_MS),
  });
  assert.deepEqual(Object.fromEntries(Object.entries(secret.data).map(([k, v]) => [k, v.toString()])), {
    'ca-cert.pem': stored.files.caCertPem,
    'ca-key.pem': stored.files.caKeyPem,
    'root-cert.pem': stored.files.rootCertPem,
    'cert-chain.pem': stored.files.certChainPem,
  });
});

// ---------------------------------------------------------------------------------------------
// Damaged files

test('a truncated or damaged CA file is CORRUPT, the failed load leaves it as it was, and the good bytes load again', async (t) => {
  const dir = await tempStateDir(t);
  const store = new FileSecretStore(dir);
  const { stable } = selfSignedStates();
  await saveCa(store, { mode: 'self-signed', state: stable });
  const file = store.pathOf(NS, CA_SECRET_NAME);
  const good = await readFile(file);
  const damages: [string, Buffer][] = [
    ['truncated to half', good.subarray(0, Math.floor(good.length / 2))],
    ['truncated by one byte', good.subarray(0, good.length - 1)],
    ['empty', Buffer.alloc(0)],
    [
      'one byte changed in the middle',
      Buffer.from(good).fill(0x41, good.length >> 1, (good.length >> 1) + 1),
    ],
  ];
  for (const [name, bytes] of damages) {
    await writeFile(file, bytes);
    await assert.rejects(
      loadCa(new FileSecretStore(dir)),
      coded('KMTLS_STATE_CORRUPT', /state file is corrupt/),
      name,
    );
    assert.deepEqual(await readFile(file), bytes, `${name}: the failed load changed the file`);
    assert.equal((await stat(file)).mode & 0o777, 0o600, name);
  }
  await writeFile(file, good);
  const loaded = await loadCa(new FileSecretStore(dir));
  assert.ok(loaded);
  assert.deepEqual(plain(loaded), plain({ mode: 'self-signed', state: stable }));
});

test('a well-formed file holding a damaged CA Secret is CORRUPT and left as it was', async (t) => {
  const dir = await tempStateDir(t);
  const store = new FileSecretStore(dir);
  const { stable } = selfSignedStates();
  const secret = caToSecret({ mode: 'self-signed', state: stable }, NS);
  const { 'ca-key.pem': _, ...data } = secret.data;
  await store.put({ ...secret, data });
  const file = store.pathOf(NS, CA_SECRET_NAME);
  const before = await readFile(file);
  await assert.rejects(loadCa(new FileSecretStore(dir)), coded('KMTLS_STATE_CORRUPT', /missing ca-key\.pem/));
  assert.deepEqual(await readFile(file), before);
});

test('a CA file that group or others may read is refused as INSECURE_PERMISSIONS, with the chmod that fixes it', async (t) => {
  const dir = await tempStateDir(t);
  const store = new FileSecretStore(dir);
  await saveCa(store, { mode: 'self-signed', state: selfSignedStates().stable });
  const file = store.pathOf(NS, CA_SECRET_NAME);
  await chmod(file, 0o644);
  await assert.rejects(
    loadCa(new FileSecretStore(dir)),
    coded('KMTLS_STATE_INSECURE_PERMISSIONS', new RegExp(`mode 0644\\); run chmod 600 ${file}`)),
  );
  await chmod(file, 0o600);
  assert.ok(await loadCa(new FileSecretStore(dir)));
});

// ---------------------------------------------------------------------------------------------
// Damaged Secret contents

type Edit = (s: Secret) => Secret;

const withData =
  (changes: Record<string, Buffer | string | undefined>): Edit =>
  (s) => {
    const data: Record<string, Buffer> = { ...s.data };
    for (const [k, v] of Object.entries(changes)) {
      if (v === undefined) delete data[k];
      else data[k] = Buffer.from(v);
    }
    return { ...s, data };
  };

const withAnnotations =
  (changes: Record<string, string | undefined>): Edit =>
  (s) => {
    const annotations: Record<string, string> = { ...s.annotations };
    for (const [k, v] of Object.entries(changes)) {
      if (v === undefined) delete annotations[k];
      else annotations[k] = v;
    }
    return { ...s, annotations };
  };

function damageCases(): [string, Secret, Edit, RegExp][] {
  const { stable, distributing, 'signing-with-new': signing } = selfSignedStates();
  const s = caToSecret({ mode: 'self-signed', state: stable }, NS);
  const d = caToSecret({ mode: 'self-signed', state: distributing }, NS);
  const w = caToSecret({ mode: 'self-signed', state: signing }, NS);
  const { stored: plugin } = pluginCa();
  const p = caToSecret(plugin, NS);
  const otherRoot = createRoot({ trustDomain: 'cluster.local', now: T0, random: randomBytes });
  const otherKey = keyPem(ecKey());
  return [
    ['ca-key.pem missing', s, withData({ 'ca-key.pem': undefined }), /missing ca-key\.pem/],
    ['ca-key.pem the key of another certificate', s, withData({ 'ca-key.pem': otherKey }), /does not match/],
    ['ca-key.pem not a key', s, withData({ 'ca-key.pem': 'not a key' }), /ca-key\.pem is not a private key/],
    ['ca-cert.pem missing', s, withData({ 'ca-cert.pem': undefined }), /missing ca-cert\.pem/],
    [
      'ca-cert.pem holding two certificates',
      s,
      withData({ 'ca-cert.pem': toPem(stable.root.certificate) + toPem(otherRoot.certificate) }),
      /ca-cert\.pem holds 2 certificates, not 1/,
    ],
    [
      'ca-cert.pem another root (the key no longer matches)',
      s,
      withData({
        'ca-cert.pem': toPem(otherRoot.certificate),
        'trust-bundle.pem': toPem(otherRoot.certificate),
      }),
      /does not match/,
    ],
    [
      'trust bundle without the signing root',
      s,
      withData({ 'trust-bundle.pem': toPem(otherRoot.certificate) }),
      /trust-bundle\.pem does not hold the signing root/,
    ],
    ['trust-bundle.pem missing', s, withData({ 'trust-bundle.pem': undefined }), /missing trust-bundle\.pem/],
    [
      'an unknown rotation phase',
      s,
      withAnnotations({ 'kmtls.io/rotation-phase': 'rotating' }),
      /unknown rotation phase "rotating"/,
    ],
    [
      'an unknown mode',
      s,
      withAnnotations({ 'kmtls.io/ca-mode': 'vault' }),
      /unknown kmtls\.io\/ca-mode: "vault"/,
    ],
    ['no mode', s, withAnnotations({ 'kmtls.io/ca-mode': undefined }), /unknown kmtls\.io\/ca-mode: ""/],
    [
      'no trust domain',
      s,
      withAnnotations({ 'kmtls.io/trust-domain': undefined }),
      /missing annotation kmtls\.io\/trust-domain/,
    ],
    [
      'longest leaf TTL not a number',
      s,
      withAnnotations({ 'kmtls.io/longest-leaf-ttl-ms': 'a day' }),
      /annotation kmtls\.io\/longest-leaf-ttl-ms is not a number/,
    ],
    [
      'longest leaf TTL negative',
      s,
      withAnnotations({ 'kmtls.io/longest-leaf-ttl-ms': '-1' }),
      /annotation kmtls\.io\/longest-leaf-ttl-ms is not a number/,
    ],
    [
      'longest leaf TTL empty',
      s,
      withAnnotations({ 'kmtls.io/longest-leaf-ttl-ms': '' }),
      /annotation kmtls\.io\/longest-leaf-ttl-ms is not a number/,
    ],
    [
      'distributing without the next root key',
      d,
      withData({ 'next-root-key.pem': undefined }),
      /missing next-root-key\.pem/,
    ],
    [
      'distributing with a next root key of another certificate',
      d,
      withData({ 'next-root-key.pem': otherKey }),
      /next-root-cert\.pem and next-root-key\.pem do not make a signer: CA key does not match/,
    ],
    [
      'distributing with a trust bundle that lacks the next root',
      d,
      withData({ 'trust-bundle.pem': toPem(distributing.root.certificate) }),
      /trust-bundle\.pem does not hold the next root/,
    ],
    [
      'distributing without rotation-since',
      d,
      withAnnotations({ 'kmtls.io/rotation-since': undefined }),
      /annotation kmtls\.io\/rotation-since is not a number/,
    ],
    [
      'distributing with a rotation-since that is not a time',
      d,
      withAnnotations({ 'kmtls.io/rotation-since': 'yesterday' }),
      /annotation kmtls\.io\/rotation-since is not a number/,
    ],
    [
      'distributing with an empty rotation-since',
      d,
      withAnnotations({ 'kmtls.io/rotation-since': '' }),
      /annotation kmtls\.io\/rotation-since is not a number/,
    ],
    [
      'signing-with-new without retire-after',
      w,
      withAnnotations({ 'kmtls.io/rotation-retire-after': undefined }),
      /annotation kmtls\.io\/rotation-retire-after is not a number/,
    ],
    [
      'signing-with-new with an empty retire-after',
      w,
      withAnnotations({ 'kmtls.io/rotation-retire-after': '' }),
      /annotation kmtls\.io\/rotation-retire-after is not a number/,
    ],
    [
      'signing-with-new with a trust bundle that lacks the previous root',
      w,
      withData({ 'trust-bundle.pem': toPem(signing.root.certificate) }),
      /trust-bundle\.pem does not hold the previous root/,
    ],
    [
      'signing-with-new without the previous root',
      w,
      withData({ 'previous-root-cert.pem': undefined }),
      /missing previous-root-cert\.pem/,
    ],
    [
      'plug-in with a chain that does not link to the root',
      p,
      withData({ 'root-cert.pem': toPem(otherRoot.certificate) }),
      /does not link up/,
    ],
    ['plug-in with a key of another certificate', p, withData({ 'ca-key.pem': otherKey }), /does not match/],
    [
      'plug-in without cert-chain.pem',
      p,
      withData({ 'cert-chain.pem': undefined }),
      /missing cert-chain\.pem/,
    ],
  ];
}

test('every undamaged Secret the damage cases start from loads', () => {
  const seen = new Set<Secret>();
  for (const [, base] of damageCases()) {
    if (seen.has(base)) continue;
    seen.add(base);
    assert.ok(caFromSecret(base));
  }
});

for (const [name, base, edit, reason] of damageCases()) {
  test(`a CA Secret with ${name} is CORRUPT, naming the Secret and the problem`, () => {
    assert.throws(
      () => caFromSecret(edit(base)),
      coded('KMTLS_STATE_CORRUPT', /^CA state is damaged: Secret kmtls-system\/kmtls-ca \(/),
    );
    assert.throws(() => caFromSecret(edit(base)), coded('KMTLS_STATE_CORRUPT', reason));
  });
}

test('a Secret saved under another namespace is read from that namespace only', async (t) => {
  const dir = await tempStateDir(t);
  const store = new FileSecretStore(dir);
  await saveCa(store, { mode: 'self-signed', state: selfSignedStates().stable }, 'mesh-ca');
  assert.equal(await loadCa(store), undefined);
  assert.ok(await loadCa(store, 'mesh-ca'));
  assert.equal((await stat(store.pathOf('mesh-ca', CA_SECRET_NAME))).mode & 0o777, 0o600);
  await truncate(store.pathOf('mesh-ca', CA_SECRET_NAME), 10);
  await assert.rejects(loadCa(store, 'mesh-ca'), coded('KMTLS_STATE_CORRUPT'));
});
