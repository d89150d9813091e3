/**
 * `kmtls up` refuses a subnet whose addresses another mesh holds, naming --subnet, before it starts
 * anything. A stand-in for the other mesh's control plane listens on 127.(S+3).0.1:15014.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import { LocalMesh } from '../../src/local/mesh.js';
import { CONTROL_PLANE_ADMIN_PORT } from '../../src/local/plan.js';

const SUBNET = 61;

test('a subnet whose control-plane address answers (another mesh) is refused with KMTLS_LOCAL_START naming --subnet', async (t) => {
  const work = await mkdtemp(path.join(tmpdir(), 'kmtls-mesh-start-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const dir = path.join(work, 'manifests');
  const stateDir = path.join(work, 'state');
  await mkdir(dir);
  await writeFile(path.join(dir, 'ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n');
  const other = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ trustDomain: 'cluster.local', pid: 4242, stateDir: '/elsewhere/.kmtls' }));
  });
  await new Promise<void>((resolve) =>
    other.listen(CONTROL_PLANE_ADMIN_PORT, `127.${SUBNET + 3}.0.1`, () => resolve()),
  );
  t.after(() => other.close());

  const mesh = new LocalMesh({
    dir,
    stateDir,
    subnet: SUBNET,
    trustDomain: 'cluster.local',
    rootNamespace: 'istio-system',
    cwd: work,
  });
  await assert.rejects(mesh.start(), (err: unknown) => {
    assert.ok(err instanceof KmtlsError);
    assert.equal(err.code, 'KMTLS_LOCAL_START');
    assert.match(err.message, /--subnet 61/);
    assert.match(err.message, /pid 4242/);
    return true;
  });
  // Nothing was started: no control plane log.
  assert.deepEqual(await readdir(path.join(stateDir, 'logs')), []);
  await mesh.stop();
});
