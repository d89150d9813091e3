/**
 * The sidecar part of `npm run bench`: the kmtls chain (client sidecar → server sidecar → backend)
 * side by side with the same chain built from nginx (stream, proxy_ssl) and from haproxy, and with
 * the backend alone, in one run, on one machine, with the same certificates and the same backend.
 *
 * Measured per chain: maximum requests/s (wrk, keep-alive), latency at a fixed rate (an open-loop
 * generator), new connections/s (wrk, `Connection: close`: one request per connection), and per
 * sidecar CPU time (/proc utime + stime) and resident memory. Runs alternate between chains so that
 * a slow minute on the shared machine hurts them all alike. Nothing here fails on a figure; a chain
 * that cannot run is reported as skipped, with the reason.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median } from './measure.js';
import type { Backend, Chain, ChainId, SidecarRole } from './proxy/chains.js';
import {
  directChain,
  issueCerts,
  startBackend,
  startFullHandshakeVariant,
  startHaproxyChain,
  startKmtlsChain,
  startNginxChain,
  startNodeRelayChain,
} from './proxy/chains.js';
import type { ChainCerts } from './proxy/configs.js';
import { nginxClientConf } from './proxy/configs.js';
import type { FixedRateResult } from './proxy/fixed-rate.js';
import { runFixedRate } from './proxy/fixed-rate.js';
import {
  assertRunning,
  cpuSeconds,
  freePort,
  machineBusySeconds,
  ownTreeSeconds,
  rssBytes,
  startProcess,
  stopAll,
  stopProcess,
  tail,
  waitForPort,
} from './proxy/processes.js';
import type { NginxTool, Tools } from './proxy/tools.js';
import { ensureTools } from './proxy/tools.js';
import type { WrkPlan, WrkResult } from './proxy/wrk.js';
import { runWrk } from './proxy/wrk.js';

export type { ChainId, SidecarRole } from './proxy/chains.js';

export interface ProxyPlan {
  /** Closed-loop keep-alive load for maximum requests/s; a warm-up run precedes every timed run. */
  readonly throughput: WrkPlan & { readonly rounds: number; readonly warmupSeconds: number };
  /** Open-loop load at a fixed rate, per chain and round. */
  readonly fixedRate: {
    readonly rounds: number;
    readonly ratePerSecond: number;
    readonly warmupMs: number;
    readonly durationMs: number;
    readonly connections: number;
  };
  /** One request per connection, so every request is a new connection through the chain. */
  readonly newConnections: WrkPlan & { readonly rounds: number; readonly warmupSeconds: number };
  /** Also run a kmtls chain with `--log-level info` (an access-log line per connection). */
  readonly withInfoLog: boolean;
  /**
   * How long the chains sit without traffic before idle memory is read. V8 gives back the memory it
   * grew during start-up only after some seconds without work (its memory reducer), so a reading
   * right after start is not what an idle sidecar holds; both are reported.
   */
  readonly idleSeconds: number;
}

/** One sidecar's CPU and memory, over all runs of a chain. */
export interface SidecarFigures {
  readonly role: SidecarRole;
  /** Once every chain is up and has carried a few requests, a second after the last one started. */
  readonly startRssBytes: number;
  /** After `idleSeconds` more without traffic, before any load: what an idle sidecar holds. */
  readonly idleRssBytes: number;
  /** The largest RSS read at the end of a load run. */
  readonly loadedRssBytes: number;
  /** CPU ms per 1,000 requests at maximum load (median over rounds). */
  readonly cpuMsPer1kAtMax?: number;
  /** CPU ms per 1,000 requests at the fixed rate (median over rounds). */
  readonly cpuMsPer1kAtFixedRate?: number;
  /** CPU ms per new connection (one request each), median over rounds. */
  readonly cpuMsPerNewConnection?: number;
}

