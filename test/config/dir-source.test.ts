/**
 * A watched directory of manifests, judged file by file: a version with errors is reported and the
 * file's last good version keeps serving; a deleted file's objects go away; the generation moves
 * only when what is served moves. Real files in a temp directory; rescans are explicit except in
 * the watch test, which waits on the subscriber, not on a timer.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import type { SourceState } from '../../src/config/index.js';
import { DirectorySource } from '../../src/config/index.js';
import { Signal } from '../helpers/mesh.js';

const NAMESPACES = `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
`;

function policy(mode: string, name = 'default'): string {
  return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ${name}, namespace: shop}
spec:
  mtls: {mode: ${mode}}
`;
}

const SERVICE = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
`;

const BROKEN_YAML = 'apiVersion: v1\nkind: [Namespace\nmetadata: {name: oops\n';

interface Fixture {
  readonly dir: string;
  readonly file: (name: string) => string;
  readonly write: (name: string, text: string) => Promise<void>;
}

async function fixture(t: TestContext, files: Record<string, string>): Promise<Fixture> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-dir-source-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = (name: string) => path.join(dir, name);
  const write = (name: string, text: string) => writeFile(file(name), text);
  for (const [name, text] of Object.entries(files)) await write(name, text);
  return { dir, file, write };
}

/** Opens without watching; every state published is recorded. */
async function open(
  t: TestContext,
  dir: string,
  now: () => number = Date.now,
): Promise<{ source: DirectorySource; published: SourceState[] }> {
  const source = await DirectorySource.open(dir, { watch: false, now });
  t.after(() => source.close());
  const published: SourceState[] = [];
  source.subscribe((s) => published.push(s));
  return { source, published };
}

const modes = (s: SourceState) => s.resources.peerAuthentications.map((p) => `${p.meta.name}=${p.mode}`);
const namespaces = (s: SourceState) => s.resources.namespaces.map((n) => n.meta.name).sort();

test('the first read serves every file, in name order, as generation 1', async (t) => {
  const f = await fixture(t, { 'b-policy.yaml': policy('STRICT'), 'a-namespaces.yaml': NAMESPACES });
  const { source } = await open(t, f.dir);
  const s = source.current();
  assert.equal(s.generation, 1);
  assert.deepEqual(s.files, [f.file('a-namespaces.yaml'), f.file('b-policy.yaml')]);
  assert.deepEqual(namespaces(s), ['legacy', 'shop']);
  assert.deepEqual(modes(s), ['default=STRICT']);
  assert.deepEqual(s.errors, []);
});

test('an edit to broken YAML is reported and the last good version keeps serving, generation unchanged', async (t) => {
  const f = await fixture(t, { 'ns.yaml': NAMESPACES, 'policy.yaml': policy('PERMISSIVE') });
  const { source, published } = await open(t, f.dir);
  const before = source.current();

  await f.write('ns.yaml', BROKEN_YAML);
  await source.rescan();
  const s = source.current();
  assert.equal(published.length, 1, 'subscribers hear of the refused version');
  assert.equal(published[0], s);
  assert.equal(s.generation, before.generation, 'only breaking a file serves nothing new');
  assert.equal(s.resources, before.resources);
  assert.equal(s.changedAtMs, before.changedAtMs);
  assert.deepEqual(namespaces(s), ['legacy', 'shop'], 'the last good version still serves');
  assert.equal(s.errors.length, 1);
  const e = s.errors[0]!;
  assert.equal(e.file, f.file('ns.yaml'));
  assert.equal(e.servingLastGood, true);
  assert.ok(e.diagnostics.length > 0);
  assert.ok(
    e.diagnostics.every((d) => d.severity === 'error' && d.code === 'KMTLS_MANIFEST_YAML'),
    JSON.stringify(e.diagnostics),
  );
  assert.deepEqual(s.files, before.files, 'the broken file is still listed');
});

test('a PeerAuthentication the API server would refuse (mode STRIKT) keeps its last good version', async (t) => {
  const f = await fixture(t, { 'policy.yaml': policy('PERMISSIVE') });
  const { source } = await open(t, f.dir);
  assert.deepEqual(modes(source.current()), ['default=PERMISSIVE']);

  await f.write('policy.yaml', policy('STRIKT'));
  await source.rescan();
  const s = source.current();
  assert.equal(s.generation, 1);
  assert.deepEqual(modes(s), ['default=PERMISSIVE'], 'the refused policy is not applied');
  assert.deepEqual(s.resources.rejectedPeerAuthentications, [], 'nor served as a rejected one');
  assert.equal(s.errors.length, 1);
  assert.equal(s.errors[0]?.file, f.file('policy.yaml'));
  assert.equal(s.errors[0]?.servingLastGood, true);
  assert.ok(
    s.errors[0]?.diagnostics.some((d) => /STRIKT/.test(d.message)),
    JSON.stringify(s.errors[0]?.diagnostics),
  );

  // Fixed: the new version serves, the error is gone, the generation moves.
  await f.write('policy.yaml', policy('STRICT'));
  await source.rescan();
  const fixed = source.current();
  assert.equal(fixed.generation, 2);
  assert.deepEqual(modes(fixed), ['default=STRICT']);
  assert.deepEqual(fixed.errors, []);
});

