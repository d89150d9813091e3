/**
 * The control plane part of `npm run bench`: how long a policy change takes to be enforced by 1, 10
 * and 100 sidecars, and how much memory the control plane holds per connected proxy.
 *
 * The control plane is the real one, `node bin/kmtls.js controlplane` in a child process, over a
 * temporary directory of manifests (watched: the measured path includes fs.watch, the debounce, YAML
 * parsing and the snapshot rebuild), a placement file and a bootstrap-token file as `kmtls up` writes
 * them. The sidecars are the real ones too — a `ControlPlaneClient` (bootstrap certificate with a
 * token, then the config stream, an acknowledgement per version) driving a `Sidecar` that opens its
 * listeners on its pod's own loopback IP (127.200.x.y and up) — but all of them run inside this one
 * Node process, where `kmtls up` gives each its own.
 *
 * Latency: one mesh of three namespaces holding 1, 10 and 100 pods, each namespace with its own
 * namespace-wide PeerAuthentication. A change rewrites one of those files (STRICT ↔ PERMISSIVE) at
 * t0; the bench then probes every pod of that namespace on the wire with a plaintext connection
 * (refused under STRICT, forwarded under PERMISSIVE) until all enforce the new mode, and reads the
 * control plane's own figure (`/status` → `lastChange.latencyMs`: from noticing the change to the last
 * affected sidecar's acknowledgement). Changes to the three namespaces alternate, so a slow moment of
 * the shared machine hurts every size alike.
 *
 * The policy file is replaced the way editors save: a new file renamed over the old one (the path a
 * recursive fs.watch on Node 20 / Linux loses; DirectorySource watches each directory instead).
 *
 * Memory: a fresh control plane per repetition, VmRSS read from /proc with 0, 10 and 100 placed and
 * connected proxies, then with a Service in front of the 100, and the V8 heap after a full GC (a
 * preload, only in the bench, answers SIGUSR2). For reference, the same steps for a bare Node https
 * server holding that many idle mTLS streams.
 *
 * Nothing here fails on a time. It fails when a change does not reach every sidecar, when the control
 * plane counts a different number of affected pods than the namespace holds, or when a process dies.
 */
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import type { WriteStream } from 'node:fs';
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { parseSpiffeId } from '../src/identity/index.js';
import type { PlacedPodSpec, Placement, ProxyConfig } from '../src/mesh/index.js';
import { controlPlaneIdentity, proxyConfigSchema } from '../src/mesh/index.js';
import { CertificateAuthority, createRoot, initialCaState, materialOf } from '../src/pki/index.js';
import { ControlPlaneClient, NO_OBSERVER, Sidecar } from '../src/proxy/index.js';
import type { Started } from './proxy/processes.js';
import {
  assertRunning,
  cpuSeconds,
  machineBusySeconds,
  ownTreeSeconds,
  rssBytes,
  startProcess,
  stopProcess,
  tail,
} from './proxy/processes.js';

const TRUST_DOMAIN = 'cluster.local';
const APP_PORT = 8080;
type Mode = 'STRICT' | 'PERMISSIVE';

export interface ControlPlanePlan {
  readonly latency: {
    /** Pods per namespace: one namespace per size, all in one mesh. */
    readonly sizes: readonly number[];
    /** Untimed changes per size first (JIT, first pushes). */
    readonly warmup: number;
    /** Timed changes per size. */
    readonly repetitions: number;
    /** Quiet time after a change is fully acknowledged, before the next one. */
    readonly pauseMs: number;
    /** Plaintext probes in flight at once while waiting for a change on the wire (0: no wire check). */
    readonly probeConcurrency: number;
    /** A change not enforced everywhere within this is a failure. */
    readonly timeoutMs: number;
  };
  readonly memory: {
    /** A fresh control plane each. */
    readonly repetitions: number;
    /** Connected proxies at each step, ascending, the first being 0. */
    readonly steps: readonly number[];
    /** Wait after the last proxy applied its config, before reading memory. */
    readonly settleMs: number;
    /** VmRSS readings per step (their median is kept). */
    readonly rssSamples: number;
    /** Then a Service in front of all the pods of the last step, each proxy's config listing all of them. */
    readonly withService: boolean;
  };
  /** Sidecars started at once while bringing a mesh up. */
  readonly startConcurrency: number;
}

/** One timed change, every time relative to t0 = just before the policy file was replaced. */
export interface ChangeResult {
  readonly size: number;
  readonly to: Mode;
  /** The last pod seen enforcing the new mode on the wire. */
  readonly wireMs: number;
  /** The first pod seen enforcing it. */
  readonly firstWireMs: number;
  /** The last / first sidecar's `applyConfig` done, in this process. */
  readonly appliedMs: number;
  readonly firstAppliedMs: number;
  /** `lastChange.noticedAtMs` − t0 (both wall clocks of this machine; ms resolution). */
  readonly noticedMs: number;
  /** The control plane's own figure: `lastChange.latencyMs` (noticed → last acknowledgement). */
  readonly cpLatencyMs: number;
  /** CPU the control plane process used from t0 to its last acknowledgement being read back. */
  readonly cpCpuMs: number;
  /** CPU this process (the sidecars, the probes, the application) used over the same time. */
  readonly benchCpuMs: number;
  /** Plaintext probes sent to see it on the wire, and their mean round trip. */
  readonly probes: number;
  readonly probeMs: number;
}

