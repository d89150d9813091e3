/**
 * `kmtls ca init|issue|inspect|rotate`, run in-process through `run(argv, io)` against state
 * directories in temp dirs, with `openssl verify` as the judge of what `ca issue` writes. The CLI is
 * the composition edge and reads the wall clock; certificates made here are made relative to it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  X509Certificate,
} from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { run } from '../../src/cli/main.js';
import { createRoot } from '../../src/pki/ca.js';
import { caToSecret, loadCa } from '../../src/pki/ca-store.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { FileSecretStore } from '../../src/pki/file-secret-store.js';
import { buildCertificate, encodeName, keyIdentifier, pemBlocks, toPem } from '../../src/pki/x509.js';
import { readCertificate } from '../../src/pki/x509-read.js';
import { signIntermediate } from '../helpers/ca.js';

interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function kmtls(...argv: string[]): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const code = await run(argv, {
    stdout: (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
    readStdin: async () => '',
    isTty: false,
  });
  return { code, stdout, stderr };
}

/** The result of a command that must fail with `code` and `exit`, printing only the coded error. */
function assertError(r: CliResult, exit: number, code: string, message?: RegExp): void {
  assert.equal(r.code, exit, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stdout, '', 'nothing on stdout');
  assert.match(r.stderr, new RegExp(`^error ${code}: `), r.stderr);
  if (message) assert.match(r.stderr, message);
}

function assertOk(r: CliResult): void {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  assert.equal(r.stderr, '');
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kmtls-cli-ca-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const caFileOf = (stateDir: string) => join(stateDir, 'secrets', 'kmtls-system', 'kmtls-ca.yaml');

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

const modeOf = async (path: string) => (await stat(path)).mode & 0o777;

function openssl(args: readonly string[]): { status: number | null; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.error, undefined, `cannot run openssl: ${String(r.error)}`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** A state directory holding a self-signed CA for cluster.local. */
async function initialized(t: TestContext): Promise<{ dir: string; stateDir: string; file: string }> {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  assertOk(await kmtls('ca', 'init', '--state-dir', stateDir));
  return { dir, stateDir, file: caFileOf(stateDir) };
}

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

function keyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** Istio's plug-in CA layout in `dir`: an offline root signs an intermediate that kmtls will sign with. */
async function writeCacerts(
  dir: string,
  change: Partial<
    Record<'ca-cert.pem' | 'ca-key.pem' | 'root-cert.pem' | 'cert-chain.pem', string | null>
  > = {},
): Promise<{ root: Buffer; intermediate: Buffer }> {
  const now = Date.now();
  const root = createRoot({ trustDomain: 'cluster.local', now: now - DAY_MS, random: randomBytes });
  const { certificate: intermediate, key: interKey } = signIntermediate(root, { nowMs: now });
  const files: Record<string, string | null> = {
    'ca-cert.pem': toPem(intermediate),
    'ca-key.pem': keyPem(interKey),
    'root-cert.pem': toPem(root.certificate),
    'cert-chain.pem': toPem(intermediate) + toPem(root.certificate),
    ...change,
  };
  await mkdir(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) if (text !== null) await writeFile(join(dir, name), text);
  return { root: root.certificate, intermediate };
}

// ---------------------------------------------------------------------------------------------
// ca init

test('ca init creates a self-signed CA as a 0600 Secret file and says where it is', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const r = await kmtls('ca', 'init', '--state-dir', stateDir);
  assertOk(r);
  const file = caFileOf(stateDir);
  assert.match(r.stdout, /^created a self-signed CA for trust domain cluster\.local\n/);
  assert.ok(r.stdout.includes(`  stored as Secret kmtls-system/kmtls-ca in ${file}\n`), r.stdout);
  assert.match(
    r.stdout,
    /signer chain:\n {2}\[0\] root\n {6}subject: {2}O=cluster\.local, CN=kmtls root CA /,
  );
  assert.equal(await modeOf(file), 0o600);
  assert.equal(await modeOf(stateDir), 0o700);
  const ca = await loadCa(new FileSecretStore(stateDir));
  assert.equal(ca?.mode, 'self-signed');
});

test('ca init again changes nothing: exit 0, the file byte for byte the same', async (t) => {
  const { stateDir, file } = await initialized(t);
  const before = await readFile(file);
  const r = await kmtls('ca', 'init', '--state-dir', stateDir);
  assertOk(r);
  assert.match(r.stdout, /^CA already initialized in .* \(trust domain cluster\.local\); nothing changed\n$/);
  assert.deepEqual(await readFile(file), before);
  const json = await kmtls('ca', 'init', '--state-dir', stateDir, '-o', 'json');
  assertOk(json);
  assert.equal(JSON.parse(json.stdout).created, false);
  assert.deepEqual(await readFile(file), before);
});

test('ca init for another trust domain over an existing CA is refused with exit 1 and changes nothing', async (t) => {
  const { stateDir, file } = await initialized(t);
  const before = await readFile(file);
  assertError(
    await kmtls('ca', 'init', '--state-dir', stateDir, '--trust-domain', 'example.org'),
    1,
    'KMTLS_PKI_UNKNOWN_TRUST_DOMAIN',
    /already holds a CA for trust domain cluster\.local, not example\.org; nothing changed/,
  );
  assert.deepEqual(await readFile(file), before);
});

test('ca init -o json describes the CA it created', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const r = await kmtls('ca', 'init', '--state-dir', stateDir, '--trust-domain', 'example.org', '-o', 'json');
  assertOk(r);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(out), [
    'created',
    'trustDomain',
    'mode',
    'secret',
    'file',
    'signer',
    'trustBundle',
    'rotation',
  ]);
  assert.equal(out.created, true);
  assert.equal(out.trustDomain, 'example.org');
  assert.equal(out.mode, 'self-signed');
  assert.equal(out.secret, 'kmtls-system/kmtls-ca');
  assert.equal(out.file, caFileOf(stateDir));
  assert.equal(out.signer.length, 1);
  assert.equal(out.signer[0].role, 'root');
  assert.match(out.signer[0].subject, /^O=example\.org, /);
  assert.equal(out.rotation.phase, 'stable');
});