test('a new file broken from the start contributes nothing and has no last good version', async (t) => {
  const f = await fixture(t, { 'policy.yaml': policy('STRICT') });
  const { source } = await open(t, f.dir);

  await f.write('bad.yaml', `${SERVICE}---\n${policy('STRIKT', 'bad')}`);
  await source.rescan();
  const s = source.current();
  assert.deepEqual(
    s.errors.map((e) => [e.file, e.servingLastGood]),
    [[f.file('bad.yaml'), false]],
  );
  assert.deepEqual(s.resources.services, [], 'the good Service in the refused file is not served either');
  assert.deepEqual(modes(s), ['default=STRICT']);
  assert.deepEqual(s.files, [f.file('bad.yaml'), f.file('policy.yaml')]);

  // Once it is good, all of it serves.
  await f.write('bad.yaml', `${SERVICE}---\n${policy('PERMISSIVE', 'bad')}`);
  await source.rescan();
  const fixed = source.current();
  assert.deepEqual(fixed.errors, []);
  assert.deepEqual(
    fixed.resources.services.map((x) => x.meta.name),
    ['web'],
  );
  assert.deepEqual(modes(fixed).sort(), ['bad=PERMISSIVE', 'default=STRICT']);
});

test('adding, then deleting, a file that never had a good version leaves the generation alone', {}, async (t) => {
  const f = await fixture(t, { 'policy.yaml': policy('STRICT') });
  const { source } = await open(t, f.dir);
  const before = source.current();

  await f.write('bad.yaml', BROKEN_YAML);
  await source.rescan();
  assert.equal(source.current().errors.length, 1);
  assert.equal(source.current().generation, before.generation);
  assert.equal(source.current().resources, before.resources);

  await unlink(f.file('bad.yaml'));
  await source.rescan();
  assert.deepEqual(source.current().errors, []);
  assert.equal(source.current().generation, before.generation);
});

test('deleting a file removes its objects, even while an older version of it was serving', async (t) => {
  const f = await fixture(t, { 'ns.yaml': NAMESPACES, 'policy.yaml': policy('STRICT'), 'svc.yaml': SERVICE });
  const { source } = await open(t, f.dir);

  await unlink(f.file('svc.yaml'));
  await source.rescan();
  let s = source.current();
  assert.equal(s.generation, 2);
  assert.deepEqual(s.resources.services, []);
  assert.deepEqual(s.files, [f.file('ns.yaml'), f.file('policy.yaml')]);

  // Broken, so its last good version serves; then deleted: both the objects and the error go.
  await f.write('policy.yaml', BROKEN_YAML);
  await source.rescan();
  assert.equal(source.current().generation, 2);
  assert.deepEqual(modes(source.current()), ['default=STRICT']);
  await unlink(f.file('policy.yaml'));
  await source.rescan();
  s = source.current();
  assert.equal(s.generation, 3);
  assert.deepEqual(s.resources.peerAuthentications, []);
  assert.deepEqual(s.errors, []);
  assert.deepEqual(namespaces(s), ['legacy', 'shop']);
});

test('a rescan with nothing changed publishes nothing; times come from the injected clock', async (t) => {
  let now = 1_000;
  const f = await fixture(t, { 'policy.yaml': policy('STRICT') });
  const { source, published } = await open(t, f.dir, () => now);
  assert.equal(source.current().changedAtMs, 1_000);

  now = 2_000;
  await source.rescan();
  assert.equal(published.length, 0);
  assert.equal(source.current().generation, 1);

  // Broken twice: the error keeps the time it was first seen; nothing served changed.
  now = 3_000;
  await f.write('policy.yaml', BROKEN_YAML);
  await source.rescan();
  now = 4_000;
  await f.write('policy.yaml', `${BROKEN_YAML}# still broken\n`);
  await source.rescan();
  assert.equal(published.length, 2);
  assert.equal(source.current().errors[0]?.sinceMs, 3_000);
  assert.equal(source.current().changedAtMs, 1_000);

  now = 5_000;
  await f.write('policy.yaml', policy('PERMISSIVE'));
  await source.rescan();
  assert.equal(source.current().changedAtMs, 5_000);
  assert.equal(source.current().generation, 2);
  assert.equal(published.length, 3);

  // Unsubscribed listeners hear nothing more.
  const later: SourceState[] = [];
  const off = source.subscribe((s) => later.push(s));
  off();
  await f.write('policy.yaml', policy('STRICT'));
  await source.rescan();
  assert.equal(later.length, 0);
  assert.equal(published.length, 4);
});

