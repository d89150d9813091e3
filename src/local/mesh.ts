import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SourceState } from '../config/index.js';
import { DirectorySource } from '../config/index.js';
import { KmtlsError } from '../errors.js';
import { parseSpiffeId } from '../identity/index.js';
import { buildMeshSnapshot } from '../mesh/index.js';
import { BootstrapTokenAuthenticator, writeFileAtomic } from '../pki/index.js';
import { KubeProxy } from './kube-proxy.js';
import type { LocalPlan, LocalPod } from './plan.js';
import { containerEnv, LocalAllocator, placementOf, planMesh, restartFingerprint } from './plan.js';
import type { ProcessStatus } from './processes.js';
import { ManagedProcess } from './processes.js';

/** The executable of this very kmtls, to start the control plane and the sidecars with. */
const KMTLS_BIN = fileURLToPath(new URL('../../../bin/kmtls.js', import.meta.url));

export const CHECK_IDENTITY_SA = 'kmtls-check';

export interface LocalMeshOptions {
  readonly dir: string;
  readonly stateDir: string;
  readonly subnet: number;
  readonly trustDomain: string;
  readonly rootNamespace: string;
  /** Where the applications run from (their `command` is relative to it). */
  readonly cwd: string;
  readonly logLevel?: string;
  readonly onChange?: () => void;
  /** Where the supervisor's own problems go besides logs/supervisor.log (default: stderr). */
  readonly onError?: (line: string) => void;
}

/** A problem of the supervisor itself (a reconcile that failed), as processes.json carries it. */
export interface SupervisorError {
  readonly message: string;
  readonly atMs: number;
}

/** What `kmtls status` and `kmtls check` read to find the running mesh. */
export interface RuntimeInfo {
  readonly pid: number;
  readonly startedAt: string;
  readonly dir: string;
  readonly stateDir: string;
  readonly trustDomain: string;
  readonly rootNamespace: string;
  readonly controlPlane: { readonly api: string; readonly admin: string };
  readonly rootCertFile: string;
  readonly checkTokenFile: string;
  readonly pods: readonly {
    namespace: string;
    name: string;
    podIP: string;
    outboundIP: string;
    sidecar: boolean;
    identity: string | undefined;
    admin: string | undefined;
    appPorts: Record<string, number>;
  }[];
  readonly services: LocalPlan['services'];
}

interface RunningPod {
  readonly pod: LocalPod;
  readonly fingerprint: string;
  readonly sidecar: ManagedProcess | undefined;
  readonly apps: ManagedProcess[];
}

