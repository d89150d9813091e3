import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import { CertificateAuthority, createRoot, selfSignedMaterial } from '../../src/pki/ca.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { createCsr } from '../../src/pki/csr.js';
import type { SelfSignedCaState } from '../../src/pki/rotation.js';
import {
  abortRotation,
  beginRotation,
  initialCaState,
  recordLeafTtl,
  retireOldRoot,
  rotationStatus,
  switchSigner,
} from '../../src/pki/rotation.js';
import { toPem } from '../../src/pki/x509.js';
import { mutualHandshake, type TlsSide } from '../helpers/tls.js';

const REAL_NOW = Date.now();

function identity(sa: string) {
  const r = parseSpiffeId(`spiffe://cluster.local/ns/shop/sa/${sa}`);
  assert.ok(r.ok);
  return r.id;
}

function issuer(state: SelfSignedCaState): CertificateAuthority {
  return new CertificateAuthority(selfSignedMaterial(state.trustDomain, state.root, state.trustBundle), {
    clock: { now: () => REAL_NOW },
    random: randomBytes,
  });
}

/** A workload: a key, a certificate from whatever root signs in `state`, and the bundle of `state`. */
function workload(
  state: SelfSignedCaState,
  sa: string,
): TlsSide & { bundleOf: (s: SelfSignedCaState) => TlsSide } {
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const issued = issuer(state).sign(createCsr(key), { identities: [identity(sa)], method: 'test' });
  const side = { chainPem: issued.chainPem, key, trustPem: state.trustBundle.map((c) => toPem(c)).join('') };
  return { ...side, bundleOf: (s) => ({ ...side, trustPem: s.trustBundle.map((c) => toPem(c)).join('') }) };
}

async function bothWays(a: TlsSide, b: TlsSide, what: string): Promise<void> {
  const ab = await mutualHandshake(a, b);
  assert.ok(ab.ok, `${what}, a serves b: ${ab.error}`);
  const ba = await mutualHandshake(b, a);
  assert.ok(ba.ok, `${what}, b serves a: ${ba.error}`);
}

test('connections between old- and new-root workloads keep working through every rotation step', async () => {
  const t0 = REAL_NOW;
  const rootA = createRoot({ trustDomain: 'cluster.local', now: t0 - DAY_MS, random: randomBytes });
  let state = initialCaState('cluster.local', rootA);

  // Stable: everyone holds an A certificate and trusts A.
  const old = workload(state, 'old');
  const peer = workload(state, 'peer');
  await bothWays(old, peer, 'stable');

  // Begin: B joins the bundle; A still signs. Workloads that got the new bundle talk to those that did not.
  state = beginRotation(state, { nowMs: t0, random: randomBytes });
  assert.equal(state.trustBundle.length, 2);
  const fresh = workload(state, 'fresh');
  await bothWays(old, fresh, 'distributing (old bundle and new bundle)');
  const oldWithBundle = old.bundleOf(state);
  const peerWithBundle = peer.bundleOf(state);

  // Switch: B signs. New certificates chain to B; holders of A certificates keep working.
  state = switchSigner(state, { nowMs: t0 + HOUR_MS });
  const renewed = workload(state, 'renewed');
  await bothWays(oldWithBundle, renewed, 'signing with the new root (A certificate and B certificate)');
  await bothWays(peerWithBundle, oldWithBundle, 'signing with the new root (two A certificates)');

  // Retire is refused while A leaves can still be valid.
  assert.throws(
    () => retireOldRoot(state, { nowMs: t0 + 2 * HOUR_MS }),
    (err: unknown) =>
      err instanceof KmtlsError &&
      err.code === 'KMTLS_PKI_ROTATION_STEP' &&
      /cannot retire the old root yet/.test(err.message),
  );
  // After the longest leaf lifetime every A leaf has been renewed from B; then A leaves the bundle.
  state = retireOldRoot(state, { nowMs: t0 + HOUR_MS + state.longestLeafTtlMs + 3 * 60_000 });
  assert.equal(state.trustBundle.length, 1);
  const renewedOld = workload(state, 'old');
  await bothWays(renewedOld, renewed.bundleOf(state), 'stable on the new root');

  // An A certificate still in use after retirement is refused: why retire waits.
  const stale = await mutualHandshake(renewed.bundleOf(state), oldWithBundle);
  assert.equal(stale.ok, false);
});

test('each step is refused from the wrong phase, naming the phase', () => {
  const root = createRoot({ trustDomain: 'cluster.local', now: REAL_NOW, random: randomBytes });
  const stable = initialCaState('cluster.local', root);
  const refused = (fn: () => unknown, message: RegExp) =>
    assert.throws(
      fn,
      (err: unknown) =>
        err instanceof KmtlsError && err.code === 'KMTLS_PKI_ROTATION_STEP' && message.test(err.message),
    );
  refused(() => switchSigner(stable, { nowMs: REAL_NOW }), /phase stable/);
  refused(() => retireOldRoot(stable, { nowMs: REAL_NOW }), /phase stable/);
  refused(() => abortRotation(stable), /phase stable/);
  const distributing = beginRotation(stable, { nowMs: REAL_NOW, random: randomBytes });
  refused(() => beginRotation(distributing, { nowMs: REAL_NOW, random: randomBytes }), /phase distributing/);
  refused(() => retireOldRoot(distributing, { nowMs: REAL_NOW }), /phase distributing/);
});

test('abort drops the new root and keeps the old one signing', () => {
  const root = createRoot({ trustDomain: 'cluster.local', now: REAL_NOW, random: randomBytes });
  const stable = initialCaState('cluster.local', root);
  const aborted = abortRotation(beginRotation(stable, { nowMs: REAL_NOW, random: randomBytes }));
  assert.equal(aborted.rotation.phase, 'stable');
  assert.deepEqual(aborted.trustBundle, [root.certificate]);
  assert.equal(aborted.root, root);
});

test('retirement waits for the longest leaf lifetime issued, and can be forced', () => {
  const root = createRoot({ trustDomain: 'cluster.local', now: REAL_NOW, random: randomBytes });
  let state = recordLeafTtl(initialCaState('cluster.local', root), 30 * DAY_MS);
  assert.equal(recordLeafTtl(state, HOUR_MS), state, 'a shorter TTL changes nothing');
  state = switchSigner(beginRotation(state, { nowMs: REAL_NOW, random: randomBytes }), { nowMs: REAL_NOW });
  const status = rotationStatus(state, REAL_NOW);
  assert.equal(status.phase, 'signing-with-new');
  assert.equal(status.retireAfter, new Date(REAL_NOW + 30 * DAY_MS + 120_000).toISOString());
  assert.match(status.next, /30d2m from now/);
  assert.throws(() => retireOldRoot(state, { nowMs: REAL_NOW + 29 * DAY_MS }));
  assert.equal(retireOldRoot(state, { nowMs: REAL_NOW + 29 * DAY_MS, force: true }).rotation.phase, 'stable');
});