test('ca init --from-cacerts with a valid intermediate set makes a plug-in CA that signs with the intermediate', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const cacerts = join(dir, 'cacerts');
  const { root, intermediate } = await writeCacerts(cacerts);
  const r = await kmtls('ca', 'init', '--state-dir', stateDir, '--from-cacerts', cacerts);
  assertOk(r);
  assert.match(r.stdout, /^created a plug-in CA for trust domain cluster\.local\n/);
  assert.match(r.stdout, /\[0\] intermediate\n.*\n {6}issuer: {3}O=cluster\.local, CN=kmtls root CA/);
  assert.equal(await modeOf(caFileOf(stateDir)), 0o600);

  const out = join(dir, 'out');
  assertOk(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--out-dir',
      out,
    ),
  );
  const chain = pemBlocks(await readFile(join(out, 'cert-chain.pem'), 'utf8'));
  assert.equal(chain.length, 3);
  assert.ok(chain[1]?.equals(intermediate) && chain[2]?.equals(root));
  assert.deepEqual(pemBlocks(await readFile(join(out, 'root-cert.pem'), 'utf8')), [root]);
  const v = openssl([
    'verify',
    '-CAfile',
    join(out, 'root-cert.pem'),
    '-untrusted',
    join(out, 'cert-chain.pem'),
    join(out, 'cert-chain.pem'),
  ]);
  assert.equal(v.status, 0, v.output);

  // A plug-in CA's root belongs to the operator's PKI: kmtls does not rotate it.
  assertError(
    await kmtls('ca', 'rotate', 'begin', '--state-dir', stateDir),
    1,
    'KMTLS_PKI_ROTATION_STEP',
    /plug-in CA/,
  );
});

test('ca init --from-cacerts with a broken set is refused as CACERTS_INVALID and creates nothing', async (t) => {
  const otherRoot = createRoot({
    trustDomain: 'cluster.local',
    now: Date.now() - DAY_MS,
    random: randomBytes,
  });
  const cases: [string, Parameters<typeof writeCacerts>[1], RegExp][] = [
    [
      'ca-key.pem of another certificate',
      { 'ca-key.pem': keyPem(ecKey()) },
      /CA key does not match the CA certificate/,
    ],
    [
      'a chain that does not link to root-cert.pem',
      { 'root-cert.pem': toPem(otherRoot.certificate) },
      /cert-chain\.pem does not link up: O=cluster\.local, CN=.* is not signed by O=cluster\.local, CN=kmtls root CA /,
    ],
    ['no cert-chain.pem', { 'cert-chain.pem': null }, /cannot read .*cert-chain\.pem: ENOENT/],
    ['a key that is not a key', { 'ca-key.pem': 'not a key\n' }, /unreadable ca-key\.pem/],
  ];
  for (const [name, change, message] of cases) {
    const dir = await tempDir(t);
    const stateDir = join(dir, 'state');
    const cacerts = join(dir, 'cacerts');
    await writeCacerts(cacerts, change);
    const r = await kmtls('ca', 'init', '--state-dir', stateDir, '--from-cacerts', cacerts);
    assert.doesNotThrow(() => assertError(r, 1, 'KMTLS_PKI_CACERTS_INVALID', message), name);
    assert.equal(await exists(caFileOf(stateDir)), false, `${name}: a CA file was written`);
  }
});

