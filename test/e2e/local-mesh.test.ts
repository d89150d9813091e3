/**
 * `kmtls up` on the quickstart, end to end, as a user runs it: real processes (control plane,
 * sidecars, the example apps), real sockets on 127.40.x.y, real certificates. Waits are on
 * conditions (a port answering, a file appearing), never fixed sleeps.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { execFile, spawn } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'kmtls.js');
const SUBNET = '40';

function kmtls(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd: ROOT }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function eventually<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

/** Plaintext to a port: 'accepted' when something answers, 'refused' when closed or reset first. */
function plaintext(host: string, port: number, http: boolean): Promise<'accepted' | 'refused'> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (v: 'accepted' | 'refused') => {
      s.destroy();
      resolve(v);
    };
    s.once('connect', () =>
      s.write(http ? 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' : 'hi\n'),
    );
    s.once('data', () => done('accepted'));
    s.once('error', () => done('refused'));
    s.once('close', () => done('refused'));
  });
}

/** Every process below `pid`, from /proc. */
async function descendants(pid: number): Promise<number[]> {
  const parent = new Map<number, number>();
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = await readFile(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(Number(e), ppid);
    } catch {}
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [c, pp] of parent) {
      if (pp === p) {
        out.push(c);
        walk(c);
      }
    }
  };
  walk(pid);
  return out;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

interface Up {
  readonly child: ChildProcess;
  output(): string;
}

function startUp(dir: string, stateDir: string): Up {
  let out = '';
  const child = spawn(
    process.execPath,
    [BIN, 'up', dir, '--state-dir', stateDir, '--subnet', SUBNET, '--no-view'],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  return { child, output: () => out };
}

async function stopUp(up: Up): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => up.child.once('exit', (code) => resolve(code)));
  up.child.kill('SIGINT');
  return exited;
}

interface CheckJson {
  probes: {
    pod: string;
    port: number;
    probe: string;
    expected: string;
    observed: string;
    detail: string;
    ok: boolean;
  }[];
  flows: { ok: boolean; observed: string; predicted: string }[];
  mismatches: number;
}

