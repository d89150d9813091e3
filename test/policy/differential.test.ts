/**
 * Differential test: on seeded synthetic meshes (the benchmark's generator), the indexed resolution,
 * its mode-only fast path and a plain reference written from Istio's Go code (bench/naive.ts, one
 * full scan of every policy per workload) must agree on every workload, port and deciding policy.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { naiveModeForPort, resolveNaive } from '../../bench/naive.js';
import { buildSyntheticMesh } from '../../bench/synthetic.js';
import {
  effectiveInboundMtls,
  effectiveModeForPort,
  indexPeerAuthentications,
  modeForPort,
  resolveInboundMtls,
} from '../../src/policy/index.js';

const SHAPES = [
  { label: 'spread', workloads: 600, policies: 600, namespaces: 60, seed: 1 },
  { label: 'dense', workloads: 300, policies: 900, namespaces: 5, seed: 2 },
  { label: 'sparse', workloads: 400, policies: 80, namespaces: 100, seed: 3 },
];

for (const shape of SHAPES) {
  test(`indexed, mode-only and naive resolution agree on every workload and port (${shape.label} mesh)`, () => {
    const mesh = buildSyntheticMesh(shape);
    const index = indexPeerAuthentications(mesh.policies, mesh.rootNamespace);
    let checkedPorts = 0;
    for (const w of mesh.workloads) {
      const labels = { namespace: w.meta.namespace, labels: w.meta.labels };
      const naive = resolveNaive(mesh.policies, mesh.rootNamespace, labels);
      const full = resolveInboundMtls(index, labels);
      const fast = effectiveInboundMtls(index, labels);
      const name = `${w.meta.namespace}/${w.meta.name}`;
      for (const r of [full, fast]) {
        assert.equal(r.workloadMode, naive.workloadMode, name);
        assert.equal(r.meshPolicy, naive.meshPolicy, name);
        assert.equal(r.namespacePolicy, naive.namespacePolicy, name);
        assert.equal(r.workloadPolicy, naive.workloadPolicy, name);
      }
      for (const p of w.ports) {
        const expected = naiveModeForPort(naive, p.port);
        assert.equal(modeForPort(full, p.port).mode, expected, `${name}:${p.port}`);
        assert.equal(effectiveModeForPort(fast, p.port), expected, `${name}:${p.port}`);
        checkedPorts++;
      }
    }
    assert.ok(checkedPorts > shape.workloads, 'the mesh declares ports');
  });
}