export interface MemoryReading {
  readonly proxies: number;
  /** The step after a Service was put in front of all the pods. */
  readonly withService?: true;
  /** VmRSS from /proc, as the process runs (median of a few readings). */
  readonly rssBytes: number;
  /** After a full GC in the control plane (`global.gc()` twice), from `process.memoryUsage()`. */
  readonly rssAfterGcBytes: number;
  readonly heapUsedBytes: number;
  readonly externalBytes: number;
}

export interface ControlPlaneBenchResult {
  readonly plan: ControlPlanePlan;
  readonly latency: {
    readonly meshPods: number;
    readonly changes: readonly ChangeResult[];
    /** Bringing all sidecars of the latency mesh up: bootstrap certificate, stream, first config. */
    readonly startupMs: number;
    /** A plaintext probe's round trip to an idle sidecar (median), the wire check's resolution. */
    readonly idleProbeMs: number;
  };
  readonly memory: readonly (readonly MemoryReading[])[];
  /** The same steps for a bare Node https server holding that many idle mTLS streams (`proxies` = connections). */
  readonly reference: readonly (readonly MemoryReading[])[];
  /** Parts run again because the control plane process was stopped from outside the bench. */
  readonly interruptions: readonly string[];
  readonly totalSeconds: number;
  /** CPU seconds the machine was busy, and how much of it was this bench and its children. */
  readonly machineBusySeconds: number;
  readonly ownSeconds: number;
}

// ---------------------------------------------------------------------------------------------------
// A mesh on disk: manifests, placement, tokens.

interface NamespacePlan {
  readonly name: string;
  readonly replicas: number;
  readonly mode: Mode;
  /** A Service in front of the pods: from the start, added later (the placement already says where each sidecar would take its calls), or none. */
  readonly service: 'now' | 'later' | 'none';
}

interface BenchPod {
  readonly spec: PlacedPodSpec;
  readonly key: string;
  readonly token: string;
  readonly identity: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function ipAt(a: number, index: number): string {
  return `127.${a}.${1 + Math.floor(index / 250)}.${1 + (index % 250)}`;
}

function namespaceManifest(ns: NamespacePlan): string {
  return `apiVersion: v1
kind: Namespace
metadata:
  name: ${ns.name}
  labels:
    kmtls.io/injection: enabled
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: app
  namespace: ${ns.name}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  namespace: ${ns.name}
spec:
  replicas: ${ns.replicas}
  selector:
    matchLabels:
      app: app
  template:
    metadata:
      labels:
        app: app
    spec:
      serviceAccountName: app
      containers:
        - name: app
          image: example/app:1.0
          ports:
            - name: tcp
              containerPort: ${APP_PORT}
`;
}

function serviceManifest(ns: string): string {
  return `apiVersion: v1
kind: Service
metadata:
  name: app
  namespace: ${ns}
spec:
  selector:
    app: app
  ports:
    - name: tcp
      port: ${APP_PORT}
      targetPort: ${APP_PORT}
`;
}

function policyManifest(ns: string, mode: Mode): string {
  return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: ${ns}
spec:
  mtls:
    mode: ${mode}
`;
}

/** Replaces a file as an editor or a deploy tool does: a dot-file beside it (never read as a manifest), then a rename. */
function replaceFile(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

class BenchMesh {
  readonly manifests: string;
  readonly stateDir: string;
  readonly placementFile: string;
  readonly tokensFile: string;
  readonly logs: string;
  readonly memoryFile: string;
  readonly pods: BenchPod[] = [];
  readonly podsByNamespace = new Map<string, BenchPod[]>();
  readonly api: { host: string; port: number };
  readonly admin: { host: string; port: number };

  constructor(
    readonly root: string,
    /** 127.A.x.y for pods, 127.(A+1).x.y for their outbound listeners, 127.(A+2).0.1 for the control plane. */
    readonly subnet: number,
    readonly namespaces: readonly NamespacePlan[],
    appAddress: string,
  ) {
    this.manifests = path.join(root, 'manifests');
    this.stateDir = path.join(root, 'state');
    this.logs = path.join(root, 'logs');
    this.placementFile = path.join(root, 'placement.json');
    this.tokensFile = path.join(root, 'tokens.json');
    this.memoryFile = path.join(this.logs, 'memory.json');
    for (const d of [this.manifests, this.stateDir, this.logs]) mkdirSync(d, { recursive: true });
    this.api = { host: `127.${subnet + 2}.0.1`, port: 15012 };
    this.admin = { host: `127.${subnet + 2}.0.1`, port: 15014 };

    // As `kmtls up` lays a mesh out: every sidecar gets an outbound listener for every Service port.
    const services = namespaces.filter((n) => n.service !== 'none');
    let index = 0;
    const digests: Record<string, string> = {};
    for (const ns of namespaces) {
      writeFileSync(path.join(this.manifests, `${ns.name}.yaml`), namespaceManifest(ns));
      if (ns.service === 'now') this.addService(ns.name);
      writeFileSync(this.policyFile(ns.name), policyManifest(ns.name, ns.mode));
      const list: BenchPod[] = [];
      for (let r = 0; r < ns.replicas; r++, index++) {
        const spec: PlacedPodSpec = {
          namespace: ns.name,
          name: `app-${r}`,
          podIP: ipAt(subnet, index),
          sidecar: true,
          apps: { [String(APP_PORT)]: appAddress },
          outbound: Object.fromEntries(
            services.map((s, i) => [
              `app.${s.name}.svc.cluster.local:${APP_PORT}`,
              `${ipAt(subnet + 1, index)}:${20000 + i}`,
            ]),
          ),
        };
        const token = randomBytes(32).toString('base64url');
        const identity = `spiffe://${TRUST_DOMAIN}/ns/${ns.name}/sa/app`;
        digests[createHash('sha256').update(token, 'utf8').digest('hex')] = identity;
        const pod = { spec, key: `${ns.name}/${spec.name}`, token, identity };
        list.push(pod);
        this.pods.push(pod);
      }
      this.podsByNamespace.set(ns.name, list);
    }
    writeFileSync(this.tokensFile, JSON.stringify({ tokens: digests }, null, 2), { mode: 0o600 });
    this.place([]);
  }

  addService(ns: string): void {
    writeFileSync(path.join(this.manifests, `${ns}-service.yaml`), serviceManifest(ns));
  }

  policyFile(ns: string): string {
    return path.join(this.manifests, `${ns}-policy.yaml`);
  }

  place(pods: readonly BenchPod[]): void {
    const placement: Placement = { pods: pods.map((p) => p.spec) };
    replaceFile(this.placementFile, `${JSON.stringify(placement, null, 2)}\n`);
  }
}