export interface ChainFigures {
  readonly id: ChainId;
  readonly throughput?: {
    readonly medianPerSecond: number;
    readonly runsPerSecond: readonly number[];
    readonly socketErrors: number;
    readonly badStatus: number;
    /** wrk's own latency at saturation, median over rounds. */
    readonly p50Ms: number;
    readonly p99Ms: number;
  };
  readonly fixedRate?: {
    readonly runs: readonly FixedRateResult[];
    readonly p50Ms: number;
    readonly p99Ms: number;
    readonly p999Ms: number;
    readonly maxMs: number;
    /** wrk2's definition, from the due time: adds the generator's own timer lateness. */
    readonly p99FromDueMs: number;
    readonly failed: number;
    readonly queued: number;
  };
  readonly newConnections?: {
    readonly medianPerSecond: number;
    readonly runsPerSecond: readonly number[];
    readonly socketErrors: number;
    readonly badStatus: number;
  };
  readonly sidecars: readonly SidecarFigures[];
  /** Set when a measurement of this chain failed part-way; the figures above are those it got. */
  readonly failure?: string;
}

export interface ProxyBenchResult {
  readonly plan: ProxyPlan;
  readonly tools: Tools;
  readonly nodeOpenssl: string;
  readonly backend: Backend['kind'];
  readonly chains: readonly ChainFigures[];
  readonly skipped: readonly { readonly id: ChainId; readonly reason: string }[];
  /** What nginx says when its client side verifies a kmtls server certificate (`proxy_ssl_verify on`). */
  readonly nginxVerifyOn?: string;
  /** Whether kmtls ran as built, or needed the bench's workaround (and why). */
  readonly kmtlsAsBuilt?: KmtlsAsBuilt;
  /** What each chain's server side negotiated with `openssl s_client` and the client certificate. */
  readonly negotiated: Readonly<Partial<Record<ChainId, string>>>;
  /**
   * CPU seconds the machine was busy during the section, and how many of them this bench's own process
   * tree used: the rest is someone else's load, which disturbs every figure here.
   */
  readonly machineBusySeconds: number;
  readonly ownSeconds: number;
  /** RSS of a `node` process that loads nothing: the floor under any Node sidecar. */
  readonly nodeBaselineRssBytes?: number;
  readonly totalSeconds: number;
}

const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

/** CPU seconds of each sidecar of a chain now; a process that has gone counts as an error later. */
function cpuNow(chain: Chain): number[] {
  return chain.sidecars.map((s) => sum(s.pids().map(cpuSeconds)));
}

function rssNow(chain: Chain): number[] {
  return chain.sidecars.map((s) => sum(s.pids().map(rssBytes)));
}

/** One request through the chain, with a plain socket: the chain is up when the backend's "ok" comes back. */
async function probe(port: number): Promise<void> {
  const answer = await new Promise<string>((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () =>
      s.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'),
    );
    let text = '';
    s.setEncoding('latin1');
    s.on('data', (d: string) => {
      text += d;
    });
    s.setTimeout(5_000, () => s.destroy(new Error('no answer in 5 s')));
    s.once('error', reject);
    s.once('close', () => resolve(text));
  });
  if (!answer.startsWith('HTTP/1.1 200') || !answer.endsWith('ok'))
    throw new Error(`127.0.0.1:${port} answered ${JSON.stringify(answer.slice(0, 80))}, not 200 "ok"`);
}

/** Per-chain accumulators, filled run by run. */
interface Tally {
  readonly chain: Chain;
  readonly startRss: number[];
  readonly idleRss: number[];
  loadedRss: number[];
  readonly throughput: WrkResult[];
  readonly cpuPer1kAtMax: number[][];
  readonly fixedRate: FixedRateResult[];
  readonly cpuPer1kAtFixed: number[][];
  readonly newConnections: WrkResult[];
  readonly cpuPerNewConnection: number[][];
  failure?: string;
}

/** Runs `load` between two CPU readings; returns its result and the CPU seconds of each sidecar. */
async function withCpu<T>(chain: Chain, load: () => Promise<T>): Promise<{ result: T; cpu: number[] }> {
  const before = cpuNow(chain);
  const result = await load();
  const after = cpuNow(chain);
  return { result, cpu: after.map((a, i) => a - (before[i] ?? 0)) };
}

function noteLoadedRss(t: Tally): void {
  const now = rssNow(t.chain);
  t.loadedRss = now.map((v, i) => Math.max(v, t.loadedRss[i] ?? 0));
}

/** Round r visits the chains starting from a different one, so none is always first or last. */
function rotated<T>(items: readonly T[], r: number): T[] {
  const k = r % Math.max(items.length, 1);
  return [...items.slice(k), ...items.slice(0, k)];
}