/** GET on a local HTTP endpoint; undefined when nothing answers. */
export function httpGet(
  address: string,
  pathname: string,
  timeoutMs = 1_000,
): Promise<{ status: number; body: string } | undefined> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const req = http.get(
      {
        host: address.slice(0, i),
        port: Number(address.slice(i + 1)),
        path: pathname,
        timeout: timeoutMs,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', () => resolve(undefined));
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/** Whether something accepts TCP connections on host:port. */
export function isListening(address: string, timeoutMs = 500): Promise<boolean> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const socket = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
    const done = (up: boolean) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Polls `check` until it is true or `timeoutMs` passes; for processes starting up, not for tests' timing. */
export async function waitUntil(
  check: () => Promise<boolean>,
  timeoutMs: number,
  stepMs = 50,
): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return check();
}

/**
 * `kmtls up`: the local mesh. It plays the cluster's parts around the real control plane and
 * sidecars: the scheduler and kubelet (pods as processes, with addresses, env and restarts), the
 * network (loopback addresses, a kube-proxy for Service VIPs), and the bootstrap credential each
 * sidecar's first certificate request needs.
 */
export class LocalMesh {
  private source!: DirectorySource;
  private readonly alloc: LocalAllocator;
  private plan!: LocalPlan;
  private controlPlane!: ManagedProcess;
  private readonly kubeProxy = new KubeProxy();
  private readonly pods = new Map<string, RunningPod>();
  private readonly tokens = new BootstrapTokenAuthenticator(randomBytes);
  /** Pod key (or `check`) → the token minted for it and the identity it is bound to. */
  private readonly tokenOf = new Map<string, { identity: string; token: string }>();
  private reconcileError: SupervisorError | undefined;
  private reconciling: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(readonly options: LocalMeshOptions) {
    this.alloc = new LocalAllocator(options.subnet);
  }

  get stateDir(): string {
    return this.options.stateDir;
  }

  private file(...parts: string[]): string {
    return path.join(this.options.stateDir, ...parts);
  }

  currentPlan(): LocalPlan {
    return this.plan;
  }

  sourceState(): SourceState {
    return this.source.current();
  }

  processes(): {
    controlPlane: ProcessStatus;
    pods: Map<string, { sidecar?: ProcessStatus; apps: ProcessStatus[] }>;
  } {
    const pods = new Map<string, { sidecar?: ProcessStatus; apps: ProcessStatus[] }>();
    for (const [k, r] of this.pods) {
      pods.set(k, {
        ...(r.sidecar ? { sidecar: r.sidecar.status() } : {}),
        apps: r.apps.map((a) => a.status()),
      });
    }
    return { controlPlane: this.controlPlane.status(), pods };
  }

  private processesTimer: NodeJS.Timeout | undefined;

  /** A process started, ended or restarted: tell the view, and write processes.json for `status`. */
  private changed(): void {
    this.options.onChange?.();
    if (this.processesTimer || this.stopped) return;
    this.processesTimer = setTimeout(() => {
      this.processesTimer = undefined;
      const p = this.processes();
      const body = {
        controlPlane: p.controlPlane,
        errors: this.reconcileError ? [this.reconcileError] : [],
        pods: Object.fromEntries(
          [...p.pods].map(([k, v]) => [k, [...(v.sidecar ? [v.sidecar] : []), ...v.apps]]),
        ),
      };
      void writeFileAtomic(
        this.file('processes.json'),
        Buffer.from(JSON.stringify(body, null, 2)),
        0o644,
      ).catch(() => {});
    }, 50);
  }

  /** Restarts the control plane process (as a crash would); sidecars keep serving meanwhile. */
  killControlPlane(): void {
    this.controlPlane.kill('SIGKILL');
  }

  /**
   * Starts the control plane, then every pod. If anything fails on the way, whatever was started
   * is stopped again before the error is thrown.
   */
  async start(): Promise<void> {
    try {
      await this.startAll();
    } catch (err) {
      await this.stop().catch(() => {});
      throw err;
    }
  }

  private async startAll(): Promise<void> {
    await mkdir(this.file('logs'), { recursive: true, mode: 0o700 });
    await mkdir(this.file('tokens'), { recursive: true, mode: 0o700 });
    this.source = await DirectorySource.open(this.options.dir);
    const snapshot = buildMeshSnapshot(this.source.current().resources, this.meshOptions());
    this.plan = await planMesh(snapshot, this.alloc);
    await this.checkSubnetFree();
    await this.writeTokens();
    await this.writePlacement();
    this.controlPlane = new ManagedProcess(
      {
        name: 'controlplane',
        command: process.execPath,
        args: [
          KMTLS_BIN,
          'controlplane',
          '--dir',
          this.options.dir,
          '--state-dir',
          this.options.stateDir,
          '--listen',
          this.plan.controlPlane.api,
          '--admin',
          this.plan.controlPlane.admin,
          '--placement',
          this.file('placement.json'),
          '--tokens',
          this.file('tokens.json'),
          '--trust-domain',
          this.options.trustDomain,
          '--root-namespace',
          this.options.rootNamespace,
          '--log-level',
          this.options.logLevel ?? 'info',
        ],
        env: {},
        cwd: this.options.cwd,
        logFile: this.file('logs', 'controlplane.log'),
        restart: 'Always',
      },
      () => this.changed(),
    );
    this.controlPlane.start();
    // Ready means: what answers on the address is the control plane we started (its pid) for our
    // trust domain, not another mesh that holds the same addresses.
    let stranger: string | undefined;
    let strangerSeen = 0;
    const up = await waitUntil(async () => {
      // A stranger that keeps answering holds the address: our control plane cannot bind it.
      if (strangerSeen >= 10) return true;
      const r = await httpGet(this.plan.controlPlane.admin, '/status');
      if (r?.status !== 200) return false;
      let s: { pid?: unknown; trustDomain?: unknown; stateDir?: unknown };
      try {
        s = JSON.parse(r.body) as typeof s;
      } catch {
        return false;
      }
      const ours = this.controlPlane.status().pid;
      if (s.pid === ours && s.trustDomain === this.options.trustDomain) return true;
      if (s.pid !== ours) {
        stranger = `pid ${String(s.pid)}${typeof s.stateDir === 'string' ? `, state in ${s.stateDir}` : ''}, trust domain ${String(s.trustDomain)}`;
        strangerSeen++;
      } else {
        stranger = undefined;
      }
      return false;
    }, 30_000);
    if (!up || strangerSeen >= 10) {
      throw new KmtlsError(
        'KMTLS_LOCAL_START',
        stranger
          ? `another control plane answers on ${this.plan.controlPlane.admin} (${stranger}): the addresses of --subnet ${this.options.subnet} are in use; stop that mesh or pass another --subnet`
          : `the control plane did not become ready; see ${this.file('logs', 'controlplane.log')}`,
      );
    }
    await this.reconcile();
    this.source.subscribe(() => {
      this.reconciling = this.reconciling
        .then(() => this.reconcile())
        .then(
          () => {
            if (this.reconcileError) {
              this.reconcileError = undefined;
              this.changed();
            }
          },
          (err: unknown) => this.reportReconcileError(err),
        );
    });
  }

  /** Something already listens on this subnet's control-plane addresses: another mesh, most likely. */
  private async checkSubnetFree(): Promise<void> {
    const { api, admin } = this.plan.controlPlane;
    const status = await httpGet(admin, '/status', 500);
    const busy = status
      ? admin
      : (await isListening(api))
        ? api
        : (await isListening(admin))
          ? admin
          : undefined;
    if (!busy) return;
    let who = '';
    try {
      const s = JSON.parse(status?.body ?? '') as { pid?: unknown; stateDir?: unknown };
      if (s.pid !== undefined)
        who = ` (a control plane, pid ${String(s.pid)}${typeof s.stateDir === 'string' ? `, state in ${s.stateDir}` : ''})`;
    } catch {
      // Not a kmtls control plane, or not one that says who it is.
    }
    throw new KmtlsError(
      'KMTLS_LOCAL_START',
      `the addresses of --subnet ${this.options.subnet} (127.${this.options.subnet}.x.y and up) are in use: something already listens on ${busy}${who}; stop that mesh or pass another --subnet`,
    );
  }

  /** A reconcile failed: logged (supervisor.log and stderr) and shown in `kmtls status` until one succeeds. */
  private reportReconcileError(err: unknown): void {
    const message = `applying the manifests failed: ${err instanceof Error ? err.message : String(err)}`;
    this.reconcileError = { message, atMs: Date.now() };
    const line = `${new Date().toISOString()} kmtls up: ${message}\n`;
    void appendFile(this.file('logs', 'supervisor.log'), line, { mode: 0o600 }).catch(() => {});
    (this.options.onError ?? ((l: string) => process.stderr.write(l)))(line);
    this.changed();
  }

  private meshOptions() {
    return { trustDomain: this.options.trustDomain, rootNamespace: this.options.rootNamespace };
  }

  /**
   * Mints the bootstrap token of each pod with a sidecar, bound to the pod's identity: once per pod
   * and identity (a pod whose identity changes, say its serviceAccountName was edited, gets a new
   * token and the old one is revoked), and revokes the tokens of pods that are gone. The control
   * plane reads the digests from tokens.json, rewritten every time.
   */
  private async writeTokens(): Promise<void> {
    const want = new Map<string, string>(
      this.plan.pods.filter((p) => p.sidecar && p.identity).map((p) => [p.key, p.identity!]),
    );
    want.set('check', `spiffe://${this.options.trustDomain}/ns/kmtls-system/sa/${CHECK_IDENTITY_SA}`);
    for (const [key, held] of [...this.tokenOf]) {
      if (want.get(key) === held.identity) continue;
      this.tokens.revoke(held.token);
      this.tokenOf.delete(key);
      if (!want.has(key)) await rm(this.tokenFile(key), { force: true });
    }
    for (const [key, uri] of want) {
      if (this.tokenOf.has(key)) continue;
      const id = parseSpiffeId(uri);
      if (!id.ok) continue;
      const token = this.tokens.mint(id.id);
      this.tokenOf.set(key, { identity: uri, token });
      await writeFileAtomic(this.tokenFile(key), Buffer.from(`${token}\n`), 0o600);
    }
    await writeFileAtomic(
      this.file('tokens.json'),
      Buffer.from(JSON.stringify({ tokens: this.tokens.digests() }, null, 2)),
      0o600,
    );
  }

  private tokenFile(key: string): string {
    return this.file('tokens', `${key.replace('/', '_')}.token`);
  }

  private async writePlacement(): Promise<void> {
    await writeFileAtomic(
      this.file('placement.json'),
      Buffer.from(JSON.stringify(placementOf(this.plan), null, 2)),
      0o644,
    );
  }

  private async writeRuntime(): Promise<void> {
    const info: RuntimeInfo = {
      pid: process.pid,
      startedAt: new Date().toISOString(),
      dir: this.options.dir,
      stateDir: this.options.stateDir,
      trustDomain: this.options.trustDomain,
      rootNamespace: this.options.rootNamespace,
      controlPlane: this.plan.controlPlane,
      rootCertFile: this.file('root-cert.pem'),
      checkTokenFile: this.tokenFile('check'),
      pods: this.plan.pods.map((p) => ({
        namespace: p.namespace,
        name: p.name,
        podIP: p.podIP,
        outboundIP: p.outboundIP,
        sidecar: p.sidecar,
        identity: p.identity,
        admin: p.admin,
        appPorts: Object.fromEntries([...p.appPorts].map(([k, v]) => [String(k), v])),
      })),
      services: this.plan.services,
    };
    await writeFileAtomic(this.file('runtime.json'), Buffer.from(JSON.stringify(info, null, 2)), 0o644);
  }

  /** Brings the running pods in line with the manifests' last good state. */
  private async reconcile(): Promise<void> {
    if (this.stopped) return;
    const snapshot = buildMeshSnapshot(this.source.current().resources, this.meshOptions());
    this.plan = await planMesh(snapshot, this.alloc);
    await this.writeTokens();
    await this.writePlacement();
    await this.kubeProxy.update(this.plan.services, this.plan.pods);
    const wanted = new Map(this.plan.pods.map((p) => [p.key, p]));
    for (const [key, running] of this.pods) {
      const p = wanted.get(key);
      if (!p || this.fingerprint(p) !== running.fingerprint) {
        this.pods.delete(key);
        await this.stopPod(running);
      }
    }
    const starting: Promise<void>[] = [];
    for (const [key, p] of wanted) if (!this.pods.has(key)) starting.push(this.startPod(p));
    await Promise.all(starting);
    await this.writeRuntime();
    this.changed();
  }

  /** What, if changed, needs the pod's processes restarted: see restartFingerprint. */
  private fingerprint(p: LocalPod): string {
    return restartFingerprint(this.plan, p);
  }

  private async startPod(p: LocalPod): Promise<void> {
    const log = (what: string) => this.file('logs', `${p.namespace}_${p.name}.${what}.log`);
    let sidecar: ManagedProcess | undefined;
    if (p.sidecar && p.admin) {
      sidecar = new ManagedProcess(
        {
          name: `${p.key} sidecar`,
          command: process.execPath,
          args: [
            KMTLS_BIN,
            'proxy',
            '--control-plane',
            this.plan.controlPlane.api,
            '--pod',
            p.key,
            '--token-file',
            this.tokenFile(p.key),
            '--ca-root',
            this.file('root-cert.pem'),
            '--admin',
            p.admin,
            '--trust-domain',
            this.options.trustDomain,
            '--log-level',
            this.options.logLevel ?? 'info',
          ],
          env: {},
          cwd: this.options.cwd,
          logFile: log('sidecar'),
          restart: 'Always',
        },
        () => this.changed(),
      );
      sidecar.start();
      // As a native sidecar: the application starts once the sidecar is ready.
      const admin = p.admin;
      await waitUntil(async () => (await httpGet(admin, '/ready'))?.status === 200, 15_000);
    }
    const apps = p.containers
      .filter((c) => c.command.length > 0 || c.args.length > 0)
      .map((c) => {
        const env = containerEnv(this.plan, p, c);
        const argv = [...c.command, ...c.args].map((a) =>
          a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, n: string) => env[n] ?? m),
        );
        const [command, ...args] = argv as [string, ...string[]];
        const proc = new ManagedProcess(
          {
            name: `${p.key} ${c.name}`,
            command: command === 'node' ? process.execPath : command,
            args,
            env,
            cwd: this.options.cwd,
            logFile: log(c.name),
            restart: p.restart,
          },
          () => this.changed(),
        );
        proc.start();
        return proc;
      });
    this.pods.set(p.key, { pod: p, fingerprint: this.fingerprint(p), sidecar, apps });
  }

  private async stopPod(r: RunningPod): Promise<void> {
    await Promise.all(r.apps.map((a) => a.stop()));
    await r.sidecar?.stop();
  }

  /** Stops every process it started, applications first, then sidecars, then the control plane. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.processesTimer) clearTimeout(this.processesTimer);
    this.source?.close();
    await this.reconciling;
    const pods = [...this.pods.values()];
    this.pods.clear();
    await Promise.all(pods.flatMap((r) => r.apps.map((a) => a.stop())));
    await Promise.all(pods.map((r) => r.sidecar?.stop()));
    await this.kubeProxy.close();
    await this.controlPlane?.stop();
  }
}

/** Reads the runtime file of a running (or last) local mesh. */
export async function readRuntime(stateDir: string): Promise<RuntimeInfo> {
  let text: string;
  try {
    text = await readFile(path.join(stateDir, 'runtime.json'), 'utf8');
  } catch {
    throw new KmtlsError(
      'KMTLS_LOCAL_NOT_RUNNING',
      `no local mesh found in ${stateDir} (start one with kmtls up, or pass --state-dir)`,
    );
  }
  const info = JSON.parse(text) as RuntimeInfo;
  try {
    process.kill(info.pid, 0);
  } catch {
    throw new KmtlsError(
      'KMTLS_LOCAL_NOT_RUNNING',
      `the local mesh in ${stateDir} (pid ${info.pid}) is not running`,
    );
  }
  return info;
}