// ---------------------------------------------------------------------------------------------------
// The control plane process.

/**
 * Loaded into the control plane process by the bench only: on SIGUSR2, a full GC, then
 * `process.memoryUsage()` written to the file named by KMTLS_BENCH_MEMORY_FILE.
 */
const MEMORY_PRELOAD = `data:text/javascript,${encodeURIComponent(
  [
    "import { renameSync, writeFileSync } from 'node:fs';",
    "process.on('SIGUSR2', () => {",
    '  globalThis.gc(); globalThis.gc();',
    '  const file = process.env.KMTLS_BENCH_MEMORY_FILE;',
    "  writeFileSync(file + '.tmp', JSON.stringify(process.memoryUsage()));",
    "  renameSync(file + '.tmp', file);",
    '});',
  ].join('\n'),
)}`;

interface ControlPlaneProcess {
  readonly proc: Started;
  readonly rootsPem: string;
  /** Set by the bench before it stops the process; an exit without it came from outside. */
  stopping: boolean;
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

/** The control plane process ended without the bench stopping it (e.g. another job's `pkill`). */
class ControlPlaneStopped extends Error {}

async function stopControlPlane(cp: ControlPlaneProcess): Promise<void> {
  cp.stopping = true;
  await stopProcess(cp.proc);
}

/** Turns any failure that follows an outside stop of the control plane into a ControlPlaneStopped. */
function explainFailure(cp: ControlPlaneProcess, err: unknown): unknown {
  if (cp.stopping || cp.exit === undefined) return err;
  const how = cp.exit.signal ?? `exit code ${cp.exit.code}`;
  const byHand = /control plane stopped/.test(tail(cp.proc.logFile, 1))
    ? ' after logging "control plane stopped", i.e. it was sent SIGTERM or SIGINT from outside the bench'
    : '';
  return new ControlPlaneStopped(
    `the control plane process ended (${how})${byHand}: ${(err as Error).message}`,
  );
}

function httpJson(address: { host: string; port: number }, pathname: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: address.host, port: address.port, path: pathname, agent: false, timeout: 5_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200)
            return reject(new Error(`GET ${pathname}: ${res.statusCode} ${text.slice(0, 200)}`));
          try {
            resolve(JSON.parse(text) as unknown);
          } catch (err) {
            reject(err as Error);
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`GET ${pathname}: timed out`)));
    req.on('error', reject);
  });
}

interface CpStatus {
  version: string;
  connectedProxies: number;
  lastChange?: { version: string; noticedAtMs: number; pods: number; applied: number; latencyMs?: number };
  pods: {
    namespace: string;
    name: string;
    connected: boolean;
    configVersion?: string;
    appliedVersion?: string;
  }[];
  errors: { file: string; problems: string[] }[];
}

const cpStatus = (mesh: BenchMesh) => httpJson(mesh.admin, '/status') as Promise<CpStatus>;