// ---------------------------------------------------------------------------------------------
// ca issue

test('ca issue writes cert-chain.pem, key.pem (0600) and root-cert.pem, and openssl verify accepts the leaf', async (t) => {
  const { dir, stateDir } = await initialized(t);
  const out = join(dir, 'out');
  const before = Date.now();
  const r = await kmtls(
    'ca',
    'issue',
    '--state-dir',
    stateDir,
    '--spiffe-id',
    'spiffe://cluster.local/ns/finance/sa/payments',
    '--out-dir',
    out,
  );
  assertOk(r);
  assert.match(
    r.stdout,
    /^issued spiffe:\/\/cluster\.local\/ns\/finance\/sa\/payments \(serial [0-9a-f]{32}\), valid \S+ \.\. \S+\n/,
  );
  for (const f of ['cert-chain.pem', 'key.pem', 'root-cert.pem'])
    assert.ok(r.stdout.includes(`  wrote ${join(out, f)}\n`), f);
  assert.equal(await modeOf(join(out, 'key.pem')), 0o600);

  const chain = pemBlocks(await readFile(join(out, 'cert-chain.pem'), 'utf8'));
  assert.equal(chain.length, 2, 'leaf, root');
  const leaf = readCertificate(chain[0]!);
  assert.deepEqual(leaf.uris, ['spiffe://cluster.local/ns/finance/sa/payments']);
  // 24h by default, backdated two minutes, in whole seconds of the time it ran.
  assert.equal(leaf.notAfter.getTime() - leaf.notBefore.getTime(), DAY_MS + 2 * 60_000);
  assert.ok(leaf.notAfter.getTime() >= Math.floor(before / 1000) * 1000 + DAY_MS);
  // key.pem is the key of the leaf.
  const key = createPrivateKey(await readFile(join(out, 'key.pem'), 'utf8'));
  assert.ok(createPublicKey(key).equals(new X509Certificate(chain[0]!).publicKey));

  const v = openssl(['verify', '-CAfile', join(out, 'root-cert.pem'), join(out, 'cert-chain.pem')]);
  assert.equal(v.status, 0, v.output);
  assert.match(v.output, /cert-chain\.pem: OK/);
  // The same leaf against a root that did not sign it: openssl refuses, so the check above means something.
  const other = join(dir, 'other-root.pem');
  await writeFile(
    other,
    toPem(createRoot({ trustDomain: 'cluster.local', now: Date.now(), random: randomBytes }).certificate),
  );
  assert.notEqual(openssl(['verify', '-CAfile', other, join(out, 'cert-chain.pem')]).status, 0);
});

test('ca issue -o json: identity, serial, validity, ttl and the files written', async (t) => {
  const { dir, stateDir } = await initialized(t);
  const out = join(dir, 'out');
  const r = await kmtls(
    'ca',
    'issue',
    '--state-dir',
    stateDir,
    '--namespace',
    'shop',
    '--service-account',
    'cart',
    '--ttl',
    '36h',
    '--out-dir',
    out,
    '-o',
    'json',
  );
  assertOk(r);
  const o = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(o), ['identity', 'serial', 'notBefore', 'notAfter', 'ttl', 'files']);
  assert.equal(o.identity, 'spiffe://cluster.local/ns/shop/sa/cart');
  assert.equal(o.ttl, '1d12h');
  assert.equal(Date.parse(o.notAfter) - Date.parse(o.notBefore), 36 * HOUR_MS + 2 * 60_000);
  assert.deepEqual(
    o.files,
    ['cert-chain.pem', 'key.pem', 'root-cert.pem'].map((f) => join(out, f)),
  );
  const leaf = readCertificate(pemBlocks(await readFile(join(out, 'cert-chain.pem'), 'utf8'))[0]!);
  assert.equal(leaf.serialHex, o.serial);
});

