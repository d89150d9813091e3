/**
 * `npm run bench`: how fast kmtls resolves PeerAuthentication modes for a large mesh, how that grows,
 * and how it compares with a naive full scan; then how many certificates the CA issues per second
 * against the machine's own signing ceiling (bench/pki.ts); then the sidecar proxy against nginx and haproxy
 * (bench/proxy.ts); then the control plane: policy-change-to-enforcement latency for 1, 10 and 100
 * sidecars, and its memory per connected proxy (bench/controlplane.ts) — then writes BENCHMARKS.md from
 * the figures. `--only proxy` and `--only controlplane` run one of the last two parts alone and rewrite
 * only its section.
 *
 * Times are reported, never judged: the machine is shared, so nothing here fails on a time. It does
 * fail when the indexed resolution and the naive reference disagree on any workload's mode, and when
 * an issued certificate does not verify against the root or has the wrong shape.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import type { CasePlan, CaseResult } from './cases.js';
import { runCase } from './cases.js';
import type { ControlPlanePlan } from './controlplane.js';
import { runControlPlaneBench } from './controlplane.js';
import { renderControlPlaneSection, replaceControlPlaneSection } from './controlplane-report.js';
import { hasGc } from './measure.js';
import type { PkiPlan } from './pki.js';
import { runPkiBench } from './pki.js';
import { renderProxySection, replaceProxySection } from './proxy/report.js';
import type { ProxyPlan } from './proxy.js';
import { runProxyBench } from './proxy.js';
import type { Environment } from './report.js';
import { renderReport } from './report.js';

const SEED = 20_240_601;
const REPORT = new URL('../BENCHMARKS.md', import.meta.url);
const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

const HEADLINE: CasePlan = {
  shape: { label: '10k (headline)', workloads: 10_000, policies: 10_000, namespaces: 1_000, seed: SEED },
  index: { warmup: 3, runs: 15 },
  heapSamples: 5,
  resolve: { warmup: 2, runs: 15 },
  naive: { kind: 'interleaved', plan: { warmup: 1, runs: 5 } },
};

/**
 * The growth cases. Run plans shrink as a case gets slower so that the whole bench stays near two
 * minutes on two cores. The worst case (10,000 policies in 10 namespaces) runs with 2,500 workloads,
 * not 10,000: each of its workloads scans ~1,000 selector policies, and 10,000 of them take 10-20 s a
 * run; it gets no warm-up, as the same code is already warm from the cases before it. 40k × 40k is
 * checked against the naive scan on a sample: in full that would take ~40 s.
 */
const GROWTH: readonly CasePlan[] = [
  {
    shape: { label: '1k', workloads: 1_000, policies: 1_000, namespaces: 100, seed: SEED },
    index: { warmup: 3, runs: 15 },
    heapSamples: 5,
    resolve: { warmup: 3, runs: 15 },
    naive: { kind: 'once' },
  },
  {
    shape: { label: '40k', workloads: 40_000, policies: 40_000, namespaces: 4_000, seed: SEED },
    index: { warmup: 2, runs: 9 },
    heapSamples: 3,
    resolve: { warmup: 1, runs: 5 },
    naive: { kind: 'sample', every: 20 },
  },
  {
    shape: {
      label: '10k in 100 namespaces',
      workloads: 10_000,
      policies: 10_000,
      namespaces: 100,
      seed: SEED,
    },
    index: { warmup: 2, runs: 9 },
    heapSamples: 3,
    resolve: { warmup: 1, runs: 5 },
    naive: { kind: 'once' },
  },
  {
    shape: {
      label: '2.5k workloads, 10k policies in 10 namespaces',
      workloads: 2_500,
      policies: 10_000,
      namespaces: 10,
      seed: SEED,
    },
    index: { warmup: 2, runs: 9 },
    heapSamples: 3,
    resolve: { warmup: 0, runs: 3 },
    naive: { kind: 'once' },
  },
];

/**
 * The PKI part: ~25 s on two shared cores. 2,000 keys give one untimed and nine timed runs of 200
 * issuances per path, each key used once per path. The @peculiar/x509 baseline is bounded to 400
 * certificates per path, as it issues fewer than 500 per second; its JIT needs ~100 of them to settle
 * (the first hundred run ~3× slower than the third), hence the long warm-up.
 */
const PKI: PkiPlan = {
  poolSize: 2_000,
  rounds: 3,
  runsPerRound: 3,
  opensslSeconds: 1,
  rawSignsPerRun: 1_000,
  library: { warmup: 100, runs: 3, perRun: 100 },
};

/**
 * The sidecar part (bench/proxy.ts): about four minutes, nearly all of it load at fixed durations.
 * `--only proxy` runs just this part and rewrites just its section of BENCHMARKS.md.
 */
