/**
 * The control plane's placement file (`kmtls controlplane --placement`): a version that fails its
 * schema is reported by field, and the last good placement stays in force.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { watchPlacement } from '../../src/cli/controlplane.js';

test('a placement that fails its schema is named by field, and the last good one stays', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kmtls-placement-'));
  const file = path.join(dir, 'placement.json');
  const good = {
    pods: [{ namespace: 'a', name: 'p', podIP: '127.0.0.2', sidecar: true, apps: {}, outbound: {} }],
  };
  writeFileSync(file, JSON.stringify(good));
  const errors: string[] = [];
  let reported: () => void = () => {};
  const refused = new Promise<void>((resolve) => {
    reported = resolve;
  });
  const watched = await watchPlacement(file, (m) => {
    errors.push(m);
    reported();
  });
  t.after(() => watched.close());
  assert.deepEqual(
    watched.current().pods.map((p) => p.name),
    ['p'],
  );
  writeFileSync(file, JSON.stringify({ pods: [{ ...good.pods[0], apps: { '80': 'not an address' } }] }));
  await refused;
  assert.equal(errors.length, 1);
  assert.match(errors[0]!, /placement .* refused: pods\.0\.apps\.80: an address is IP:PORT$/);
  assert.deepEqual(
    watched.current().pods.map((p) => p.name),
    ['p'],
  );
});