test('kmtls up runs the quickstart as a mesh: check matrix, live edits, bad manifests, restarts, clean shutdown', {
  timeout: 240_000,
}, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'kmtls-up-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const dir = path.join(work, 'quickstart');
  const stateDir = path.join(work, 'state');
  await cp(path.join(ROOT, 'examples', 'quickstart'), dir, { recursive: true });
  let up = startUp(dir, stateDir);
  t.after(() => {
    if (up.child.exitCode === null) up.child.kill('SIGKILL');
  });
  await eventually(
    'the mesh to start',
    async () => (up.output().includes('mesh up:') ? true : undefined),
    60_000,
  );

  // The full matrix, once every sidecar is ready.
  const check = await eventually('check to pass', async () => {
    const r = await kmtls(['check', '--state-dir', stateDir, '-o', 'json']);
    return r.code === 0 ? (JSON.parse(r.stdout) as CheckJson) : undefined;
  });
  assert.equal(check.mismatches, 0);
  // 7 pod ports (ledger-0 5432, payments-0/1 8080 and 9090, web-0/1 8000) × 3 probes.
  assert.equal(check.probes.length, 21);
  const probe = (pod: string, port: number, kind: string) =>
    check.probes.find((p) => p.pod === pod && p.port === port && p.probe === kind)!;
  assert.equal(probe('finance/payments-0', 8080, 'plaintext').observed, 'refused');
  assert.match(
    probe('finance/payments-0', 8080, 'plaintext').detail,
    /PLAINTEXT_REJECTED \(finance\/payments-strict\)/,
  );
  assert.equal(probe('finance/payments-0', 9090, 'plaintext').observed, 'accepted');
  assert.equal(probe('finance/ledger-0', 5432, 'plaintext').observed, 'accepted');
  assert.equal(probe('finance/ledger-0', 5432, 'mtls').observed, 'accepted');
  assert.match(probe('frontend/web-1', 8000, 'foreign-ca').detail, /UNKNOWN_CA/);

  // Declared flows, tried through the source pods' own sidecars (or kube-proxy for legacy).
  const flowsFile = path.join(work, 'flows.txt');
  await writeFile(
    flowsFile,
    [
      'frontend/web -> finance/payments:8080 = mtls',
      'frontend/web -> finance/ledger:5432 = mtls',
      'legacy/reconcile -> finance/payments:8080 = refused',
      'legacy/reconcile -> finance/ledger:5432 = plaintext',
      'legacy/reconcile -> frontend/web:80 = plaintext   # wrong on purpose: frontend is STRICT',
    ].join('\n'),
  );
  const flows = await kmtls(['check', '--state-dir', stateDir, '--flows', flowsFile, '-o', 'json']);
  assert.equal(flows.code, 1, flows.stdout + flows.stderr);
  const fj = JSON.parse(flows.stdout) as CheckJson;
  assert.deepEqual(
    fj.flows.map((f) => [f.ok, f.observed]),
    [
      [true, 'mtls'],
      [true, 'mtls'],
      [true, 'refused'],
      [true, 'plaintext'],
      [false, 'refused'],
    ],
  );
  // The policy core agrees with the wire, including on the flow the file got wrong.
  assert.deepEqual(
    fj.flows.map((f) => f.predicted),
    ['mtls', 'mtls', 'refused', 'plaintext', 'refused'],
  );

  const status = async () =>
    JSON.parse((await kmtls(['status', '--state-dir', stateDir, '-o', 'json'])).stdout) as {
      controlPlane: { reachable: boolean; version: string; connectedProxies: number };
      controlPlaneProcess?: { state: string; restarts: number; lastExit?: string };
      lastChange?: { version: string; latencyMs?: number; pods: number; applied: number };
      errors: { file: string; servingLastGood: boolean }[];
      pods: {
        namespace: string;
        name: string;
        podIP: string;
        ports: { port: number; mode: string; plaintextCallers: Record<string, number> }[];
      }[];
    };
  const podIP = async (name: string) =>
    (await status()).pods.find((p) => `${p.namespace}/${p.name}` === name)!.podIP;
  const web0 = await podIP('frontend/web-0');
  const payments0 = await podIP('finance/payments-0');
  assert.equal(await plaintext(web0, 8000, true), 'refused');

  // A live edit: frontend goes PERMISSIVE; the wire follows, and status reports how long it took.
  const policies = path.join(dir, 'policies.yaml');
  const original = await readFile(policies, 'utf8');
  const frontendStrict = /(name: default\n\s+namespace: frontend\n[\s\S]*?mode: )STRICT/;
  assert.match(original, frontendStrict);
  const before = (await status()).controlPlane.version;
  // Saved the way many editors save: a new file renamed over the old one.
  await writeFile(`${policies}.swp`, original.replace(frontendStrict, '$1PERMISSIVE'));
  await rename(`${policies}.swp`, policies);
  await eventually('plaintext to web-0 to be accepted', async () =>
    (await plaintext(web0, 8000, true)) === 'accepted' ? true : undefined,
  );
  const changed = await eventually('status to report the change', async () => {
    const s = await status();
    return s.lastChange && s.lastChange.version !== before && s.lastChange.latencyMs !== undefined
      ? s
      : undefined;
  });
  assert.equal(changed.lastChange!.applied, changed.lastChange!.pods);
  assert.equal(changed.pods.find((p) => p.name === 'web-0')!.ports[0]!.mode, 'PERMISSIVE');

  // A broken edit: reported, and the last good version of the file keeps serving.
  await writeFile(policies, original.replace(frontendStrict, '$1STRIKT'));
  const broken = await eventually('status to report the bad file', async () => {
    const s = await status();
    return s.errors.length > 0 ? s : undefined;
  });
  assert.equal(broken.errors[0]!.file, policies);
  assert.equal(broken.errors[0]!.servingLastGood, true);
  assert.equal(
    await plaintext(web0, 8000, true),
    'accepted',
    'the last good policy (PERMISSIVE) still serves',
  );
  assert.equal(await plaintext(payments0, 8080, true), 'refused', 'payments stays STRICT');
  await writeFile(policies, original);
  await eventually('STRICT to be enforced again', async () =>
    (await plaintext(web0, 8000, true)) === 'refused' && (await status()).errors.length === 0
      ? true
      : undefined,
  );

  // The control plane dies: sidecars keep serving; it comes back with the same CA and they reconnect.
  const root = await readFile(path.join(stateDir, 'root-cert.pem'), 'utf8');
  let cpPid: number | undefined;
  for (const pid of await descendants(up.child.pid!)) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.split('\0').includes('controlplane')) cpPid = pid;
  }
  assert.ok(cpPid, 'the control plane process is found');
  process.kill(cpPid, 'SIGKILL');
  assert.equal(
    await plaintext(payments0, 8080, true),
    'refused',
    'STRICT is enforced without the control plane',
  );
  const recovered = await eventually(
    'the control plane to come back and every sidecar to reconnect',
    async () => {
      const s = await status();
      return s.controlPlane.reachable && s.controlPlane.connectedProxies === 5 ? s : undefined;
    },
    60_000,
  );
  assert.equal(recovered.controlPlaneProcess?.restarts, 1, 'status shows the restart');
  assert.equal(recovered.controlPlaneProcess?.lastExit, 'signal SIGKILL');
  assert.equal(await readFile(path.join(stateDir, 'root-cert.pem'), 'utf8'), root, 'the CA survived');
  const again = await kmtls(['check', '--state-dir', stateDir]);
  assert.equal(again.code, 0, again.stdout);

  // Ctrl-C: every process it started ends.
  const started = await descendants(up.child.pid!);
  assert.ok(started.length >= 12, `control plane, 5 sidecars, 6 apps: ${started.length}`);
  assert.equal(await stopUp(up), 0);
  assert.deepEqual(started.filter(alive), [], 'no process left behind');

  // A second run keeps the CA.
  up = startUp(dir, stateDir);
  await eventually(
    'the mesh to start again',
    async () => (up.output().includes('mesh up:') ? true : undefined),
    60_000,
  );
  assert.equal(
    await readFile(path.join(stateDir, 'root-cert.pem'), 'utf8'),
    root,
    'the CA survived a restart',
  );
  await eventually('check to pass again', async () =>
    (await kmtls(['check', '--state-dir', stateDir])).code === 0 ? true : undefined,
  );
  // Another mesh on the same subnet (its own state dir) is refused, naming --subnet, and the first
  // one is untouched.
  const clash = await kmtls([
    'up',
    dir,
    '--state-dir',
    path.join(work, 'state2'),
    '--subnet',
    SUBNET,
    '--no-view',
  ]);
  assert.notEqual(clash.code, 0);
  assert.match(clash.stdout + clash.stderr, /KMTLS_LOCAL_START/);
  assert.match(clash.stdout + clash.stderr, /--subnet 40/);
  assert.equal((await kmtls(['check', '--state-dir', stateDir])).code, 0, 'the first mesh still serves');

  const second = await descendants(up.child.pid!);
  assert.equal(await stopUp(up), 0);
  assert.deepEqual(second.filter(alive), []);
});