async function startControlPlane(mesh: BenchMesh, repoRoot: string): Promise<ControlPlaneProcess> {
  const proc = startProcess(
    'kmtls controlplane',
    process.execPath,
    [
      '--expose-gc',
      '--import',
      MEMORY_PRELOAD,
      path.join(repoRoot, 'bin', 'kmtls.js'),
      'controlplane',
      '--dir',
      mesh.manifests,
      '--state-dir',
      mesh.stateDir,
      '--placement',
      mesh.placementFile,
      '--tokens',
      mesh.tokensFile,
      '--listen',
      `${mesh.api.host}:${mesh.api.port}`,
      '--admin',
      `${mesh.admin.host}:${mesh.admin.port}`,
      '--log-level',
      'info',
    ],
    path.join(mesh.logs, 'controlplane.log'),
    { ...process.env, KMTLS_BENCH_MEMORY_FILE: mesh.memoryFile },
  );
  const cp: ControlPlaneProcess = { proc, rootsPem: '', stopping: false, exit: undefined };
  proc.child.once('exit', (code, signal) => {
    cp.exit = { code, signal };
  });
  const deadline = Date.now() + 15_000;
  for (;;) {
    assertRunning(proc);
    try {
      const s = await cpStatus(mesh);
      if (s.errors.length > 0)
        throw new Error(`the bench's manifests were refused: ${JSON.stringify(s.errors)}`);
      break;
    } catch (err) {
      if ((err as Error).message.startsWith('the bench')) throw err;
      if (Date.now() > deadline) throw new Error(`the control plane did not come up: ${tail(proc.logFile)}`);
      await sleep(50);
    }
  }
  return Object.assign(cp, { rootsPem: readFileSync(path.join(mesh.stateDir, 'root-cert.pem'), 'utf8') });
}

// ---------------------------------------------------------------------------------------------------
// Sidecars, in this process.

class BenchSidecar {
  readonly sidecar: Sidecar;
  readonly client: ControlPlaneClient;
  /** The inbound mode of the last applied config, and when it took that value (performance.now()). */
  mode: Mode | undefined;
  modeSince = 0;
  version: string | undefined;
  private resolveFirst: (() => void) | undefined;
  readonly firstApplied: Promise<void>;
  readonly host: string;

  constructor(
    readonly pod: BenchPod,
    cp: ControlPlaneProcess,
    mesh: BenchMesh,
    log: pino.Logger,
  ) {
    const [namespace, name] = pod.key.split('/') as [string, string];
    this.host = pod.spec.podIP;
    this.firstApplied = new Promise((resolve) => {
      this.resolveFirst = resolve;
    });
    const placeholder = proxyConfigSchema.parse({
      version: '0',
      workload: { namespace, name, identity: `spiffe://${TRUST_DOMAIN}/ns/${namespace}/sa/unknown` },
      trustDomains: [TRUST_DOMAIN],
    });
    const clock = { now: Date.now };
    this.sidecar = new Sidecar(placeholder, { clock, observer: NO_OBSERVER, configured: false });
    this.client = new ControlPlaneClient({
      address: mesh.api,
      pod: pod.key,
      token: async () => pod.token,
      rootsPem: cp.rootsPem,
      controlPlaneIdentity: controlPlaneIdentity(TRUST_DOMAIN),
      clock,
      log,
      applyConfig: async (config: ProxyConfig) => {
        await this.sidecar.applyConfig(config);
        const mode = config.inbound[0]?.mode;
        if (mode !== 'STRICT' && mode !== 'PERMISSIVE')
          throw new Error(`BUG: pod ${pod.key} got inbound mode ${mode}`);
        if (mode !== this.mode) {
          this.mode = mode;
          this.modeSince = performance.now();
        }
        this.version = config.version;
        this.resolveFirst?.();
        this.resolveFirst = undefined;
      },
      setIdentity: (identity) => this.sidecar.setIdentity(identity),
    });
  }

  start(): void {
    void this.client.start();
  }

  async stop(): Promise<void> {
    this.client.stop();
    await this.sidecar.stop();
  }
}

async function startSidecars(
  pods: readonly BenchPod[],
  cp: ControlPlaneProcess,
  mesh: BenchMesh,
  log: pino.Logger,
  concurrency: number,
): Promise<BenchSidecar[]> {
  const out: BenchSidecar[] = [];
  for (let i = 0; i < pods.length; i += concurrency) {
    const batch = pods.slice(i, i + concurrency).map((p) => new BenchSidecar(p, cp, mesh, log));
    for (const s of batch) s.start();
    out.push(...batch);
    const done = Promise.all(batch.map((s) => s.firstApplied));
    const timeout = sleep(30_000).then(() => 'timeout' as const);
    if ((await Promise.race([done, timeout])) === 'timeout') {
      throw new Error(
        `sidecars did not get their first config in 30 s: ${batch
          .filter((s) => s.version === undefined)
          .map((s) => s.pod.key)
          .join(', ')}`,
      );
    }
    assertRunning(cp.proc);
  }
  return out;
}