test('ca issue --ttl 91d is refused with exit 1, naming both TTLs, and writes nothing', async (t) => {
  const { dir, stateDir, file } = await initialized(t);
  const before = await readFile(file);
  const out = join(dir, 'out');
  assertError(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--ttl',
      '91d',
      '--out-dir',
      out,
    ),
    1,
    'KMTLS_PKI_TTL_TOO_LONG',
    /requested TTL 91d is greater than the max allowed TTL 90d\n$/,
  );
  assert.equal(await exists(out), false);
  assert.deepEqual(await readFile(file), before);
});

test('ca issue for a SPIFFE ID of another trust domain is refused', async (t) => {
  const { dir, stateDir } = await initialized(t);
  const out = join(dir, 'out');
  assertError(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--spiffe-id',
      'spiffe://other.example/ns/a/sa/b',
      '--out-dir',
      out,
    ),
    1,
    'KMTLS_PKI_UNKNOWN_TRUST_DOMAIN',
    /spiffe:\/\/other\.example\/ns\/a\/sa\/b .*cluster\.local/,
  );
  assert.equal(await exists(out), false);
});

test('ca issue with a --ttl that is not a positive duration is a usage error, exit 2', async (t) => {
  const { dir, stateDir } = await initialized(t);
  const out = join(dir, 'out');
  for (const ttl of ['soon', '24', '0s', '-1h', '1h-5m', '1.5h', '']) {
    // --ttl=VALUE, so that a value starting with '-' is the flag's value and not another flag.
    const r = await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      `--ttl=${ttl}`,
      '--out-dir',
      out,
    );
    assert.doesNotThrow(
      () =>
        assertError(
          r,
          2,
          'KMTLS_PKI_TTL_INVALID',
          new RegExp(`not a duration: --ttl ${JSON.stringify(ttl).replace(/[.+]/g, '\\$&')}`),
        ),
      JSON.stringify(ttl),
    );
  }
  assert.equal(await exists(out), false);
});

test('without a CA, issue, inspect and rotate fail with NOT_INITIALIZED, tell to run init, and create nothing', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const commands = [
    [
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--out-dir',
      join(dir, 'out'),
    ],
    ['ca', 'inspect', '--state-dir', stateDir],
    ['ca', 'rotate', 'status', '--state-dir', stateDir],
    ['ca', 'rotate', 'begin', '--state-dir', stateDir],
  ];
  for (const argv of commands) {
    assertError(
      await kmtls(...argv),
      1,
      'KMTLS_STATE_NOT_INITIALIZED',
      new RegExp(`run kmtls ca init --state-dir ${stateDir}\\n$`),
    );
  }
  assert.equal(await exists(stateDir), false);
  assert.equal(await exists(join(dir, 'out')), false);
});

// ---------------------------------------------------------------------------------------------
// ca inspect

test('ca inspect FILE prints each certificate of a chain, exit 0 when nothing is wrong', async (t) => {
  const { dir, stateDir } = await initialized(t);
  const out = join(dir, 'out');
  assertOk(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--out-dir',
      out,
    ),
  );
  const file = join(out, 'cert-chain.pem');
  const r = await kmtls('ca', 'inspect', file);
  assertOk(r);
  const lines = r.stdout.split('\n');
  assert.equal(lines[0], `${file}:`);
  assert.equal(lines[1], '  [0] leaf spiffe://cluster.local/ns/a/sa/b');
  assert.equal(lines[2], '      subject:  (empty)');
  assert.match(lines[3] ?? '', /^ {6}issuer: {3}O=cluster\.local, CN=kmtls root CA /);
  assert.match(lines[5] ?? '', /^ {6}valid: {4}\S+ \.\. \S+ \(1d2m\); (1d|23h59m\d+s) left$/);
  assert.equal(lines[6], '      usage:    digitalSignature, keyEncipherment, serverAuth, clientAuth');
  assert.equal(lines[7], '  [1] root');
  assert.ok(!r.stdout.includes('WARNING'), r.stdout);
});

