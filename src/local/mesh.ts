import { randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import http from 'node:http';
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
import { containerEnv, LocalAllocator, placementOf, planMesh } from './plan.js';
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
  private readonly tokenOf = new Map<string, string>();
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

  async start(): Promise<void> {
    await mkdir(this.file('logs'), { recursive: true, mode: 0o700 });
    await mkdir(this.file('tokens'), { recursive: true, mode: 0o700 });
    this.source = await DirectorySource.open(this.options.dir);
    const snapshot = buildMeshSnapshot(this.source.current().resources, this.meshOptions());
    this.plan = await planMesh(snapshot, this.alloc);
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
    const up = await waitUntil(
      async () => (await httpGet(this.plan.controlPlane.admin, '/ready'))?.status === 200,
      30_000,
    );
    if (!up) {
      await this.stop();
      throw new KmtlsError(
        'KMTLS_LOCAL_START',
        `the control plane did not become ready; see ${this.file('logs', 'controlplane.log')}`,
      );
    }
    await this.reconcile();
    this.source.subscribe(() => {
      this.reconciling = this.reconciling.then(() => this.reconcile()).catch(() => {});
    });
  }

  private meshOptions() {
    return { trustDomain: this.options.trustDomain, rootNamespace: this.options.rootNamespace };
  }

  /** Mints (once per pod) the bootstrap token bound to the pod's identity; the control plane reads the digests. */
  private async writeTokens(): Promise<void> {
    const want: [string, string][] = this.plan.pods
      .filter((p) => p.sidecar && p.identity)
      .map((p) => [p.key, p.identity!]);
    want.push(['check', `spiffe://${this.options.trustDomain}/ns/kmtls-system/sa/${CHECK_IDENTITY_SA}`]);
    for (const [key, uri] of want) {
      if (this.tokenOf.has(key)) continue;
      const id = parseSpiffeId(uri);
      if (!id.ok) continue;
      const token = this.tokens.mint(id.id);
      this.tokenOf.set(key, token);
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

  /** What, if changed, needs the pod's processes restarted (policies never do). */
  private fingerprint(p: LocalPod): string {
    return JSON.stringify({
      sidecar: p.sidecar,
      identity: p.identity,
      containers: p.containers.map((c) => ({
        command: c.command,
        args: c.args,
        env: containerEnv(this.plan, p, c),
      })),
    });
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
