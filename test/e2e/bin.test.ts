/**
 * The real executable, as a user runs it: a child process reading files and stdin. `npm test`
 * builds dist/ first; these tests fail if the build is missing or stale.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

function kmtls(args: string[], input?: string) {
  const r = spawnSync(process.execPath, ['bin/kmtls.js', ...args], { input, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('the executable explains a pod of the quickstart', () => {
  const r = kmtls([
    'explain',
    'pod',
    'finance/payments',
    '--port',
    '9090',
    '-f',
    'examples/quickstart',
    '-o',
    'json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout) as { mode: string; workloadMode: string };
  assert.equal(json.mode, 'PERMISSIVE');
  assert.equal(json.workloadMode, 'STRICT');
});

test('the executable reads manifests from stdin', () => {
  const r = kmtls(
    ['validate', '-f', '-'],
    'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: ENFORCED}}\n',
  );
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^<stdin>:4:21: error KMTLS_PA_INVALID_MODE/m);
});

test('exit codes: 0 valid, 1 errors, 2 usage', () => {
  assert.equal(kmtls(['validate', '-f', 'examples/quickstart']).code, 0);
  assert.equal(kmtls(['validate', '-f', 'test/fixtures/invalid']).code, 1);
  assert.equal(kmtls(['validate']).code, 2);
  assert.equal(kmtls(['analyze', '-f', 'examples/wrong-namespace']).code, 1);
  assert.equal(kmtls(['analyze', '-f', 'examples/workload-strict']).code, 0);
});

test('garbage input gives coded messages, never a stack trace', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-garbage-'));
  try {
    const inputs: Record<string, string | Buffer> = {
      'binary.yaml': Buffer.from([0, 1, 2, 0xff, 0xfe, 0x80, 0x0a, 0x3a, 0x3a]),
      'tabs.yaml': 'apiVersion: v1\n\tkind: Pod\n',
      'anchors.yaml': 'a: &a [*a, *a]\n',
      'deep.yaml': `${'['.repeat(2000)}${']'.repeat(2000)}\n`,
      'scalar.yaml': '42\n',
      'kinds.yaml':
        'apiVersion: v1\nkind: 7\nmetadata: {name: [1]}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec: {containers: 5}\n',
      'pa.yaml':
        'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, labels: [a]}\nspec: [1, 2]\n',
      'dr.yaml':
        'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: 5, trafficPolicy: {portLevelSettings: [null, {port: 3}]}, subsets: {a: 1}}\n',
    };
    for (const [name, content] of Object.entries(inputs)) await writeFile(path.join(dir, name), content);
    for (const command of ['validate', 'analyze']) {
      const r = kmtls([command, '-f', dir]);
      assert.equal(r.code, 1, `${command}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr + r.stdout, /BUG|\n\s+at /, `${command} printed a stack trace`);
      for (const name of Object.keys(inputs)) {
        assert.match(
          r.stdout,
          new RegExp(`${name}:\\d+:\\d+: error KMTLS_`),
          `${command}: no located error for ${name}`,
        );
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