test('ca inspect FILE -o json: the file and one report per certificate', async (t) => {
  const { dir, stateDir } = await initialized(t);
  const out = join(dir, 'out');
  assertOk(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--out-dir',
      out,
    ),
  );
  const file = join(out, 'cert-chain.pem');
  const r = await kmtls('ca', 'inspect', file, '-o', 'json');
  assertOk(r);
  const o = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(o), ['file', 'certificates']);
  assert.equal(o.file, file);
  assert.deepEqual(
    o.certificates.map((c: { role: string; signedByNext: boolean }) => [c.role, c.signedByNext]),
    [
      ['leaf', true],
      ['root', true],
    ],
  );
  assert.deepEqual(Object.keys(o.certificates[0]), [
    'index',
    'role',
    'identities',
    'subject',
    'issuer',
    'serial',
    'notBefore',
    'notAfter',
    'lifetime',
    'timeLeftMs',
    'timeLeft',
    'keyUsage',
    'extKeyUsage',
    'signedByNext',
    'warnings',
  ]);
  assert.deepEqual(o.certificates[0].identities, ['spiffe://cluster.local/ns/a/sa/b']);
  assert.deepEqual(o.certificates[0].extKeyUsage, ['serverAuth', 'clientAuth']);
});

test('ca inspect FILE exits 1 and prints a WARNING line for an expired certificate', async (t) => {
  const dir = await tempDir(t);
  const key = ecKey();
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const name = encodeName({ organization: 'cluster.local', commonName: 'old root' });
  const expired = buildCertificate(
    {
      serial: randomBytes(8),
      issuerName: name,
      subjectName: name,
      notBefore: new Date(Date.now() - 10 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
      subjectPublicKeyInfo: spki,
      isCa: true,
      uris: [],
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: undefined,
    },
    key,
  );
  const file = join(dir, 'old.pem');
  await writeFile(file, toPem(expired));
  const r = await kmtls('ca', 'inspect', file);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /\n {6}WARNING: {2}expired 1d(\d+s)? ago\n/);
});

test('ca inspect of a file without a certificate, or with a broken one, is CORRUPT', async (t) => {
  const dir = await tempDir(t);
  const empty = join(dir, 'empty.pem');
  await writeFile(empty, 'nothing here\n');
  assertError(await kmtls('ca', 'inspect', empty), 1, 'KMTLS_STATE_CORRUPT', /no PEM certificate in/);
  const broken = join(dir, 'broken.pem');
  await writeFile(broken, '-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n');
  assertError(await kmtls('ca', 'inspect', broken), 1, 'KMTLS_STATE_CORRUPT', /unreadable certificate in/);
});

test('ca inspect --state-dir prints the signer chain, the trust bundle and the rotation state', async (t) => {
  const { stateDir, file } = await initialized(t);
  const r = await kmtls('ca', 'inspect', '--state-dir', stateDir);
  assertOk(r);
  const lines = r.stdout.split('\n');
  assert.equal(
    lines[0],
    `self-signed CA for trust domain cluster.local, Secret kmtls-system/kmtls-ca (${file})`,
  );
  assert.equal(lines[1], 'signer chain:');
  assert.equal(lines[2], '  [0] root');
  assert.ok(lines.includes('trust bundle:'), r.stdout);
  assert.ok(lines.includes('rotation: stable'), r.stdout);
  assert.ok(lines.includes('  next: kmtls ca rotate begin: add a new root to every trust bundle'), r.stdout);

  const json = await kmtls('ca', 'inspect', '--state-dir', stateDir, '-o', 'json');
  assertOk(json);
  const o = JSON.parse(json.stdout);
  assert.deepEqual(Object.keys(o), [
    'trustDomain',
    'mode',
    'secret',
    'file',
    'signer',
    'trustBundle',
    'rotation',
  ]);
  assert.equal(o.file, file);
  assert.equal(o.signer[0].serial, o.trustBundle[0].serial);
  assert.deepEqual(Object.keys(o.rotation), ['phase', 'signingRoot', 'trustBundle', 'next', 'retireAfter']);
  assert.equal(o.rotation.retireAfter, null);
});

test('ca inspect takes FILE or --state-dir, not both', async (t) => {
  const { stateDir } = await initialized(t);
  assertError(await kmtls('ca', 'inspect', 'x.pem', '--state-dir', stateDir), 2, 'KMTLS_CLI_USAGE');
  assertError(await kmtls('ca', 'inspect', 'a.pem', 'b.pem'), 2, 'KMTLS_CLI_USAGE');
});

