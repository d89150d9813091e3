import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { parse } from 'yaml';
import { KmtlsError } from '../../src/errors.js';
import { FileSecretStore, writeFileAtomic } from '../../src/pki/file-secret-store.js';
import type { Secret } from '../../src/pki/secret-store.js';

async function tempStore(t: TestContext): Promise<FileSecretStore> {
  const root = await mkdtemp(join(tmpdir(), 'kmtls-secrets-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  return new FileSecretStore(join(root, 'state'));
}

function ecKeyPem(): Buffer {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return Buffer.from(privateKey.export({ type: 'pkcs8', format: 'pem' }));
}

function tlsSecret(overrides: Partial<Secret> = {}): Secret {
  return {
    namespace: 'istio-system',
    name: 'cacerts',
    type: 'kubernetes.io/tls',
    labels: { app: 'kmtls', enabled: 'yes' },
    annotations: { 'kmtls.io/rotated-at': '2024-01-01', note: 'on' },
    data: {
      'tls.crt': Buffer.from('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'),
      'tls.key': ecKeyPem(),
      'ca.crt': randomBytes(257), // binary, with every kind of byte
      empty: Buffer.alloc(0),
    },
    ...overrides,
  };
}

/** The Secret as plain values, so deepEqual compares bytes, not Buffer identity. */
function plain(secret: Secret | undefined): unknown {
  if (secret === undefined) return undefined;
  return {
    ...secret,
    data: Object.fromEntries(Object.entries(secret.data).map(([k, v]) => [k, v.toString('hex')])),
  };
}

/** The on-disk format: body, then `# kmtls-sha256: <hex of the body's bytes>`. */
function seal(body: string): string {
  return `${body}# kmtls-sha256: ${createHash('sha256').update(body, 'utf8').digest('hex')}\n`;
}

function sealBytes(body: Buffer): Buffer {
  return Buffer.concat([
    body,
    Buffer.from(`# kmtls-sha256: ${createHash('sha256').update(body).digest('hex')}\n`),
  ]);
}

/** What a KmtlsError with `code` must look like; its message must hold every string of `includes`. */
function coded(code: string, includes: readonly string[] = []) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof KmtlsError, `expected a KmtlsError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const text of includes)
      assert.ok(err.message.includes(text), `"${err.message}" should include "${text}"`);
    return true;
  };
}

/** A pid that no process has: a child that already exited. */
function deadPid(): number {
  const { pid } = spawnSync(process.execPath, ['-e', '']);
  assert.ok(pid !== undefined && pid > 0);
  return pid;
}

const tempName = (pid: number): string => `.kmtls-${pid}-${randomBytes(8).toString('hex')}.tmp`;

test('a Secret put is read back whole: type, labels, annotations and every byte of data', async (t) => {
  const store = await tempStore(t);
  const secret = tlsSecret();
  await store.put(secret);
  const read = await store.get('istio-system', 'cacerts');
  assert.deepEqual(plain(read), plain(secret));
  assert.ok(Buffer.isBuffer(read?.data['tls.key']));
  assert.equal(await store.get('istio-system', 'other'), undefined);
  assert.equal(await store.get('default', 'cacerts'), undefined);
});

test('a Secret with a data key such as __proto__ keeps it as a key', async (t) => {
  const store = await tempStore(t);
  const secret = tlsSecret({ data: Object.fromEntries([['__proto__', Buffer.from('x')]]) });
  await store.put(secret);
  const read = await store.get('istio-system', 'cacerts');
  assert.deepEqual(Object.keys(read?.data ?? {}), ['__proto__']);
});

test('the file is 0600 and the directories 0700, at <stateDir>/secrets/<namespace>/<name>.yaml', async (t) => {
  const store = await tempStore(t);
  const previous = process.umask(0o000); // even with no umask, nothing is opened to others
  t.after(() => process.umask(previous));
  await store.put(tlsSecret());
  const path = join(store.stateDir, 'secrets', 'istio-system', 'cacerts.yaml');
  assert.equal(store.pathOf('istio-system', 'cacerts'), path);
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  for (const dir of [store.stateDir, store.secretsDir, dirname(path)]) {
    assert.equal((await stat(dir)).mode & 0o777, 0o700, dir);
  }
});

test('the file is a v1 Secret manifest that a YAML 1.2 and a YAML 1.1 reader (as kubectl) both read alike', async (t) => {
  const store = await tempStore(t);
  const secret = tlsSecret();
  await store.put(secret);
  const text = await readFile(store.pathOf('istio-system', 'cacerts'), 'utf8');
  for (const version of ['1.1', '1.2'] as const) {
    const manifest = parse(text, { version });
    assert.deepEqual(manifest, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: {
        name: 'cacerts',
        namespace: 'istio-system',
        labels: { app: 'kmtls', enabled: 'yes' },
        annotations: { 'kmtls.io/rotated-at': '2024-01-01', note: 'on' },
      },
      type: 'kubernetes.io/tls',
      data: Object.fromEntries(
        Object.entries(secret.data)
          .sort(([a], [b]) => (a < b ? -1 : 1))
          .map(([k, v]) => [k, v.toString('base64')]),
      ),
    });
  }
  assert.match(text, /\n# kmtls-sha256: [0-9a-f]{64}\n$/);
});

test('put replaces the whole Secret: keys not in the new version are gone', async (t) => {
  const store = await tempStore(t);
  await store.put(tlsSecret());
  const next = tlsSecret({
    type: 'Opaque',
    labels: {},
    annotations: {},
    data: { 'root-cert.pem': Buffer.from('r') },
  });
  await store.put(next);
  assert.deepEqual(plain(await store.get('istio-system', 'cacerts')), plain(next));
});

test('a crash while writing: a half-written temp file is ignored, and the next write removes it', async (t) => {
  const store = await tempStore(t);
  const v1 = tlsSecret();
  await store.put(v1);
  const path = store.pathOf('istio-system', 'cacerts');
  const dir = dirname(path);
  const complete = await readFile(path);
  const stray = join(dir, tempName(deadPid()));
  await writeFile(stray, complete.subarray(0, complete.length >> 1), { mode: 0o600 });
  // A temp file of a live process (pid 1 always runs) may be a write in progress: it is left alone.
  const live = join(dir, tempName(1));
  await writeFile(live, 'apiVersion: v1\n', { mode: 0o600 });

  assert.deepEqual(plain(await store.get('istio-system', 'cacerts')), plain(v1));
  assert.deepEqual((await store.list()).map(plain), [plain(v1)]);

  const v2 = tlsSecret({ labels: { version: '2' } });
  await store.put(v2);
  assert.deepEqual(plain(await store.get('istio-system', 'cacerts')), plain(v2));
  assert.deepEqual((await readdir(dir)).sort(), [live.slice(dir.length + 1), 'cacerts.yaml'].sort());
});

test('a crash before the first rename leaves no Secret, not a partial one', async (t) => {
  const store = await tempStore(t);
  await store.put(tlsSecret({ name: 'other' }));
  const dir = dirname(store.pathOf('istio-system', 'cacerts'));
  await writeFile(join(dir, tempName(deadPid())), 'apiVersion: v1\nkind: Sec', { mode: 0o600 });
  assert.equal(await store.get('istio-system', 'cacerts'), undefined);
  assert.deepEqual(
    (await store.list('istio-system')).map((s) => s.name),
    ['other'],
  );
});

test('every truncation of a Secret file is CORRUPT, naming the file, never a shorter Secret', async (t) => {
  const store = await tempStore(t);
  const secret = tlsSecret();
  await store.put(secret);
  const path = store.pathOf('istio-system', 'cacerts');
  const complete = await readFile(path);
  const keyBase64 = secret.data['tls.key']!.toString('base64');
  for (let length = 0; length < complete.length; length++) {
    await writeFile(path, complete.subarray(0, length));
    await assert.rejects(store.get('istio-system', 'cacerts'), (err: unknown) => {
      coded('KMTLS_STATE_CORRUPT', [path, 'restore it from a backup'])(err);
      assert.ok(!(err as Error).message.includes(keyBase64.slice(0, 16)), 'no key material in the message');
      return true;
    });
  }
  await writeFile(path, complete);
  assert.deepEqual(plain(await store.get('istio-system', 'cacerts')), plain(secret));
});

test('a Secret file that group or others may read or write is refused, with the chmod that fixes it', async (t) => {
  const store = await tempStore(t);
  await store.put(tlsSecret());
  const path = store.pathOf('istio-system', 'cacerts');
  const cases: [number, string][] = [
    [0o644, 'readable by others'],
    [0o640, 'readable by its group'],
    [0o620, 'writable by its group'],
    [0o606, 'readable and writable by others'],
    [0o601, 'accessible by others'],
  ];
  for (const [mode, words] of cases) {
    await chmod(path, mode);
    const octal = mode.toString(8).padStart(4, '0');
    const message = `state file is ${words}: ${path} (mode ${octal}); run chmod 600 ${path}`;
    await assert.rejects(
      store.get('istio-system', 'cacerts'),
      coded('KMTLS_STATE_INSECURE_PERMISSIONS', [message]),
    );
    await assert.rejects(store.list(), coded('KMTLS_STATE_INSECURE_PERMISSIONS', [path]));
  }
  await chmod(path, 0o600);
  assert.ok(await store.get('istio-system', 'cacerts'));
});

test('a state directory that group or others may read or write is refused, for reads and writes', async (t) => {
  const store = await tempStore(t);
  await store.put(tlsSecret());
  for (const dir of [store.secretsDir, join(store.secretsDir, 'istio-system')]) {
    await chmod(dir, 0o755);
    const hint = `state directory is readable by others: ${dir} (mode 0755); run chmod 700 ${dir}`;
    await assert.rejects(
      store.get('istio-system', 'cacerts'),
      coded('KMTLS_STATE_INSECURE_PERMISSIONS', [hint]),
    );
    await assert.rejects(store.list(), coded('KMTLS_STATE_INSECURE_PERMISSIONS', [hint]));
    await assert.rejects(store.put(tlsSecret()), coded('KMTLS_STATE_INSECURE_PERMISSIONS', [hint]));
    await chmod(dir, 0o700);
  }
  assert.ok(await store.get('istio-system', 'cacerts'));
});

/** A well-formed manifest body with `edit` applied, sealed with a correct checksum. */
function manifest(edit: (lines: string) => string): string {
  return seal(
    edit(
      'apiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  namespace: istio-system\n' +
        'type: Opaque\ndata:\n  ca-key.pem: "S0VZTUFURVJJQUw="\n',
    ),
  );
}

const CORRUPT: [string, string | Buffer, string][] = [
  ['an empty file', '', 'the file is empty'],
  ['a file without its checksum line', 'apiVersion: v1\nkind: Secret\n', 'truncated or not written by kmtls'],
  ['a file cut inside a line', manifest((s) => s).slice(0, -10), 'does not end with a complete line'],
  [
    'a file edited by hand',
    manifest((s) => s).replace('Opaque', 'Opaqu3'),
    'does not match its kmtls-sha256 line',
  ],
  [
    'binary garbage',
    Buffer.concat([randomBytes(64), Buffer.from('\n')]),
    'truncated or not written by kmtls',
  ],
  ['text that is not UTF-8', sealBytes(Buffer.from('kind: \xff\xfe\n', 'latin1')), 'not UTF-8'],
  ['text that is not YAML', seal('apiVersion: v1\nkind: [Secret\n  data: {\n'), 'not YAML'],
  ['two YAML documents', manifest((s) => `${s}---\nkind: Secret\n`), 'not YAML: MULTIPLE_DOCS'],
  ['a duplicate key', manifest((s) => `${s}kind: Secret\n`), 'not YAML: DUPLICATE_KEY'],
  ['a list, not a mapping', seal('- apiVersion: v1\n'), 'not a mapping'],
  [
    'a ConfigMap',
    manifest((s) => s.replace('kind: Secret', 'kind: ConfigMap')),
    'kind is "ConfigMap", not "Secret"',
  ],
  ['apiVersion v2', manifest((s) => s.replace('apiVersion: v1', 'apiVersion: v2')), 'apiVersion is "v2"'],
  ['no metadata', seal('apiVersion: v1\nkind: Secret\n'), 'metadata is missing'],
  [
    'data that is not base64',
    manifest((s) => s.replace('S0VZTUFURVJJQUw=', '@@not base64@@')),
    'data.ca-key.pem is not valid base64',
  ],
  [
    'base64 without padding',
    manifest((s) => s.replace('S0VZTUFURVJJQUw=', 'S0VZTUFURVJJQUw')),
    'not valid base64',
  ],
  [
    'base64 with stray bits',
    manifest((s) => s.replace('S0VZTUFURVJJQUw=', 'S0VZTUFURVJJQUx=')),
    'not valid base64',
  ],
  [
    'a data value that is a number',
    manifest((s) => s.replace('"S0VZTUFURVJJQUw="', '1234')),
    'data.ca-key.pem is not a string',
  ],
  [
    'data that is a string',
    manifest((s) => s.replace(/^data:\n.*\n/m, 'data: S0VZTUFURVJJQUw=\n')),
    'data is not a mapping',
  ],
  ['a bad data key', manifest((s) => s.replace('ca-key.pem', 'ca key')), 'data key "ca key"'],
  ['stringData', manifest((s) => `${s}stringData:\n  a: b\n`), 'stringData is not supported'],
  [
    'a label that is not a string',
    manifest((s) => s.replace('metadata:\n', 'metadata:\n  labels:\n    v: 2\n')),
    'metadata.labels.v is not a string',
  ],
  ['YAML aliases', manifest((s) => s.replace('type: Opaque', 'type: &t Opaque\nx: *t')), 'aliases'],
  [
    'another name',
    manifest((s) => s.replace('name: cacerts', 'name: other')),
    'metadata.name is "other" but the file is named for "cacerts"',
  ],
  [
    'another namespace',
    manifest((s) => s.replace('namespace: istio-system', 'namespace: default')),
    'metadata.namespace is "default"',
  ],
  [
    'no namespace',
    manifest((s) => s.replace('  namespace: istio-system\n', '')),
    'metadata.namespace is missing',
  ],
  [
    'an invalid name',
    manifest((s) => s.replace('name: cacerts', 'name: ../cacerts')),
    'metadata.name "../cacerts" is not a DNS-1123 subdomain',
  ],
];

for (const [what, content, reason] of CORRUPT) {
  test(`a Secret file with ${what} is CORRUPT: the file and the reason are named, no data is returned`, async (t) => {
    const store = await tempStore(t);
    const path = store.pathOf('istio-system', 'cacerts');
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await writeFile(path, content, { mode: 0o600 });
    const expected = coded('KMTLS_STATE_CORRUPT', [`state file is corrupt: ${path} (`, reason]);
    await assert.rejects(store.get('istio-system', 'cacerts'), (err: unknown) => {
      expected(err);
      assert.ok(!(err as Error).message.includes('S0VZTUFURVJJQUw'), 'no data value in the message');
      return true;
    });
    await assert.rejects(store.list('istio-system'), expected);
  });
}

test('the well-formed manifest the CORRUPT cases start from is read', async (t) => {
  const store = await tempStore(t);
  const path = store.pathOf('istio-system', 'cacerts');
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFile(
    path,
    manifest((s) => s),
    { mode: 0o600 },
  );
  const secret = await store.get('istio-system', 'cacerts');
  assert.equal(secret?.data['ca-key.pem']?.toString(), 'KEYMATERIAL');
});

test('names that are not Kubernetes names are refused before the file system is touched', async (t) => {
  const store = await tempStore(t);
  const refs: [string, string][] = [
    ['default', '../x'],
    ['default', '..'],
    ['default', '.'],
    ['default', 'a/b'],
    ['default', '/etc/passwd'],
    ['default', 'UPPER'],
    ['default', ''],
    ['default', 'a..b'],
    ['default', `${'a'.repeat(251)}`],
    ['..', 'x'],
    ['../../tmp', 'x'],
    ['a.b', 'x'],
    ['', 'x'],
    ['Default', 'x'],
  ];
  for (const [namespace, name] of refs) {
    const refused = coded('KMTLS_STATE_IO', ['invalid secret']);
    await assert.rejects(store.get(namespace, name), refused);
    await assert.rejects(store.put(tlsSecret({ namespace, name })), refused);
    await assert.rejects(store.delete(namespace, name), refused);
    assert.throws(() => store.pathOf(namespace, name), refused);
  }
  await assert.rejects(store.list('../x'), coded('KMTLS_STATE_IO', ['invalid namespace']));
  await assert.rejects(stat(store.stateDir), { code: 'ENOENT' });
});

test('a Secret the API server would refuse is not written', async (t) => {
  const store = await tempStore(t);
  const cases: [Partial<Secret>, string][] = [
    [{ data: { 'tls key': Buffer.from('x') } }, 'data key "tls key"'],
    [{ data: { '..data': Buffer.from('x') } }, 'data key "..data"'],
    [{ data: { big: Buffer.alloc(1024 * 1024 + 1) } }, 'more than the 1048576 a Secret may hold'],
    [{ type: '' }, 'type is empty'],
  ];
  for (const [overrides, reason] of cases) {
    await assert.rejects(
      store.put(tlsSecret(overrides)),
      coded('KMTLS_STATE_IO', ['invalid secret: istio-system/cacerts (', reason]),
    );
  }
  await assert.rejects(stat(store.stateDir), { code: 'ENOENT' });
});

test('a symbolic link in place of a Secret file is not followed', async (t) => {
  const store = await tempStore(t);
  await store.put(tlsSecret({ name: 'real' }));
  await symlink(store.pathOf('istio-system', 'real'), store.pathOf('istio-system', 'cacerts'));
  await assert.rejects(store.get('istio-system', 'cacerts'), coded('KMTLS_STATE_IO', ['symbolic link']));
});

test('list returns every Secret sorted by namespace and name; delete removes one', async (t) => {
  const store = await tempStore(t);
  assert.deepEqual(await store.list(), []);
  assert.deepEqual(await store.list('default'), []);
  const refs = [
    ['istio-system', 'cacerts'],
    ['default', 'web-tls'],
    ['default', 'api-tls'],
  ] as const;
  for (const [namespace, name] of refs) await store.put(tlsSecret({ namespace, name }));
  const names = (secrets: Secret[]): string[] => secrets.map((s) => `${s.namespace}/${s.name}`);
  assert.deepEqual(names(await store.list()), ['default/api-tls', 'default/web-tls', 'istio-system/cacerts']);
  assert.deepEqual(names(await store.list('default')), ['default/api-tls', 'default/web-tls']);
  assert.deepEqual(await store.list('missing'), []);

  assert.equal(await store.delete('default', 'web-tls'), true);
  assert.equal(await store.delete('default', 'web-tls'), false);
  assert.equal(await store.delete('missing', 'web-tls'), false);
  assert.equal(await store.get('default', 'web-tls'), undefined);
  assert.deepEqual(names(await store.list()), ['default/api-tls', 'istio-system/cacerts']);
});

test('concurrent puts of one Secret, from two stores, end with one complete version and no temp files', async (t) => {
  const store = await tempStore(t);
  const twin = new FileSecretStore(store.stateDir);
  const versions = Array.from({ length: 24 }, (_, i) =>
    tlsSecret({
      labels: { version: String(i) },
      data: { 'tls.key': randomBytes(2048), n: Buffer.from(String(i)) },
    }),
  );
  await Promise.all(versions.map((secret, i) => (i % 2 === 0 ? store : twin).put(secret)));
  const read = await store.get('istio-system', 'cacerts');
  assert.ok(read !== undefined);
  const winner = versions[Number(read.labels.version)];
  assert.deepEqual(plain(read), plain(winner));
  assert.deepEqual(await readdir(join(store.secretsDir, 'istio-system')), ['cacerts.yaml']);
});

test('writeFileAtomic creates missing directories 0700, sets exactly the mode, replaces the whole file', async (t) => {
  const store = await tempStore(t);
  const dir = join(store.stateDir, 'out', 'issued');
  const path = join(dir, 'cert-chain.pem');
  const previous = process.umask(0o077); // a umask that would take away the 0644 asked for
  t.after(() => process.umask(previous));
  await writeFileAtomic(path, Buffer.from('a much longer first version\n'), 0o644);
  await writeFile(join(dir, tempName(deadPid())), 'half', { mode: 0o600 });
  await writeFileAtomic(path, Buffer.from('second\n'), 0o644);
  assert.equal(await readFile(path, 'utf8'), 'second\n');
  assert.equal((await stat(path)).mode & 0o777, 0o644);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.deepEqual(await readdir(dir), ['cert-chain.pem']);
  await writeFileAtomic(path, Buffer.from('key'), 0o600);
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  await assert.rejects(
    writeFileAtomic(path, Buffer.from('x'), 0o1777),
    coded('KMTLS_STATE_IO', ['BUG: invalid file mode']),
  );
});
