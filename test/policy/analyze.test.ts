import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadManifests } from '../../src/config/index.js';
import { buildMeshSnapshot, collectProbes, discoverCallers } from '../../src/mesh/index.js';
import type { Diagnostic } from '../../src/policy/index.js';
import { analyze } from '../../src/policy/index.js';

async function findings(...paths: string[]): Promise<Diagnostic[]> {
  const loaded = await loadManifests(paths);
  const s = buildMeshSnapshot(loaded.resources);
  return analyze({
    peerAuthentications: s.peerAuthentications,
    destinationRules: s.destinationRules,
    autoMtls: true,
    workloads: s.workloads,
    services: s.services,
    callers: discoverCallers(s),
    probes: collectProbes(s),
  });
}

function byCode(list: readonly Diagnostic[], code: string): Diagnostic[] {
  return list.filter((d) => d.code === code);
}

function names(d: Diagnostic | undefined): string[] {
  return (d?.objects ?? []).map((o) => `${o.kind} ${o.namespace}/${o.name}`);
}

const fixture = findings('test/fixtures/analyze');

test('the clean examples have no findings', async () => {
  for (const dir of ['examples/namespace-strict', 'examples/workload-strict', 'examples/port-disable']) {
    assert.deepEqual(
      (await findings(dir)).map((d) => d.message),
      [],
      dir,
    );
  }
});

test('a selector that matches only in another namespace is an error naming the workloads there', async () => {
  const [d, ...rest] = byCode(
    await findings('examples/wrong-namespace'),
    'KMTLS_ANALYZE_SELECTOR_MATCHES_OTHER_NAMESPACE',
  );
  assert.equal(rest.length, 0);
  assert.deepEqual(names(d), ['PeerAuthentication default/orders-strict', 'Deployment store/orders']);
  assert.equal(d?.hint, 'move it to namespace store');
});

test('a selector that matches nothing anywhere is a warning', async () => {
  const d = byCode(await fixture, 'KMTLS_ANALYZE_SELECTOR_MATCHES_NOTHING');
  assert.deepEqual(d.map(names), [['PeerAuthentication apps/typo']]);
});

test('a portLevelMtls key that is a Service port names the targetPort meant', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_PORT_IS_SERVICE_PORT');
  assert.ok(d);
  assert.equal(d.severity, 'error');
  assert.equal(d.hint, 'use the container port: portLevelMtls key 80');
  assert.deepEqual(names(d), [
    'PeerAuthentication apps/api-ports',
    'Service apps/api',
    'Deployment apps/api',
  ]);
  // Located at the key itself, the line to edit.
  assert.equal(d.location?.line, 40);
});

test('a portLevelMtls key that is no declared port is a warning, not an error', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_PORT_NOT_DECLARED');
  assert.equal(d?.severity, 'warning');
  assert.match(d?.message ?? '', /key 9999 .* \(declared: 80\)/);
});

test('competing mesh- and namespace-wide policies say which one applies', async () => {
  const all = await fixture;
  const [mesh] = byCode(all, 'KMTLS_ANALYZE_CONFLICTING_MESH_POLICIES');
  assert.deepEqual(names(mesh), [
    'PeerAuthentication istio-system/default',
    'PeerAuthentication istio-system/strict-everywhere',
  ]);
  const [namespace] = byCode(all, 'KMTLS_ANALYZE_CONFLICTING_NAMESPACE_POLICIES');
  assert.deepEqual(names(namespace), ['PeerAuthentication apps/default', 'PeerAuthentication apps/lockdown']);
});

test('overlapping workload policies name the winner first, then the ignored one and the workload', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_OVERLAPPING_WORKLOAD_POLICIES');
  assert.deepEqual(names(d), [
    'PeerAuthentication apps/api-ports',
    'PeerAuthentication apps/tier-backend',
    'Deployment apps/api',
  ]);
});

test('a selector policy in the root namespace is reported as ignored', async () => {
  assert.deepEqual(byCode(await fixture, 'KMTLS_ANALYZE_ROOT_NAMESPACE_SELECTOR').map(names), [
    ['PeerAuthentication istio-system/api-strict'],
  ]);
});