async function forEachRound(
  tallies: readonly Tally[],
  rounds: number,
  what: string,
  log: (line: string) => void,
  step: (t: Tally) => Promise<string>,
): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    for (const t of rotated(tallies, r)) {
      if (t.failure !== undefined) continue;
      try {
        for (const p of t.chain.processes) assertRunning(p);
        const line = await step(t);
        log(`  ${what} ${r + 1}/${rounds} ${t.chain.id}: ${line}`);
      } catch (err) {
        t.failure = `${what}: ${(err as Error).message}`;
        log(`  ${what} ${r + 1}/${rounds} ${t.chain.id}: FAILED ${(err as Error).message}`);
      }
    }
  }
}

function describeWrk(w: WrkResult): string {
  const problems =
    w.socketErrors + w.badStatus > 0 ? `, ${w.socketErrors} socket errors, ${w.badStatus} non-2xx` : '';
  return `${Math.round(w.requestsPerSecond)}/s${problems}`;
}

/** Starts a client side that verifies the server (`proxy_ssl_verify on`) and reports what nginx logs. */
async function probeNginxVerifyOn(
  nginx: NginxTool,
  dir: string,
  certs: ChainCerts,
  serverPort: number,
): Promise<string> {
  const port = await freePort();
  const d = path.join(dir, 'nginx-verify-on');
  mkdirSync(d, { recursive: true });
  const file = path.join(d, 'nginx.conf');
  writeFileSync(
    file,
    nginxClientConf(d, nginx.loadStream, port, serverPort, certs, { verifyServer: true, sessionReuse: true }),
  );
  const p = startProcess(
    'nginx client side, verify on',
    nginx.bin,
    ['-p', d, '-c', file],
    path.join(d, 'out.log'),
  );
  try {
    await waitForPort(port, p);
    try {
      await probe(port);
      return 'the request went through';
    } catch (err) {
      const logged = tail(path.join(d, 'error.log'), 1).replace(/^.*\[error\] [^:]*: \*\d+ /, '');
      return `the request failed (${(err as Error).message}); nginx logged: ${logged.replace(/, client:.*$/, '')}`;
    }
  } finally {
    await stopProcess(p);
  }
}

/**
 * What a server side negotiates with an OpenSSL client presenting the client certificate: protocol
 * and cipher suite, as `openssl s_client -brief` prints them.
 */
function probeTls(openssl: string, port: number, certs: ChainCerts): string {
  const r = spawnSync(
    openssl,
    [
      's_client',
      '-connect',
      `127.0.0.1:${port}`,
      '-cert',
      certs.client.leaf,
      '-key',
      certs.client.key,
      '-CAfile',
      certs.root,
      '-brief',
    ],
    { input: '', encoding: 'utf8', timeout: 10_000 },
  );
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const protocol = /Protocol version: (\S+)/.exec(text)?.[1];
  const cipher = /Ciphersuite: (\S+)/.exec(text)?.[1];
  return protocol && cipher ? `${protocol} ${cipher}` : `no handshake (${text.trim().split('\n')[0] ?? ''})`;
}

/** RSS of a bare `node` process, half a second after start. */
function measureNodeBaselineRss(): number | undefined {
  const script =
    "setTimeout(() => process.stdout.write(/VmRSS:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]), 500)";
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
  const kb = Number(r.stdout);
  return r.status === 0 && kb > 0 ? kb * 1024 : undefined;
}

/** A short human form of a refusal the kmtls access log recorded: reason and the OpenSSL words, if any. */
function describeRefusal(logFile: string, prefix: string): string | undefined {
  let lines: string[];
  try {
    lines = readFileSync(logFile, 'utf8').trim().split('\n');
  } catch {
    return undefined;
  }
  for (const line of lines.reverse()) {
    let entry: { outcome?: string; reason?: string; detail?: string; transport?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue;
    }
    // The readiness check's bare TCP connection is refused too; it is not what we are after.
    if (entry.outcome !== 'refused' || entry.transport !== 'mtls') continue;
    const openssl = /SSL routines:[^:]*:([^:]+)/.exec(entry.detail ?? '')?.[1];
    const detail = openssl ?? entry.detail?.replace(/^127\.0\.0\.1:\d+: /, '') ?? '';
    return `${prefix} ${entry.reason ?? '?'} (${detail.trim()})`;
  }
  return undefined;
}