/** Until the control plane sees these pods connected with their current version applied (and nothing else connected). */
async function waitAcknowledged(
  mesh: BenchMesh,
  pods: readonly BenchPod[],
  timeoutMs = 30_000,
): Promise<CpStatus> {
  const want = new Set(pods.map((p) => p.key));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await cpStatus(mesh);
    const ours = s.pods.filter((p) => want.has(`${p.namespace}/${p.name}`));
    const settled =
      ours.length === want.size &&
      ours.every(
        (p) => p.connected && p.configVersion !== undefined && p.appliedVersion === p.configVersion,
      ) &&
      s.connectedProxies === want.size;
    if (settled) return s;
    if (Date.now() > deadline) {
      throw new Error(
        `the control plane does not see ${want.size} proxies connected and up to date (connected ${s.connectedProxies}, ` +
          `acknowledged ${ours.filter((p) => p.appliedVersion === p.configVersion).length})`,
      );
    }
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------------
// The wire.

/** A TCP server standing for every pod's application: says "ok" to whoever connects. */
async function startApp(): Promise<{ server: net.Server; address: string }> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.end('ok\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const a = server.address() as net.AddressInfo;
  return { server, address: `127.0.0.1:${a.port}` };
}

type ProbeResult = 'accepted' | 'refused' | 'unreachable' | 'timeout';

/**
 * A plaintext connection to a pod's port that sends a line at once: the application's "ok" comes back
 * under PERMISSIVE; under STRICT the sidecar closes the connection on the first byte that is not a
 * TLS ClientHello.
 */
function probe(host: string, port: number, timeoutMs = 2_000): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let connected = false;
    let done = false;
    const s = net.connect({ host, port });
    const finish = (r: ProbeResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    s.on('connect', () => {
      connected = true;
      s.write('ping\n');
    });
    s.on('data', () => finish('accepted'));
    s.on('close', () => finish(connected ? 'refused' : 'unreachable'));
    s.on('error', () => {});
  });
}

const expected = (mode: Mode): ProbeResult => (mode === 'STRICT' ? 'refused' : 'accepted');

/**
 * Probes the pods round-robin, `concurrency` at a time, until each has answered as `mode` enforces;
 * returns when each was first seen so (ms after t0) and how many probes it took.
 */
async function waitOnWire(
  sidecars: readonly BenchSidecar[],
  mode: Mode,
  t0: number,
  concurrency: number,
  timeoutMs: number,
): Promise<{ seenMs: number[]; probes: number; probeMs: number }> {
  const want = expected(mode);
  const seen: (number | undefined)[] = sidecars.map(() => undefined);
  let probes = 0;
  let probeMs = 0;
  let next = 0;
  const pendingIndex = (): number | undefined => {
    for (let k = 0; k < sidecars.length; k++) {
      const i = (next + k) % sidecars.length;
      if (seen[i] === undefined) {
        next = (i + 1) % sidecars.length;
        return i;
      }
    }
    return undefined;
  };
  const worker = async () => {
    for (;;) {
      if (performance.now() - t0 > timeoutMs) return;
      // With fewer pods left than workers, two workers may probe the same pod: harmless.
      const i = pendingIndex();
      if (i === undefined) return;
      const started = performance.now();
      const r = await probe(sidecars[i]!.host, APP_PORT);
      probeMs += performance.now() - started;
      probes++;
      if (r === want && seen[i] === undefined) seen[i] = performance.now() - t0;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, sidecars.length) }, worker));
  const missing = sidecars.filter((_, i) => seen[i] === undefined);
  if (missing.length > 0) {
    throw new Error(
      `${missing.length} of ${sidecars.length} sidecars did not enforce ${mode} on the wire within ${timeoutMs} ms ` +
        `(e.g. ${missing[0]!.pod.key}, whose last applied mode is ${missing[0]!.mode})`,
    );
  }
  return { seenMs: seen as number[], probes, probeMs: probeMs / probes };
}

// ---------------------------------------------------------------------------------------------------
// Latency.