test('a namespace-wide policy where nothing runs is reported, with the kubectl -n hint for default', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_NAMESPACE_HAS_NO_WORKLOADS');
  assert.deepEqual(names(d), ['PeerAuthentication default/strict']);
  assert.match(d?.hint ?? '', /metadata.namespace/);
});

test('a DestinationRule sending mTLS to a workload without sidecar is IST0115, for every client namespace at once', async () => {
  const conflicts = byCode(await fixture, 'KMTLS_ANALYZE_DR_TLS_CONFLICT');
  const cache = conflicts.filter((d) => d.istioCode === 'IST0115');
  assert.equal(cache.length, 1);
  assert.deepEqual(names(cache[0]), [
    'DestinationRule apps/cache-mtls',
    'Service apps/cache',
    'Deployment apps/cache',
  ]);
  assert.match(cache[0]?.message ?? '', /MTLS_TO_NON_MESH_WORKLOAD/);
});

test('a DestinationRule sending plaintext to a STRICT port names the deciding PeerAuthentication', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_DR_TLS_CONFLICT').filter((x) =>
    /PLAINTEXT_REJECTED/.test(x.message),
  );
  assert.deepEqual(names(d), [
    'DestinationRule apps/api-plaintext',
    'Service apps/api',
    'Deployment apps/api',
    'PeerAuthentication apps/api-ports',
  ]);
});

test('the auto-mTLS limitation (namespace DISABLE, workload STRICT) is an error suggesting a DestinationRule', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_AUTO_MTLS_LIMITATION');
  assert.ok(d);
  assert.deepEqual(names(d), [
    'Service legacy/vault',
    'Pod legacy/vault-0',
    'PeerAuthentication legacy/vault-strict',
  ]);
  assert.match(d.hint ?? '', /DestinationRule/);
});

test('a STRICT workload without a sidecar is an error: nothing enforces STRICT', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_STRICT_WITHOUT_SIDECAR');
  assert.deepEqual(names(d), ['Deployment apps/cache', 'PeerAuthentication apps/cache-strict']);
});

test('a caller outside the mesh to a STRICT port is an error naming how the call was found', async () => {
  const [d] = byCode(await fixture, 'KMTLS_ANALYZE_CALLER_OUTSIDE_MESH_STRICT');
  assert.deepEqual(names(d), ['Job batch/report', 'Service apps/api', 'Deployment apps/api']);
  assert.match(d?.message ?? '', /env API of container report/);
});

test('a caller outside the mesh to a PERMISSIVE port is information: it breaks on a switch to STRICT', async () => {
  const d = byCode(await fixture, 'KMTLS_ANALYZE_CALLER_OUTSIDE_MESH');
  assert.equal(d.length, 1);
  assert.equal(d[0]?.severity, 'info');
  assert.deepEqual(names(d[0]), ['Job batch/report', 'Service apps/catalog', 'Deployment apps/catalog']);
  assert.match(d[0]?.message ?? '', /breaks when Deployment apps\/catalog turns STRICT/);
});

test('a probe on a STRICT port with rewriting off is an error; with rewriting on (the default) it is fine', async () => {
  const all = await fixture;
  assert.deepEqual(byCode(all, 'KMTLS_ANALYZE_PROBE_ON_STRICT_PORT').map(names), [['Deployment apps/api']]);
  // payments in the quickstart has a readiness probe on a STRICT port, rewritten by default.
  assert.equal(byCode(await findings('examples/quickstart'), 'KMTLS_ANALYZE_PROBE_ON_STRICT_PORT').length, 0);
});

test('SIMPLE TLS without caCertificates is IST0128, and a dotted short host that matches nothing says how hosts expand', async () => {
  const all = await fixture;
  assert.equal(byCode(all, 'KMTLS_DR_NO_CA_CERTIFICATES')[0]?.istioCode, 'IST0128');
  const [host] = byCode(all, 'KMTLS_ANALYZE_DR_HOST_MATCHES_NOTHING');
  assert.equal(host?.hint, 'write host: api.apps.svc.cluster.local');
});

test('every finding names at least one object and has a location', async () => {
  for (const d of await fixture) {
    assert.ok(d.objects.length > 0, d.code);
    assert.ok(d.location, d.code);
  }
});