test('watching: an edit is picked up and published without a rescan being asked for', async (t) => {
  const f = await fixture(t, { 'policy.yaml': policy('PERMISSIVE') });
  const source = await DirectorySource.open(f.dir);
  t.after(() => source.close());
  const signal = new Signal();
  let latest: SourceState = source.current();
  source.subscribe((s) => {
    latest = s;
    signal.notify();
  });

  await f.write('policy.yaml', policy('STRICT'));
  // A save may be seen half-written first; what counts is that the final text gets served.
  const s = await signal.until(
    () => (modes(latest).join() === 'default=STRICT' ? latest : undefined),
    () => `the watcher to publish the STRICT policy (have ${modes(latest).join() || 'none'})`,
  );
  assert.ok(s.generation >= 2);

  // Saved as many editors save: a new file renamed over the old one.
  await writeFile(f.file('.policy.yaml.swp'), policy('PERMISSIVE'));
  await rename(f.file('.policy.yaml.swp'), f.file('policy.yaml'));
  await signal.until(
    () => (modes(latest).join() === 'default=PERMISSIVE' ? latest : undefined),
    () => `the watcher to follow a rename-save (have ${modes(latest).join() || 'none'})`,
  );

  // A directory moved in, files and all, is read; then a file saved in it is seen too.
  const staging = await mkdtemp(path.join(tmpdir(), 'kmtls-dir-source-staging-'));
  t.after(() => rm(staging, { recursive: true, force: true }));
  await writeFile(path.join(staging, 'svc.yaml'), SERVICE);
  const sub = path.join(f.dir, 'more');
  await rename(staging, sub);
  const withService = await signal.until(
    () => (latest.resources.services.length === 1 ? latest : undefined),
    () => `the watcher to publish the Service in more/ (generation ${latest.generation})`,
  );
  assert.ok(withService.files.includes(path.join(sub, 'svc.yaml')));
  // The watch on more/ is set up just after the rescan that found it, so an edit made at once may
  // fall before it: save again (each wait ends as soon as the edit is published) until it is seen.
  const target = path.join(sub, 'svc.yaml');
  const renamed = SERVICE.replace('name: web,', 'name: web2,');
  let saves = 0;
  const seenRenamed = () =>
    latest.resources.services.some((x) => x.meta.name === 'web2') ? latest : undefined;
  while (!seenRenamed() && saves < 20) {
    saves++;
    await writeFile(target, `${renamed}# save ${saves}\n`);
    await signal.until(seenRenamed, 'the Service edited in more/', 250).catch(() => undefined);
  }
  assert.ok(seenRenamed(), `an edit inside more/ was never published (${saves} saves)`);
});

test('a file emptied mid-save is read again after a settle delay: the saved text serves, the policy never vanishes', async (t) => {
  const f = await fixture(t, { 'ns.yaml': NAMESPACES, 'policy.yaml': policy('STRICT') });
  let settles = 0;
  // The "editor" writes the new text while the source waits to settle.
  const source = await DirectorySource.open(f.dir, {
    watch: false,
    settle: async () => {
      settles++;
      await f.write('policy.yaml', policy('STRICT', 'renamed'));
    },
  });
  t.after(() => source.close());
  const published: SourceState[] = [];
  source.subscribe((s) => published.push(s));

  await f.write('policy.yaml', '');
  await source.rescan();
  assert.equal(settles, 1);
  assert.deepEqual(
    published.map(modes),
    [['renamed=STRICT']],
    'no state without the STRICT policy was published',
  );
});

test('a file emptied for real (still empty, or comments only, after the settle delay) is accepted', async (t) => {
  const f = await fixture(t, { 'ns.yaml': NAMESPACES, 'policy.yaml': policy('STRICT') });
  let settles = 0;
  const source = await DirectorySource.open(f.dir, {
    watch: false,
    settle: async () => {
      settles++;
    },
  });
  t.after(() => source.close());
  await f.write('policy.yaml', '# nothing here any more\n\n');
  await source.rescan();
  assert.equal(settles, 1);
  assert.deepEqual(modes(source.current()), []);
  assert.equal(source.current().generation, 2);
  assert.deepEqual(source.current().errors, []);

  // A file that had no objects is not waited for.
  await f.write('policy.yaml', '');
  await source.rescan();
  assert.equal(settles, 1);
});

test('the default settle delay is a real wait (settleMs)', async (t) => {
  const f = await fixture(t, { 'policy.yaml': policy('STRICT') });
  const source = await DirectorySource.open(f.dir, { watch: false, settleMs: 300 });
  t.after(() => source.close());
  await f.write('policy.yaml', '');
  const started = performance.now();
  const pending = source.rescan();
  await new Promise((r) => setTimeout(r, 50));
  await f.write('policy.yaml', policy('PERMISSIVE'));
  await pending;
  assert.ok(performance.now() - started >= 250);
  assert.deepEqual(modes(source.current()), ['default=PERMISSIVE']);
});