// ---------------------------------------------------------------------------------------------
// ca rotate

interface RotationJson {
  step: string;
  phase: string;
  signingRoot: { serial: string; subject: string; notAfter: string };
  trustBundle: { serial: string }[];
  next: string;
  retireAfter: string | null;
}

async function rotate(stateDir: string, ...args: string[]): Promise<RotationJson> {
  const r = await kmtls('ca', 'rotate', ...args, '--state-dir', stateDir, '-o', 'json');
  assertOk(r);
  return JSON.parse(r.stdout) as RotationJson;
}

test('ca rotate: begin, abort, begin, switch, retire refused before its time, retire --force', async (t) => {
  const { dir, stateDir, file } = await initialized(t);
  const status = await rotate(stateDir, 'status');
  assert.deepEqual(Object.keys(status), [
    'step',
    'phase',
    'signingRoot',
    'trustBundle',
    'next',
    'retireAfter',
  ]);
  assert.equal(status.phase, 'stable');
  const oldRoot = status.signingRoot.serial;
  assert.deepEqual(
    status.trustBundle.map((r) => r.serial),
    [oldRoot],
  );

  const begun = await rotate(stateDir, 'begin');
  assert.equal(begun.step, 'begin');
  assert.equal(begun.phase, 'distributing');
  assert.equal(begun.signingRoot.serial, oldRoot, 'the old root keeps signing');
  assert.equal(begun.trustBundle.length, 2);

  const aborted = await rotate(stateDir, 'abort');
  assert.equal(aborted.phase, 'stable');
  assert.deepEqual(
    aborted.trustBundle.map((r) => r.serial),
    [oldRoot],
  );

  const again = await rotate(stateDir, 'begin');
  const newRoot = again.trustBundle.map((r) => r.serial).find((s) => s !== oldRoot);
  assert.ok(newRoot);
  const switched = await rotate(stateDir, 'switch');
  assert.equal(switched.phase, 'signing-with-new');
  assert.equal(switched.signingRoot.serial, newRoot);
  assert.deepEqual(
    switched.trustBundle.map((r) => r.serial),
    [newRoot, oldRoot],
  );
  assert.ok(switched.retireAfter, 'retireAfter is set');

  // New leaves come from the new root, and verify against the bundle.
  const out = join(dir, 'out');
  assertOk(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--out-dir',
      out,
    ),
  );
  const leaf = readCertificate(pemBlocks(await readFile(join(out, 'cert-chain.pem'), 'utf8'))[0]!);
  assert.equal(leaf.issuer, switched.signingRoot.subject);
  assert.equal(pemBlocks(await readFile(join(out, 'root-cert.pem'), 'utf8')).length, 2);
  const v = openssl(['verify', '-CAfile', join(out, 'root-cert.pem'), join(out, 'cert-chain.pem')]);
  assert.equal(v.status, 0, v.output);

  const before = await readFile(file);
  assertError(
    await kmtls('ca', 'rotate', 'retire', '--state-dir', stateDir),
    1,
    'KMTLS_PKI_ROTATION_STEP',
    new RegExp(`cannot retire the old root yet: leaves it signed may be valid until ${switched.retireAfter}`),
  );
  assert.deepEqual(await readFile(file), before, 'a refused step changes nothing');

  const retired = await rotate(stateDir, 'retire', '--force');
  assert.equal(retired.phase, 'stable');
  assert.equal(retired.signingRoot.serial, newRoot);
  assert.deepEqual(
    retired.trustBundle.map((r) => r.serial),
    [newRoot],
  );
  assert.equal((await rotate(stateDir, 'status')).phase, 'stable', 'the retirement was persisted');
});

test('ca rotate: a leaf issued with a long TTL makes retirement wait that long after the switch', async (t) => {
  const { dir, stateDir } = await initialized(t);
  assertOk(
    await kmtls(
      'ca',
      'issue',
      '--state-dir',
      stateDir,
      '--namespace',
      'a',
      '--service-account',
      'b',
      '--ttl',
      '30d',
      '--out-dir',
      join(dir, 'out'),
    ),
  );
  await rotate(stateDir, 'begin');
  const before = Date.now();
  const switched = await rotate(stateDir, 'switch');
  const after = Date.now();
  // The leaf lived 30d + the 2 min backdate; retirement adds the backdate again.
  const wait = 30 * DAY_MS + 4 * 60_000;
  const retireAfter = Date.parse(switched.retireAfter ?? '');
  assert.ok(retireAfter >= before + wait && retireAfter <= after + wait, switched.retireAfter ?? 'null');
});