async function changeOnce(
  mesh: BenchMesh,
  cp: ControlPlaneProcess,
  ns: NamespacePlan & { current: Mode },
  sidecars: readonly BenchSidecar[],
  plan: ControlPlanePlan['latency'],
): Promise<ChangeResult> {
  const before = await cpStatus(mesh);
  const to: Mode = ns.current === 'STRICT' ? 'PERMISSIVE' : 'STRICT';
  const cpu0 = cpuSeconds(cp.proc.pid);
  const benchCpu0 = process.cpuUsage();
  const t0Epoch = Date.now();
  const t0 = performance.now();
  // In place, not by rename: see the note on DirectorySource in the report.
  replaceFile(mesh.policyFile(ns.name), policyManifest(ns.name, to));
  ns.current = to;
  const wire =
    plan.probeConcurrency > 0
      ? await waitOnWire(sidecars, to, t0, plan.probeConcurrency, plan.timeoutMs)
      : { seenMs: [Number.NaN], probes: 0, probeMs: Number.NaN };
  let status: CpStatus;
  for (;;) {
    status = await cpStatus(mesh);
    const c = status.lastChange;
    if (c && Number(c.version) > Number(before.version) && c.latencyMs !== undefined) break;
    if (performance.now() - t0 > plan.timeoutMs) {
      throw new Error(
        `the control plane did not see every acknowledgement of the change to ${ns.name} (${JSON.stringify(c)})`,
      );
    }
    // The figure is the control plane's own: polling only needs to find it, and less often costs it less CPU.
    await sleep(25);
  }
  const cpuMs = (cpuSeconds(cp.proc.pid) - cpu0) * 1000;
  const benchCpu = process.cpuUsage(benchCpu0);
  const change = status.lastChange!;
  if (change.pods !== sidecars.length) {
    throw new Error(
      `changing ${ns.name}'s policy changed the config of ${change.pods} pods, not its ${sidecars.length}`,
    );
  }
  const applied = sidecars.map((s) => {
    if (s.mode !== to)
      throw new Error(`BUG: ${s.pod.key} is seen ${to} on the wire but its last applied mode is ${s.mode}`);
    return s.modeSince - t0;
  });
  return {
    size: sidecars.length,
    to,
    wireMs: Math.max(...wire.seenMs),
    firstWireMs: Math.min(...wire.seenMs),
    appliedMs: Math.max(...applied),
    firstAppliedMs: Math.min(...applied),
    noticedMs: change.noticedAtMs - t0Epoch,
    cpLatencyMs: change.latencyMs!,
    cpCpuMs: cpuMs,
    benchCpuMs: (benchCpu.user + benchCpu.system) / 1000,
    probes: wire.probes,
    probeMs: wire.probeMs,
  };
}

/** Median round trip of a plaintext probe to an idle sidecar (it is not being changed). */
async function idleProbeMs(s: BenchSidecar, runs = 50): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await probe(s.host, APP_PORT);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1]!;
}

async function runLatency(
  plan: ControlPlanePlan,
  repoRoot: string,
  appAddress: string,
  work: string,
  sidecarLog: pino.Logger,
  log: (line: string) => void,
): Promise<ControlPlaneBenchResult['latency']> {
  const namespaces = plan.latency.sizes.map((n) => ({
    name: `lat-${n}`,
    replicas: n,
    mode: 'STRICT' as Mode,
    service: 'now' as const,
  }));
  const mesh = new BenchMesh(work, 200, namespaces, appAddress);
  mesh.place(mesh.pods);
  const cp = await startControlPlane(mesh, repoRoot);
  let sidecars: BenchSidecar[] = [];
  try {
    const t = performance.now();
    sidecars = await startSidecars(mesh.pods, cp, mesh, sidecarLog, plan.startConcurrency);
    await waitAcknowledged(mesh, mesh.pods);
    const startupMs = performance.now() - t;
    log(
      `  latency mesh: ${mesh.pods.length} sidecars up and acknowledged in ${(startupMs / 1000).toFixed(1)} s`,
    );
    const byNs = new Map(
      namespaces.map((n) => [n.name, sidecars.filter((s) => s.pod.spec.namespace === n.name)]),
    );
    for (const [name, list] of byNs) {
      for (const s of list) {
        const r = await probe(s.host, APP_PORT);
        if (r !== 'refused') throw new Error(`${s.pod.key} should refuse plaintext under STRICT, got ${r}`);
      }
      log(`  ${name}: ${list.length} sidecars refuse plaintext (STRICT)`);
    }
    const idle = await idleProbeMs(sidecars[0]!);
    const state = namespaces.map((n) => ({ ...n, current: 'STRICT' as Mode }));
    const changes: ChangeResult[] = [];
    const rounds = plan.latency.warmup + plan.latency.repetitions;
    for (let round = 0; round < rounds; round++) {
      // Rotate the order so that no size always follows the same one.
      const order = state.map((_, k) => state[(k + round) % state.length]!);
      for (const ns of order) {
        const r = await changeOnce(mesh, cp, ns, byNs.get(ns.name)!, plan.latency);
        const timed = round >= plan.latency.warmup;
        if (timed) changes.push(r);
        log(
          `  ${timed ? 'change' : 'warm-up'} ${ns.name} → ${r.to}: wire ${r.wireMs.toFixed(1)} ms, applied ${r.appliedMs.toFixed(1)} ms, ` +
            `noticed ${r.noticedMs} ms, control plane latencyMs ${r.cpLatencyMs} (CPU ${r.cpCpuMs.toFixed(0)} ms), ${r.probes} probes`,
        );
        await sleep(plan.latency.pauseMs);
      }
    }
    return { meshPods: mesh.pods.length, changes, startupMs, idleProbeMs: idle };
  } catch (err) {
    throw explainFailure(cp, err);
  } finally {
    await Promise.all(sidecars.map((s) => s.stop()));
    await stopControlPlane(cp);
  }
}

// ---------------------------------------------------------------------------------------------------
// Memory.