const PROXY: ProxyPlan = {
  throughput: {
    rounds: 3,
    warmupSeconds: 1,
    durationSeconds: 5,
    threads: 2,
    connections: 30,
    closeEachRequest: false,
  },
  fixedRate: { rounds: 2, ratePerSecond: 1_000, warmupMs: 1_000, durationMs: 8_000, connections: 16 },
  newConnections: {
    rounds: 2,
    warmupSeconds: 1,
    durationSeconds: 3,
    threads: 2,
    connections: 30,
    closeEachRequest: true,
  },
  withInfoLog: true,
  idleSeconds: 30,
};

/**
 * The control plane part (bench/controlplane.ts): about a minute and a half. Ten timed policy changes
 * per size (1, 10 and 100 sidecars, taking turns), after one untimed each; memory with 0, 10 and 100
 * connected proxies, then a Service in front of the 100, on three fresh control planes.
 */
const CONTROL_PLANE: ControlPlanePlan = {
  latency: {
    sizes: [1, 10, 100],
    warmup: 1,
    repetitions: 10,
    pauseMs: 200,
    probeConcurrency: 4,
    timeoutMs: 20_000,
  },
  memory: { repetitions: 3, steps: [0, 10, 100], settleMs: 1_000, rssSamples: 5, withService: true },
  startConcurrency: 10,
};

function describeCommit(): string {
  try {
    const git = (...args: string[]) => execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    const commit = git('rev-parse', '--short', 'HEAD');
    const dirty = git('status', '--porcelain', '--', 'src').length > 0;
    return dirty ? `${commit} with uncommitted changes in src/` : commit;
  } catch {
    return 'unknown (no git)';
  }
}

function describeCpu(): string {
  const cpus = os.cpus();
  const models = [...new Set(cpus.map((c) => c.model.trim()))];
  return `${models.join(' / ') || 'unknown'} × ${cpus.length} logical CPUs (os.cpus())`;
}

async function main(): Promise<void> {
  const started = performance.now();
  const log = (line: string) => console.log(line);
  log(`kmtls bench: node ${process.version}, ${describeCpu()}`);
  const proxyContext = (command: string) => ({
    command,
    date: new Date().toISOString(),
    commit: describeCommit(),
    node: process.version,
    cpu: describeCpu(),
  });
  if (process.argv.includes('--only')) {
    const only = process.argv[process.argv.indexOf('--only') + 1];
    if (only === 'controlplane') {
      const cp = await runControlPlaneBench(CONTROL_PLANE, REPO_ROOT, log);
      const section = renderControlPlaneSection(
        cp,
        proxyContext('node --import tsx bench/run.ts --only controlplane'),
      );
      writeFileSync(REPORT, replaceControlPlaneSection(readFileSync(REPORT, 'utf8'), section));
      log(`rewrote the control plane section of ${fileURLToPath(REPORT)} (${cp.totalSeconds.toFixed(0)} s)`);
      return;
    }
    if (only !== 'proxy')
      throw new Error(`--only ${only ?? ''}: only "proxy" or "controlplane" can run alone`);
    const proxy = await runProxyBench(PROXY, REPO_ROOT, log);
    const section = renderProxySection(proxy, proxyContext('node --import tsx bench/run.ts --only proxy'));
    writeFileSync(REPORT, replaceProxySection(readFileSync(REPORT, 'utf8'), section));
    log(`rewrote the sidecar proxy section of ${fileURLToPath(REPORT)} (${proxy.totalSeconds.toFixed(0)} s)`);
    return;
  }

  const headline = runCase(HEADLINE, log);
  const growth = GROWTH.map((plan) => runCase(plan, log));
  const byWorkloads = (a: CaseResult, b: CaseResult) =>
    a.workloads - b.workloads || b.plan.shape.namespaces - a.plan.shape.namespaces;
  const cases = [headline, ...growth].sort(byWorkloads);
  const pki = await runPkiBench(PKI, log);
  const proxy = renderProxySection(await runProxyBench(PROXY, REPO_ROOT, log), proxyContext('npm run bench'));
  const controlPlane = renderControlPlaneSection(
    await runControlPlaneBench(CONTROL_PLANE, REPO_ROOT, log),
    proxyContext('npm run bench'),
  );

  const env: Environment = {
    command: 'npm run bench',
    date: new Date().toISOString(),
    node: process.version,
    v8: process.versions.v8,
    cpu: describeCpu(),
    os: `${os.type()} ${os.release()} ${os.arch()}, ${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB RAM`,
    commit: describeCommit(),
    seed: SEED,
    totalSeconds: (performance.now() - started) / 1000,
  };
  writeFileSync(
    REPORT,
    replaceControlPlaneSection(renderReport(env, headline, cases, pki, proxy), controlPlane),
  );
  log(`wrote ${fileURLToPath(REPORT)} (${env.totalSeconds.toFixed(0)} s)`);
}

if (hasGc()) {
  await main();
} else {
  // Forcing a GC between runs needs --expose-gc, which `npm run bench` does not pass: run again with it.
  const child = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
  });
  process.exitCode = child.status ?? 1;
}