/** Opens `count` connections one after another, one request each; undefined when all got "ok". */
async function probeConnections(port: number, count: number): Promise<string | undefined> {
  for (let i = 1; i <= count; i++) {
    try {
      await probe(port);
    } catch (err) {
      return `connection ${i} of ${count}: ${(err as Error).message}`;
    }
  }
  return undefined;
}

const NO_SESSION_REUSE = fileURLToPath(new URL('./proxy/no-session-reuse.mjs', import.meta.url));

/** What the bench found when it ran kmtls as built, before any workaround. */
export type KmtlsAsBuilt =
  | { readonly ok: true }
  | { readonly ok: false; readonly failure: string; readonly refusals: readonly string[] };

/**
 * Starts a kmtls chain as built and checks that three connections in a row go through. If they do
 * not, the chain is restarted with the client sidecar's session cache bypassed (no-session-reuse.mjs),
 * which is reported; if that fails too, the chain cannot be measured.
 */
async function startKmtls(
  id: 'kmtls' | 'kmtls-info',
  level: 'warn' | 'info',
  dir: string,
  repoRoot: string,
  certs: ChainCerts,
  backend: Backend,
): Promise<{ chain: Chain; asBuilt: KmtlsAsBuilt }> {
  const first = await startKmtlsChain(id, dir, repoRoot, certs, backend, level);
  const failure = await probeConnections(first.entryPort, 3);
  if (failure === undefined) return { chain: first, asBuilt: { ok: true } };
  // The sidecars write their access-log line as they close the connection, a moment after the probe sees it.
  await new Promise((resolve) => setTimeout(resolve, 500));
  const [client, server] = first.processes;
  const refusals = [
    client && describeRefusal(client.logFile, 'client sidecar refused:'),
    server && describeRefusal(server.logFile, 'server sidecar refused:'),
  ].filter((r): r is string => typeof r === 'string');
  for (const p of first.processes) await stopProcess(p);
  const chain = await startKmtlsChain(id, dir, repoRoot, certs, backend, level, [
    '--import',
    NO_SESSION_REUSE,
  ]);
  const still = await probeConnections(chain.entryPort, 3);
  if (still !== undefined) throw new Error(`even without session reuse: ${still}`);
  return { chain, asBuilt: { ok: false, failure, refusals } };
}