/** VmRSS as the process runs, then its own figures after a full GC (the preload answers SIGUSR2). */
async function readMemory(
  proc: Started,
  memoryFile: string,
  proxies: number,
  plan: ControlPlanePlan['memory'],
): Promise<MemoryReading> {
  await sleep(plan.settleMs);
  const rss: number[] = [];
  for (let i = 0; i < plan.rssSamples; i++) {
    if (i > 0) await sleep(100);
    rss.push(rssBytes(proc.pid));
  }
  rss.sort((a, b) => a - b);
  rmSync(memoryFile, { force: true });
  process.kill(proc.pid, 'SIGUSR2');
  const deadline = Date.now() + 10_000;
  while (!existsSync(memoryFile)) {
    assertRunning(proc);
    if (Date.now() > deadline) throw new Error(`${proc.name} did not report its memory after SIGUSR2`);
    await sleep(20);
  }
  const m = JSON.parse(readFileSync(memoryFile, 'utf8')) as NodeJS.MemoryUsage;
  return {
    proxies,
    rssBytes: rss[rss.length >> 1]!,
    rssAfterGcBytes: m.rss,
    heapUsedBytes: m.heapUsed,
    externalBytes: m.external,
  };
}

async function runMemoryOnce(
  plan: ControlPlanePlan,
  repoRoot: string,
  appAddress: string,
  root: string,
  sidecarLog: pino.Logger,
): Promise<MemoryReading[]> {
  const most = Math.max(...plan.memory.steps);
  const mesh = new BenchMesh(
    root,
    203,
    [{ name: 'mem', replicas: most, mode: 'STRICT', service: plan.memory.withService ? 'later' : 'none' }],
    appAddress,
  );
  const cp = await startControlPlane(mesh, repoRoot);
  const sidecars: BenchSidecar[] = [];
  try {
    const readings: MemoryReading[] = [];
    for (const n of plan.memory.steps) {
      const placed = mesh.pods.slice(0, n);
      if (n > 0) {
        mesh.place(placed);
        // The control plane knows a pod once the placement file says where it runs; wait for that.
        const deadline = Date.now() + 10_000;
        while ((await cpStatus(mesh)).pods.length < n) {
          if (Date.now() > deadline)
            throw new Error(`the control plane did not pick up a placement of ${n} pods`);
          await sleep(20);
        }
        sidecars.push(
          ...(await startSidecars(
            placed.slice(sidecars.length),
            cp,
            mesh,
            sidecarLog,
            plan.startConcurrency,
          )),
        );
        await waitAcknowledged(mesh, placed);
      }
      readings.push(await readMemory(cp.proc, mesh.memoryFile, n, plan.memory));
    }
    if (plan.memory.withService) {
      // One Service in front of all of them: every proxy's config now lists every pod as an endpoint.
      const before = Number((await cpStatus(mesh)).version);
      mesh.addService('mem');
      const deadline = Date.now() + 10_000;
      while (Number((await cpStatus(mesh)).version) <= before) {
        if (Date.now() > deadline) throw new Error('the control plane did not pick up the Service');
        await sleep(20);
      }
      await waitAcknowledged(mesh, mesh.pods.slice(0, most));
      readings.push({
        ...(await readMemory(cp.proc, mesh.memoryFile, most, plan.memory)),
        withService: true,
      });
    }
    return readings;
  } catch (err) {
    throw explainFailure(cp, err);
  } finally {
    await Promise.all(sidecars.map((s) => s.stop()));
    await stopControlPlane(cp);
  }
}

/**
 * The reference: a bare Node https server, with the control plane's TLS options, holding streams open
 * the way the control plane holds config streams (headers sent, body never ended). Its memory per
 * connection is what any Node server pays for an idle mTLS connection.
 */
const REFERENCE_SERVER = [
  "import https from 'node:https';",
  'const e = process.env;',
  'const server = https.createServer(',
  "  { cert: e.REF_CERT, key: e.REF_KEY, ca: e.REF_CA, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },",
  "  (req, res) => { res.writeHead(200, { 'content-type': 'application/x-ndjson' }); res.flushHeaders(); },",
  ');',
  'server.keepAliveTimeout = 60000;',
  'server.listen(Number(e.REF_PORT), e.REF_HOST);',
].join('\n');

function referenceCerts(): {
  ca: string;
  server: { cert: string; key: string };
  client: { cert: string; key: string };
} {
  const clock = { now: Date.now };
  const root = createRoot({ trustDomain: TRUST_DOMAIN, now: clock.now(), random: randomBytes });
  const ca = new CertificateAuthority(
    materialOf({ mode: 'self-signed', state: initialCaState(TRUST_DOMAIN, root) }),
    { clock, random: randomBytes },
  );
  const leaf = (sa: string) => {
    const id = parseSpiffeId(`spiffe://${TRUST_DOMAIN}/ns/bench/sa/${sa}`);
    if (!id.ok) throw new Error(`BUG: ${id.message}`);
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const issued = ca.signPublicKey(publicKey.export({ format: 'der', type: 'spki' }), {
      identities: [id.id],
      method: 'operator',
    });
    return { cert: issued.chainPem, key: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString() };
  };
  return { ca: ca.trustBundlePem(), server: leaf('server'), client: leaf('client') };
}

