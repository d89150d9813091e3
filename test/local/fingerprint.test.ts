/**
 * When `kmtls up` restarts a pod's processes: only when what the pod itself starts with changes
 * (its containers' command, args and env, its identity, its sidecar), not when a Service appears
 * elsewhere, which changes only KMTLS_SERVICES. Pure: plans from YAML, nothing listens.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseManifestText, readResources } from '../../src/config/index.js';
import type { LocalPlan } from '../../src/local/plan.js';
import { containerEnv, LocalAllocator, planMesh, restartFingerprint } from '../../src/local/plan.js';
import { buildMeshSnapshot } from '../../src/mesh/index.js';

const BASE = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kmtls.io/injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
    - name: web
      command: [node, web.js]
      ports: [{containerPort: 8000}]
      env: [{name: GREETING, value: hello}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8000}]
`;

const OTHER_NAMESPACE_SERVICE = `
---
apiVersion: v1
kind: Service
metadata: {name: billing, namespace: finance}
spec:
  selector: {app: billing}
  ports: [{port: 9000}]
`;

const OWN_NAMESPACE_SERVICE = `
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{port: 7000}]
`;

async function planOf(yaml: string, alloc: LocalAllocator): Promise<LocalPlan> {
  const parsed = parseManifestText(yaml, 'x.yaml');
  const read = readResources(parsed.objects);
  assert.deepEqual(
    [...parsed.diagnostics, ...read.diagnostics].filter((d) => d.severity === 'error'),
    [],
  );
  return planMesh(buildMeshSnapshot(read.resources), alloc);
}

async function fingerprints(...yamls: string[]): Promise<{ fp: string[]; plans: LocalPlan[] }> {
  const alloc = new LocalAllocator(70);
  const plans: LocalPlan[] = [];
  for (const y of yamls) plans.push(await planOf(y, alloc));
  return {
    plans,
    fp: plans.map((plan) => {
      const web = plan.pods.find((p) => p.key === 'shop/web');
      assert.ok(web);
      return restartFingerprint(plan, web);
    }),
  };
}

test('a Service in another namespace changes KMTLS_SERVICES but restarts nothing', async () => {
  const { fp, plans } = await fingerprints(BASE, BASE + OTHER_NAMESPACE_SERVICE);
  assert.equal(fp[0], fp[1]);
  const env = plans.map((plan) => {
    const web = plan.pods.find((p) => p.key === 'shop/web')!;
    return containerEnv(plan, web, web.containers[0]!);
  });
  assert.notEqual(env[0]!.KMTLS_SERVICES, env[1]!.KMTLS_SERVICES, 'the map itself does change');
  assert.match(env[1]!.KMTLS_SERVICES ?? '', /billing\.finance:9000/);
});

test("a Service in the pod's own namespace changes its *_SERVICE_* variables: it restarts", async () => {
  const { fp } = await fingerprints(BASE, BASE + OWN_NAMESPACE_SERVICE);
  assert.notEqual(fp[0], fp[1]);
});

test("the pod's own command, env and identity restart it; re-planning the same manifests does not", async () => {
  const same = await fingerprints(BASE, BASE);
  assert.equal(same.fp[0], same.fp[1]);
  for (const edited of [
    BASE.replace('[node, web.js]', '[node, web2.js]'),
    BASE.replace('value: hello', 'value: bonjour'),
    BASE.replace('serviceAccountName: web', 'serviceAccountName: shopper'),
    BASE.replace(', labels: {kmtls.io/injection: enabled}', ''),
  ]) {
    const { fp } = await fingerprints(BASE, edited);
    assert.notEqual(fp[0], fp[1], edited);
  }
});