export async function runProxyBench(
  plan: ProxyPlan,
  repoRoot: string,
  log: (line: string) => void,
): Promise<ProxyBenchResult> {
  const started = performance.now();
  const busyBefore = machineBusySeconds();
  const ownBefore = ownTreeSeconds();
  log('sidecar proxy bench');
  if (!existsSync(path.join(repoRoot, 'dist/bundle/cli/main.js')))
    throw new Error('bin/kmtls.js runs dist/: run `npm run build` first');
  const tools = ensureTools(log);
  for (const note of tools.notes) log(`  ${note}`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kmtls-proxy-bench-'));
  const skipped: { id: ChainId; reason: string }[] = [];
  const tallies: Tally[] = [];
  let nginxVerifyOn: string | undefined;
  let kmtlsAsBuilt: KmtlsAsBuilt | undefined;
  const negotiated: Partial<Record<ChainId, string>> = {};
  let backendKind: Backend['kind'] = 'node';
  const add = (chain: Chain) =>
    tallies.push({
      chain,
      startRss: [],
      idleRss: [],
      loadedRss: [],
      throughput: [],
      cpuPer1kAtMax: [],
      fixedRate: [],
      cpuPer1kAtFixed: [],
      newConnections: [],
      cpuPerNewConnection: [],
    });
  const attempt = async (id: ChainId, start: () => Promise<Chain>) => {
    try {
      const chain = await start();
      await probe(chain.entryPort);
      add(chain);
      return chain;
    } catch (err) {
      skipped.push({ id, reason: (err as Error).message });
      log(`  ${id}: cannot start: ${(err as Error).message}`);
      return undefined;
    }
  };
  try {
    const certs = issueCerts(dir, repoRoot);
    const backend = await startBackend(tools, dir, repoRoot);
    backendKind = backend.kind;
    await attempt('direct', async () => directChain(backend));
    await attempt('kmtls', async () => {
      const { chain, asBuilt } = await startKmtls('kmtls', 'warn', dir, repoRoot, certs, backend);
      kmtlsAsBuilt = asBuilt;
      if (!asBuilt.ok) log(`  kmtls as built: ${asBuilt.failure}; ${asBuilt.refusals.join('; ')}`);
      return chain;
    });
    await attempt('node-relay', () => startNodeRelayChain(dir, certs, backend));
    if (plan.withInfoLog)
      await attempt(
        'kmtls-info',
        async () => (await startKmtls('kmtls-info', 'info', dir, repoRoot, certs, backend)).chain,
      );
    const nginx = tools.nginx;
    let nginxChain: Chain | undefined;
    if (nginx) nginxChain = await attempt('nginx', () => startNginxChain(nginx, dir, certs, backend));
    else skipped.push({ id: 'nginx', reason: 'nginx with its stream module is not available' });
    const haproxy = tools.haproxy;
    let haproxyChain: Chain | undefined;
    if (haproxy)
      haproxyChain = await attempt('haproxy', () => startHaproxyChain(haproxy.bin, dir, certs, backend));
    else skipped.push({ id: 'haproxy', reason: 'haproxy is not available' });
    for (const base of [nginxChain, haproxyChain]) {
      if (base === undefined) continue;
      await attempt(`${base.id}-full` as ChainId, () => startFullHandshakeVariant(base, tools, dir, certs));
    }
    const openssl = tools.opensslBin;
    if (openssl !== undefined) {
      for (const t of tallies) {
        const port = t.chain.serverPort;
        if (port !== undefined && !t.chain.id.endsWith('-full') && t.chain.id !== 'kmtls-info')
          negotiated[t.chain.id] = probeTls(openssl, port, certs);
      }
    }
    if (nginx && nginxChain?.serverPort !== undefined)
      nginxVerifyOn = await probeNginxVerifyOn(nginx, dir, certs, nginxChain.serverPort);

    // Memory a second after start (and a few requests through each chain), then once idle.
    const readRss = (into: (t: Tally) => number[], what: string) => {
      for (const t of tallies) {
        try {
          into(t).push(...rssNow(t.chain));
        } catch (err) {
          t.failure ??= `${what}: ${(err as Error).message}`;
        }
      }
    };
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    readRss((t) => t.startRss, 'memory after start');
    log(`  memory: ${plan.idleSeconds} s without traffic`);
    await new Promise((resolve) => setTimeout(resolve, plan.idleSeconds * 1_000));
    readRss((t) => t.idleRss, 'idle memory');

    const isVariant = (t: Tally) => t.chain.id === 'nginx-full' || t.chain.id === 'haproxy-full';
    const wrk = tools.wrk;
    if (wrk !== undefined) {
      const tp = plan.throughput;
      await forEachRound(
        tallies.filter((t) => !isVariant(t)),
        tp.rounds,
        'max throughput',
        log,
        async (t) => {
          await runWrk(wrk.bin, t.chain.entryPort, { ...tp, durationSeconds: tp.warmupSeconds });
          const { result, cpu } = await withCpu(t.chain, () => runWrk(wrk.bin, t.chain.entryPort, tp));
          noteLoadedRss(t);
          t.throughput.push(result);
          t.cpuPer1kAtMax.push(cpu.map((s) => (s * 1e6) / result.requests));
          return describeWrk(result);
        },
      );
    }

    const fr = plan.fixedRate;
    await forEachRound(
      tallies.filter((t) => !isVariant(t) && t.chain.id !== 'kmtls-info'),
      fr.rounds,
      `${fr.ratePerSecond} req/s`,
      log,
      async (t) => {
        const { result, cpu } = await withCpu(t.chain, () =>
          runFixedRate(
            {
              port: t.chain.entryPort,
              ratePerSecond: fr.ratePerSecond,
              warmupMs: fr.warmupMs,
              durationMs: fr.durationMs,
              connections: fr.connections,
            },
            repoRoot,
          ),
        );
        noteLoadedRss(t);
        t.fixedRate.push(result);
        // The CPU reading spans the warm-up too: count its requests.
        const sent = result.measured + Math.round((fr.warmupMs / 1000) * fr.ratePerSecond);
        t.cpuPer1kAtFixed.push(cpu.map((s) => (s * 1e6) / sent));
        return (
          `p50 ${result.fromReady.p50Ms.toFixed(2)} ms, p99 ${result.fromReady.p99Ms.toFixed(2)} ms` +
          (result.failed > 0 ? `, ${result.failed} failed` : '')
        );
      },
    );

    if (wrk !== undefined) {
      const nc = plan.newConnections;
      await forEachRound(tallies, nc.rounds, 'new connections', log, async (t) => {
        await runWrk(wrk.bin, t.chain.entryPort, { ...nc, durationSeconds: nc.warmupSeconds });
        const { result, cpu } = await withCpu(t.chain, () => runWrk(wrk.bin, t.chain.entryPort, nc));
        if (!isVariant(t)) noteLoadedRss(t);
        t.newConnections.push(result);
        t.cpuPerNewConnection.push(cpu.map((s) => (s * 1e3) / result.requests));
        return describeWrk(result);
      });
    }
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
  const machineBusy = machineBusySeconds() - busyBefore;
  const own = ownTreeSeconds() - ownBefore;
  if (machineBusy - own > 0.05 * machineBusy)
    log(
      `  work outside the bench took ${(machineBusy - own).toFixed(0)} of ${machineBusy.toFixed(0)} busy CPU seconds`,
    );
  const baseline = measureNodeBaselineRss();
  return {
    plan,
    tools,
    nodeOpenssl: process.versions.openssl ?? 'unknown',
    backend: backendKind,
    chains: tallies.map(summarizeTally),
    skipped,
    negotiated,
    machineBusySeconds: machineBusy,
    ownSeconds: own,
    ...(kmtlsAsBuilt === undefined ? {} : { kmtlsAsBuilt }),
    ...(nginxVerifyOn === undefined ? {} : { nginxVerifyOn }),
    ...(baseline === undefined ? {} : { nodeBaselineRssBytes: baseline }),
    totalSeconds: (performance.now() - started) / 1000,
  };
}

function summarizeTally(t: Tally): ChainFigures {
  const perSidecar = (runs: number[][], i: number): number | undefined =>
    runs.length === 0 ? undefined : median(runs.map((r) => r[i] ?? Number.NaN));
  const sidecars = t.chain.sidecars.map((s, i): SidecarFigures => {
    const atMax = perSidecar(t.cpuPer1kAtMax, i);
    const atFixed = perSidecar(t.cpuPer1kAtFixed, i);
    const perConn = perSidecar(t.cpuPerNewConnection, i);
    return {
      role: s.role,
      startRssBytes: t.startRss[i] ?? Number.NaN,
      idleRssBytes: t.idleRss[i] ?? Number.NaN,
      loadedRssBytes: t.loadedRss[i] ?? Number.NaN,
      ...(atMax === undefined ? {} : { cpuMsPer1kAtMax: atMax }),
      ...(atFixed === undefined ? {} : { cpuMsPer1kAtFixedRate: atFixed }),
      ...(perConn === undefined ? {} : { cpuMsPerNewConnection: perConn }),
    };
  });
  const wrkFigures = (runs: readonly WrkResult[]) => ({
    medianPerSecond: median(runs.map((r) => r.requestsPerSecond)),
    runsPerSecond: runs.map((r) => r.requestsPerSecond),
    socketErrors: sum(runs.map((r) => r.socketErrors)),
    badStatus: sum(runs.map((r) => r.badStatus)),
  });
  const fr = t.fixedRate;
  return {
    id: t.chain.id,
    ...(t.throughput.length === 0
      ? {}
      : {
          throughput: {
            ...wrkFigures(t.throughput),
            p50Ms: median(t.throughput.map((r) => r.p50Ms)),
            p99Ms: median(t.throughput.map((r) => r.p99Ms)),
          },
        }),
    ...(fr.length === 0
      ? {}
      : {
          fixedRate: {
            runs: fr,
            p50Ms: median(fr.map((r) => r.fromReady.p50Ms)),
            p99Ms: median(fr.map((r) => r.fromReady.p99Ms)),
            p999Ms: median(fr.map((r) => r.fromReady.p999Ms)),
            maxMs: Math.max(...fr.map((r) => r.fromReady.maxMs)),
            p99FromDueMs: median(fr.map((r) => r.fromDue.p99Ms)),
            failed: sum(fr.map((r) => r.failed)),
            queued: sum(fr.map((r) => r.queued)),
          },
        }),
    ...(t.newConnections.length === 0 ? {} : { newConnections: wrkFigures(t.newConnections) }),
    sidecars,
    ...(t.failure === undefined ? {} : { failure: t.failure }),
  };
}