async function runReferenceOnce(plan: ControlPlanePlan, root: string): Promise<MemoryReading[]> {
  mkdirSync(root, { recursive: true });
  const certs = referenceCerts();
  const address = { host: '127.206.0.1', port: 15012 };
  const memoryFile = path.join(root, 'memory.json');
  const proc = startProcess(
    'reference https server',
    process.execPath,
    ['--expose-gc', '--import', MEMORY_PRELOAD, '--input-type=module', '-e', REFERENCE_SERVER],
    path.join(root, 'reference.log'),
    {
      ...process.env,
      KMTLS_BENCH_MEMORY_FILE: memoryFile,
      REF_CERT: certs.server.cert,
      REF_KEY: certs.server.key,
      REF_CA: certs.ca,
      REF_HOST: address.host,
      REF_PORT: String(address.port),
    },
  );
  const open: http.ClientRequest[] = [];
  try {
    const deadline = Date.now() + 10_000;
    while ((await probe(address.host, address.port, 1_000)) === 'unreachable') {
      assertRunning(proc);
      if (Date.now() > deadline)
        throw new Error(`the reference server does not listen: ${tail(proc.logFile)}`);
      await sleep(50);
    }
    const connect = () =>
      new Promise<void>((resolve, reject) => {
        const req = https.request(
          {
            ...address,
            path: '/',
            agent: false,
            cert: certs.client.cert,
            key: certs.client.key,
            ca: certs.ca,
            checkServerIdentity: () => undefined,
          },
          () => resolve(),
        );
        req.on('error', reject);
        req.end();
        open.push(req);
      });
    const readings: MemoryReading[] = [];
    for (const n of plan.memory.steps) {
      while (open.length < n) {
        const batch = Math.min(plan.startConcurrency, n - open.length);
        await Promise.all(Array.from({ length: batch }, connect));
      }
      readings.push(await readMemory(proc, memoryFile, n, plan.memory));
    }
    return readings;
  } finally {
    for (const req of open) req.destroy();
    await stopProcess(proc);
  }
}

// ---------------------------------------------------------------------------------------------------

export async function runControlPlaneBench(
  plan: ControlPlanePlan,
  repoRoot: string,
  log: (line: string) => void,
): Promise<ControlPlaneBenchResult> {
  const started = performance.now();
  const busy0 = machineBusySeconds();
  const own0 = ownTreeSeconds();
  const work = mkdtempSync(path.join(os.tmpdir(), 'kmtls-bench-cp-'));
  const sidecarLogStream: WriteStream = createWriteStream(path.join(work, 'sidecars.log'));
  const sidecarLog = pino({ level: 'warn', base: null }, sidecarLogStream);
  const app = await startApp();
  log(`control plane: working in ${work}`);
  const interruptions: string[] = [];
  // A control plane stopped from outside (another job on this machine) costs one retry of the part, no more.
  const attempt = async <T>(what: string, run: (dir: string) => Promise<T>): Promise<T> => {
    try {
      return await run(path.join(work, what));
    } catch (err) {
      if (!(err instanceof ControlPlaneStopped)) throw err;
      interruptions.push(`${what}: ${err.message}`);
      log(`  ${what}: ${err.message}; running it again`);
      return await run(path.join(work, `${what}-again`));
    }
  };
  try {
    const memory: MemoryReading[][] = [];
    for (let r = 0; r < plan.memory.repetitions; r++) {
      const readings = await attempt(`memory-${r}`, (dir) =>
        runMemoryOnce(plan, repoRoot, app.address, dir, sidecarLog),
      );
      memory.push(readings);
      log(
        `  memory ${r + 1}/${plan.memory.repetitions}: ` +
          readings
            .map(
              (m) =>
                `${m.proxies} proxies ${(m.rssBytes / 1e6).toFixed(1)} MB RSS, heap ${(m.heapUsedBytes / 1e6).toFixed(1)} MB`,
            )
            .join('; '),
      );
    }
    const reference: MemoryReading[][] = [];
    for (let r = 0; r < plan.memory.repetitions; r++) {
      reference.push(await runReferenceOnce(plan, path.join(work, `reference-${r}`)));
    }
    log(
      `  reference https server: ${reference[0]!.map((m) => `${m.proxies} connections ${(m.rssBytes / 1e6).toFixed(1)} MB RSS`).join('; ')}`,
    );
    const latency = await attempt('latency', (dir) =>
      runLatency(plan, repoRoot, app.address, dir, sidecarLog, log),
    );
    const result: ControlPlaneBenchResult = {
      plan,
      latency,
      memory,
      reference,
      interruptions,
      totalSeconds: (performance.now() - started) / 1000,
      machineBusySeconds: machineBusySeconds() - busy0,
      ownSeconds: ownTreeSeconds() - own0,
    };
    rmSync(work, { recursive: true, force: true });
    return result;
  } catch (err) {
    log(`control plane bench failed; logs kept in ${work}`);
    throw err;
  } finally {
    app.server.close();
    sidecarLogStream.end();
  }
}