test('ca rotate: each step from the wrong phase is refused, naming the phase; status text names the next step', async (t) => {
  const { stateDir } = await initialized(t);
  const cases: [string, RegExp][] = [
    [
      'switch',
      /cannot switch the signer: the rotation is in phase stable \(switch the signer needs distributing\)/,
    ],
    ['retire', /cannot retire the old root: the rotation is in phase stable/],
    ['abort', /cannot abort the rotation: the rotation is in phase stable/],
  ];
  for (const [step, message] of cases) {
    assertError(
      await kmtls('ca', 'rotate', step, '--state-dir', stateDir),
      1,
      'KMTLS_PKI_ROTATION_STEP',
      message,
    );
  }
  assertError(
    await kmtls('ca', 'rotate', 'spin', '--state-dir', stateDir),
    2,
    'KMTLS_CLI_USAGE',
    /unknown rotate step: "spin"/,
  );
  await rotate(stateDir, 'begin');
  assertError(
    await kmtls('ca', 'rotate', 'begin', '--state-dir', stateDir),
    1,
    'KMTLS_PKI_ROTATION_STEP',
    /phase distributing/,
  );
  const text = await kmtls('ca', 'rotate', 'status', '--state-dir', stateDir);
  assertOk(text);
  const lines = text.stdout.split('\n');
  assert.equal(lines[0], 'rotation: distributing');
  assert.equal(lines.filter((l) => l.startsWith('  trusted root: ')).length, 2);
  assert.ok(
    lines.includes('  next: once every workload has the new bundle: kmtls ca rotate switch (or abort)'),
  );
});

// ---------------------------------------------------------------------------------------------
// A corrupt state file

async function corruptions(t: TestContext): Promise<[string, string, string][]> {
  const out: [string, string, string][] = [];
  {
    const { dir, stateDir, file } = await initialized(t);
    const good = await readFile(file);
    await writeFile(file, good.subarray(0, good.length - 40));
    out.push(['a truncated file', dir, stateDir]);
  }
  {
    // A well-formed file whose Secret is damaged: the rotation phase is one kmtls does not know.
    const { dir, stateDir } = await initialized(t);
    const store = new FileSecretStore(stateDir);
    const ca = await loadCa(store);
    assert.ok(ca);
    const secret = caToSecret(ca, 'kmtls-system');
    await store.put({
      ...secret,
      annotations: { ...secret.annotations, 'kmtls.io/rotation-phase': 'halfway' },
    });
    out.push(['a damaged Secret', dir, stateDir]);
  }
  return out;
}

test('a corrupt state file makes every subcommand fail with STATE_CORRUPT and stays byte for byte as it was', async (t) => {
  for (const [what, dir, stateDir] of await corruptions(t)) {
    const file = caFileOf(stateDir);
    const before = await readFile(file);
    const out = join(dir, 'out');
    const commands = [
      ['ca', 'init', '--state-dir', stateDir],
      ['ca', 'init', '--state-dir', stateDir, '--trust-domain', 'example.org'],
      [
        'ca',
        'issue',
        '--state-dir',
        stateDir,
        '--namespace',
        'a',
        '--service-account',
        'b',
        '--out-dir',
        out,
      ],
      ['ca', 'inspect', '--state-dir', stateDir],
      ['ca', 'inspect', '--state-dir', stateDir, '-o', 'json'],
      ['ca', 'rotate', 'status', '--state-dir', stateDir],
      ['ca', 'rotate', 'begin', '--state-dir', stateDir],
      ['ca', 'rotate', 'switch', '--state-dir', stateDir],
      ['ca', 'rotate', 'retire', '--force', '--state-dir', stateDir],
      ['ca', 'rotate', 'abort', '--state-dir', stateDir],
    ];
    for (const argv of commands) {
      const r = await kmtls(...argv);
      assert.doesNotThrow(
        () => assertError(r, 1, 'KMTLS_STATE_CORRUPT', /restore it from a backup/),
        `${what}: kmtls ${argv.join(' ')}`,
      );
      assert.deepEqual(await readFile(file), before, `${what}: kmtls ${argv.join(' ')} changed the file`);
    }
    assert.equal(await exists(out), false, `${what}: ca issue wrote files`);
  }
});
