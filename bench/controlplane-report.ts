/**
 * The "Control plane" section of BENCHMARKS.md, rendered from one run of bench/controlplane.ts. The
 * wording follows the figures of the run; nothing is judged against a time. The section sits between
 * two markers, so that `bench/run.ts --only controlplane` can replace it alone and leave the rest of
 * the file as it was.
 */
import type { ChangeResult, ControlPlaneBenchResult, MemoryReading } from './controlplane.js';
import { median } from './measure.js';
import type { SectionContext } from './proxy/report.js';

export const CP_SECTION_BEGIN = '<!-- bench:controlplane:begin -->';
export const CP_SECTION_END = '<!-- bench:controlplane:end -->';

function ms(value: number): string {
  if (!Number.isFinite(value)) return '—';
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function ratio(value: number): string {
  if (!Number.isFinite(value)) return '—';
  if (value >= 10) return `${value.toFixed(0)}×`;
  return value >= 1 ? `${value.toFixed(1)}×` : `${value.toFixed(2)}×`;
}

/** Megabytes of 10^6 bytes, as the sidecar section. */
const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);
/** Kilobytes of 10^3 bytes. */
const kb = (bytes: number): string => (bytes / 1e3).toFixed(0);
const int = (n: number): string => Math.round(n).toLocaleString('en-US');

/** Nearest-rank percentile. */
function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

interface Spread {
  readonly p50: number;
  readonly p90: number;
  readonly max: number;
  readonly min: number;
}

function spread(values: readonly number[]): Spread {
  if (values.length === 0) return { p50: Number.NaN, p90: Number.NaN, max: Number.NaN, min: Number.NaN };
  return {
    p50: median(values),
    p90: percentile(values, 90),
    max: Math.max(...values),
    min: Math.min(...values),
  };
}

function table(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  rightAligned: readonly number[] = [],
): string {
  const align = headers.map((_, i) => (rightAligned.includes(i) ? '---:' : '---'));
  return [headers, align, ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}

const plural = (n: number, one: string, many = `${one}s`) => `${int(n)} ${n === 1 ? one : many}`;

interface SizeFigures {
  readonly size: number;
  readonly changes: readonly ChangeResult[];
  readonly wire: Spread;
  readonly applied: Spread;
  readonly cp: Spread;
  readonly noticed: number;
  readonly firstApplied: number;
  /** When the control plane had the last acknowledgement, ms after t0 (median). */
  readonly cpDone: number;
  readonly cpCpu: number;
  readonly benchCpu: number;
  readonly probeMs: number;
  /** Last on the wire − last applied, per change (median). */
  readonly wireLag: number;
}

function bySize(r: ControlPlaneBenchResult): SizeFigures[] {
  return r.plan.latency.sizes.map((size) => {
    const changes = r.latency.changes.filter((c) => c.size === size);
    const pick = (f: (c: ChangeResult) => number) => changes.map(f);
    return {
      size,
      changes,
      wire: spread(pick((c) => c.wireMs)),
      applied: spread(pick((c) => c.appliedMs)),
      cp: spread(pick((c) => c.cpLatencyMs)),
      noticed: median(pick((c) => c.noticedMs)),
      firstApplied: median(pick((c) => c.firstAppliedMs)),
      cpDone: median(pick((c) => c.noticedMs + c.cpLatencyMs)),
      cpCpu: median(pick((c) => c.cpCpuMs)),
      benchCpu: median(pick((c) => c.benchCpuMs)),
      probeMs: median(pick((c) => c.probeMs)),
      wireLag: median(pick((c) => c.wireMs - c.appliedMs)),
    };
  });
}

interface MemoryFigures {
  readonly proxies: number;
  readonly withService: boolean;
  readonly rss: Spread;
  readonly rssAfterGc: Spread;
  readonly heap: Spread;
}

/** One row per step, over the repetitions. */
function memorySteps(series: readonly (readonly MemoryReading[])[]): MemoryFigures[] {
  const first = series[0] ?? [];
  return first.map((_, i) => {
    const at = series.map((rep) => rep[i]!).filter((m) => m !== undefined);
    return {
      proxies: first[i]!.proxies,
      withService: first[i]!.withService === true,
      rss: spread(at.map((m) => m.rssBytes)),
      rssAfterGc: spread(at.map((m) => m.rssAfterGcBytes)),
      heap: spread(at.map((m) => m.heapUsedBytes + m.externalBytes)),
    };
  });
}

/** Per repetition: (value at `to` − value at `from`) / (to − from) proxies; then their spread. */
function slope(
  series: readonly (readonly MemoryReading[])[],
  from: (m: MemoryReading) => boolean,
  to: (m: MemoryReading) => boolean,
  value: (m: MemoryReading) => number,
  per: (a: MemoryReading, b: MemoryReading) => number,
): Spread {
  const slopes: number[] = [];
  for (const rep of series) {
    const a = rep.find(from);
    const b = rep.find(to);
    if (a && b) slopes.push((value(b) - value(a)) / per(a, b));
  }
  return spread(slopes);
}

const rangeMb = (s: Spread) => `${mb(s.p50)} (${mb(s.min)}–${mb(s.max)})`;
const rangeKb = (s: Spread) => `${kb(s.p50)} (${kb(s.min)}–${kb(s.max)})`;

export function renderControlPlaneSection(r: ControlPlaneBenchResult, ctx: SectionContext): string {
  const lp = r.plan.latency;
  const mp = r.plan.memory;
  const sizes = bySize(r);
  const hiStep = Math.max(...mp.steps);
  const loStep = mp.steps[mp.steps.length - 2] ?? 0;
  const one = sizes.find((s) => s.size === 1) ?? sizes[0]!;
  const biggest = sizes[sizes.length - 1]!;
  const out: string[] = [];
  out.push(CP_SECTION_BEGIN);
  out.push('## Control plane: from a policy change to enforcement, and memory per proxy');
  out.push('');
  out.push(
    `Written by \`${ctx.command}\` on ${ctx.date} (commit ${ctx.commit}; ${ctx.cpu}; node ${ctx.node}); ` +
      '`npm run build && node --import tsx bench/run.ts --only controlplane` reruns only this section ' +
      `(about ${Math.round(r.totalSeconds / 10) * 10 || 10} s) and leaves the rest of this file as it is. bench/controlplane.ts.`,
  );
  out.push('');
  out.push(
    '- **Control plane**: the real one, `node bin/kmtls.js controlplane --dir … --state-dir … --placement … --tokens … ' +
      '--listen … --admin … --log-level info` in its own process, as `kmtls up` runs it: it watches a temporary directory of ' +
      'manifests, so a change goes through the directory watcher (25 ms debounce), YAML parsing, the snapshot rebuild and ' +
      "a ProxyConfig per sidecar, pushed on each sidecar's mTLS config stream.",
    `- **Sidecars**: the real client and proxy (\`ControlPlaneClient\` driving a \`Sidecar\`): each gets its certificate with ` +
      'its own bootstrap token, holds a config stream, opens its listeners on its own loopback pod IP (127.200.x.y) and ' +
      'acknowledges every version it applies. **All of them run in one Node process, the bench’s**, where `kmtls up` runs ' +
      'one process per sidecar: their config parsing, listener updates and acknowledgements take turns on one event loop, ' +
      'which weighs on the 100-sidecar figures (below). One TCP server on 127.0.0.1 stands for every application.',
    `- **The latency mesh**: ${plural(r.latency.meshPods, 'sidecar')}, all connected throughout, in ` +
      `${lp.sizes.length} namespaces of ${lp.sizes.join(', ')} pods (\`lat-N\`: a Deployment behind a Service, and a namespace-wide ` +
      'PeerAuthentication of its own). As `kmtls up` lays a mesh out, every sidecar has an outbound listener for every ' +
      `Service, so every config lists all ${r.latency.meshPods} endpoints; every change rebuilds every sidecar's config and ` +
      `pushes the ones that differ. Bringing the ${r.latency.meshPods} sidecars up (certificate, stream, first config, ` +
      `acknowledged) took ${(r.latency.startupMs / 1000).toFixed(1)} s, ${lp.sizes.length > 0 ? r.plan.startConcurrency : 0} at a time.`,
    "- **A change**: namespace `lat-N`'s PeerAuthentication file is replaced by rename (as editors save), STRICT ↔ PERMISSIVE in turn; t0 is " +
      `just before the write. It changes the config of exactly N sidecars (checked against the control plane's ` +
      `\`lastChange.pods\`). ${plural(lp.warmup, 'untimed change')} per size first, then ${lp.repetitions} timed per size; the three ` +
      `sizes take turns in every round, in a rotating order, with ${lp.pauseMs} ms of quiet after each change is fully acknowledged.`,
    '- **On the wire**: from t0, every pod of the namespace is probed with plaintext (a TCP connection that sends a line at ' +
      'once: a STRICT sidecar closes it on that first byte, a PERMISSIVE one forwards it to the application, which answers), ' +
      `round-robin, ${lp.probeConcurrency} probes in flight, until every pod has answered as the new mode says; the figure is ` +
      `when the last pod was first seen so. A probe's round trip to an idle sidecar takes ${ms(r.latency.idleProbeMs)} ms (median).`,
    "- **Applied**: when each sidecar's `applyConfig` returned with the new mode, timed in the bench process (the listener " +
      'enforces a new mode from that moment, for new connections).',
    '- **Control plane `latencyMs`**: its own figure, `lastChange.latencyMs` from its admin `/status`: from noticing the ' +
      'change (when the rescan that read it started, after the watcher’s debounce) to the acknowledgement of the last ' +
      'affected sidecar. Also read: `lastChange.noticedAtMs` (against t0 on the same wall clock, ms resolution), and the ' +
      "control plane's CPU time (/proc utime + stime) from t0 until the change was fully acknowledged.",
    `- **Memory**: ${plural(mp.repetitions, 'fresh control plane')}, each over one namespace with a ` +
      `${Math.max(...mp.steps)}-replica Deployment; the placement file names ${mp.steps.join(', then ')} of its pods, and as many ` +
      'sidecars connect and acknowledge their config (a proxy counts once it is placed, connected and up to date). ' +
      `${int(mp.settleMs)} ms later: VmRSS from /proc/PID/status (median of ${mp.rssSamples} readings), then a full GC in the ` +
      'control plane and its `process.memoryUsage()` (the bench starts it with `--expose-gc` and a preload that answers ' +
      `SIGUSR2; nothing in src/ is changed for it). Per proxy: (value at ${hiStep} − value at ${loStep}) ÷ ${hiStep - loStep}, ` +
      'per repetition.' +
      (mp.withService
        ? ` Then a Service is put in front of all ${Math.max(...mp.steps)} pods (every proxy's config then lists every pod ` +
          'as an endpoint) and memory is read again.'
        : ''),
  );
  const busyShare = r.machineBusySeconds > 0 ? Math.max(0, r.machineBusySeconds - r.ownSeconds) : 0;
  out.push(
    `- **Other load**: while this section ran, work outside the bench took ${busyShare.toFixed(0)} of the ` +
      `${r.machineBusySeconds.toFixed(0)} CPU seconds the machine was busy (${r.machineBusySeconds > 0 ? ((100 * busyShare) / r.machineBusySeconds).toFixed(0) : 0}%). ` +
      'p50 is the median; p90 the nearest rank; figures of different sizes come from the same rounds.',
  );
  out.push('');

  out.push('### From a policy change to enforcement: 1, 10 and 100 sidecars side by side');
  out.push('');
  out.push(
    table(
      [
        'sidecars the change reaches',
        'changes',
        'last pod enforcing on the wire, ms: p50',
        'p90',
        'max',
        `÷ ${one.size} sidecar (p50)`,
        'control plane `latencyMs`: p50',
        'p90',
        'max',
        `÷ ${one.size} sidecar (p50)`,
      ],
      sizes.map((s) => [
        `**${int(s.size)}**`,
        String(s.changes.length),
        `**${ms(s.wire.p50)}**`,
        ms(s.wire.p90),
        ms(s.wire.max),
        ratio(s.wire.p50 / one.wire.p50),
        `**${ms(s.cp.p50)}**`,
        ms(s.cp.p90),
        ms(s.cp.max),
        ratio(s.cp.p50 / one.cp.p50),
      ]),
      [1, 2, 3, 4, 5, 6, 7, 8, 9],
    ),
  );
  out.push('');
  out.push('Where the time goes, in ms after t0 (medians over the same changes):');
  out.push('');
  out.push(
    table(
      [
        'sidecars',
        'control plane noticed the change',
        'first sidecar applied',
        'last sidecar applied: p50',
        'p90',
        'max',
        'last pod enforcing on the wire',
        'control plane had the last acknowledgement',
        'control plane CPU per change, ms',
        'bench process CPU per change, ms (sidecars, probes, application)',
        'a probe’s round trip meanwhile, mean ms',
      ],
      sizes.map((s) => [
        int(s.size),
        ms(s.noticed),
        ms(s.firstApplied),
        ms(s.applied.p50),
        ms(s.applied.p90),
        ms(s.applied.max),
        ms(s.wire.p50),
        ms(s.cpDone),
        ms(s.cpCpu),
        ms(s.benchCpu),
        ms(s.probeMs),
      ]),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    ),
  );
  out.push('');

  out.push('### Control plane memory per connected proxy');
  out.push('');
  const steps = [
    ...memorySteps(r.memory).map((s) => ({ ...s, what: 'kmtls control plane' })),
    ...memorySteps(r.reference).map((s) => ({ ...s, what: 'reference: a bare Node https server' })),
  ];
  out.push(
    table(
      [
        'process',
        'connected proxies (reference: open mTLS streams)',
        'VmRSS MB, median (min–max)',
        'RSS after a full GC, MB',
        'V8 heap used + external after a full GC, MB',
      ],
      steps.map((s) => [
        s.what,
        s.withService ? `${int(s.proxies)}, and a Service in front of them all` : int(s.proxies),
        rangeMb(s.rss),
        rangeMb(s.rssAfterGc),
        rangeMb(s.heap),
      ]),
      [1, 2, 3, 4],
    ),
  );
  out.push('');
  const lo = loStep;
  const hi = hiStep;
  const isPlain = (n: number) => (m: MemoryReading) => m.proxies === n && m.withService !== true;
  const perProxy = (a: MemoryReading, b: MemoryReading) => b.proxies - a.proxies;
  const heapOf = (m: MemoryReading) => m.heapUsedBytes + m.externalBytes;
  const rssSlope = slope(r.memory, isPlain(lo), isPlain(hi), (m) => m.rssBytes, perProxy);
  const gcSlope = slope(r.memory, isPlain(lo), isPlain(hi), (m) => m.rssAfterGcBytes, perProxy);
  const heapSlope = slope(r.memory, isPlain(lo), isPlain(hi), heapOf, perProxy);
  const ref = {
    rss: slope(r.reference, isPlain(lo), isPlain(hi), (m) => m.rssBytes, perProxy),
    gc: slope(r.reference, isPlain(lo), isPlain(hi), (m) => m.rssAfterGcBytes, perProxy),
    heap: slope(r.reference, isPlain(lo), isPlain(hi), heapOf, perProxy),
  };
  const withSvc = (m: MemoryReading) => m.withService === true;
  const svc = mp.withService
    ? {
        rss: slope(
          r.memory,
          isPlain(hi),
          withSvc,
          (m) => m.rssBytes,
          () => hi,
        ),
        gc: slope(
          r.memory,
          isPlain(hi),
          withSvc,
          (m) => m.rssAfterGcBytes,
          () => hi,
        ),
        heap: slope(r.memory, isPlain(hi), withSvc, heapOf, () => hi),
      }
    : undefined;
  const slopeRows: string[][] = [
    [
      `**per proxy, slope from ${lo} to ${hi} proxies**`,
      `**${rangeKb(rssSlope)}**`,
      rangeKb(gcSlope),
      `**${rangeKb(heapSlope)}**`,
    ],
  ];
  if (svc)
    slopeRows.push([
      `per proxy, added by the Service in front of all ${hi}`,
      rangeKb(svc.rss),
      rangeKb(svc.gc),
      rangeKb(svc.heap),
    ]);
  if (r.reference.length > 0)
    slopeRows.push([
      `reference: per idle mTLS stream held by a bare Node https server, slope from ${lo} to ${hi}`,
      rangeKb(ref.rss),
      rangeKb(ref.gc),
      rangeKb(ref.heap),
    ]);
  out.push(
    table(
      [
        'KB (10^3 bytes), median of the repetitions (min–max)',
        'VmRSS',
        'RSS after a full GC',
        'V8 heap used + external',
      ],
      slopeRows,
      [1, 2, 3],
    ),
  );
  out.push('');

  out.push('### Reading the figures');
  out.push('');
  out.push(...findings(r, sizes, one, biggest, { rssSlope, heapSlope, svc, ref, hi }));
  out.push('');
  out.push(CP_SECTION_END);
  return out.join('\n');
}

function findings(
  r: ControlPlaneBenchResult,
  sizes: readonly SizeFigures[],
  one: SizeFigures,
  big: SizeFigures,
  mem: {
    rssSlope: Spread;
    heapSlope: Spread;
    svc: { rss: Spread; heap: Spread } | undefined;
    ref: { rss: Spread; heap: Spread };
    hi: number;
  },
): string[] {
  const lines: string[] = [];
  const mid = sizes.filter((s) => s !== one && s !== big);
  lines.push(
    `- **Growth.** The last of ${int(big.size)} sidecars enforced a change on the wire ${ms(big.wire.p50)} ms after the write ` +
      `(median; p90 ${ms(big.wire.p90)}), ${ratio(big.wire.p50 / one.wire.p50)} the ${ms(one.wire.p50)} ms of a change that ` +
      `reaches ${one.size} sidecar` +
      (mid.length > 0
        ? mid
            .map(
              (s) => `; ${int(s.size)} sidecars: ${ms(s.wire.p50)} ms (${ratio(s.wire.p50 / one.wire.p50)})`,
            )
            .join('')
        : '') +
      `. The control plane's own \`latencyMs\` went from ${ms(one.cp.p50)} to ${ms(big.cp.p50)} ms ` +
      `(${ratio(big.cp.p50 / one.cp.p50)}).`,
  );
  lines.push(
    `- **A change reaching one sidecar.** The control plane noticed the write after ${ms(one.noticed)} ms (the watcher's ` +
      `25 ms debounce and the event), and the sidecar had applied it at ${ms(one.applied.p50)} ms: about ` +
      `${ms(one.applied.p50 - one.noticed)} ms for the control plane to rebuild the snapshot and all ${int(r.latency.meshPods)} ` +
      'configs (every config lists every endpoint) and find the one that changed, push it, and for the sidecar to parse and ' +
      `apply it. The control plane used ${ms(one.cpCpu)} ms of CPU per such change (median), status reads included.`,
  );
  const perAck = sizes.length > 1 ? (big.cpCpu - one.cpCpu) / (big.size - one.size) : Number.NaN;
  const afterApplied = big.cpDone - big.applied.p50;
  lines.push(
    `- **The control plane's figure against enforcement, ${int(big.size)} sidecars.** The last sidecar had applied the ` +
      `change at ${ms(big.applied.p50)} ms (median) and was seen enforcing it on the wire at ${ms(big.wire.p50)} ms; the ` +
      `control plane had the last acknowledgement at ${ms(big.cpDone)} ms, ${ms(afterApplied)} ms after the last ` +
      `apply (for one sidecar: ${ms(one.cpDone - one.applied.p50)} ms). Each acknowledgement is a new mTLS connection ` +
      '(src/proxy/cp-client.ts: `callControlPlane` sets `agent: false`), whose client certificate the control plane ' +
      'verifies in the TLS handshake and again in JavaScript: its CPU per change grew from ' +
      `${ms(one.cpCpu)} ms (${one.size} sidecar) to ${ms(big.cpCpu)} ms (${int(big.size)}), about ${ms(perAck)} ms per ` +
      'affected sidecar, push and acknowledgement together. `latencyMs` is when the control plane has heard back from ' +
      'every sidecar, an upper bound on enforcement.',
  );
  lines.push(
    `- **In one process.** The ${int(big.size)} sidecars share one event loop: the first applied the change at ` +
      `${ms(big.firstApplied)} ms and the last at ${ms(big.applied.p50)} ms (medians), and their ${int(big.size)} ` +
      'acknowledgement handshakes, client side, run on that loop too. The bench process used ' +
      `${ms(big.benchCpu)} ms of CPU per ${int(big.size)}-sidecar change (${ms(one.benchCpu)} ms for one sidecar), and a ` +
      `probe's round trip, ${ms(r.latency.idleProbeMs)} ms to an idle sidecar, averaged ${ms(big.probeMs)} ms meanwhile ` +
      `(${ms(one.probeMs)} ms during one-sidecar changes): the last pod was seen enforcing ${ms(big.wireLag)} ms after the ` +
      `last sidecar applied (median; ${ms(one.wireLag)} ms for one sidecar). Part of the ${int(big.size)}-sidecar wire ` +
      'figure is this queue, which one process per sidecar, as `kmtls up` runs them, would not have; on these two cores ' +
      'they would still share the CPU.',
  );
  const refShare = mem.rssSlope.p50 > 0 ? (100 * mem.ref.rss.p50) / mem.rssSlope.p50 : Number.NaN;
  lines.push(
    `- **Memory.** Each connected proxy added ${kb(mem.rssSlope.p50)} KB to the control plane's resident memory ` +
      `(median slope; ${kb(mem.rssSlope.min)}–${kb(mem.rssSlope.max)} over the repetitions), of which ` +
      `${kb(mem.heapSlope.p50)} KB is V8 heap + external after a full GC: its pod's entry and config, its config ` +
      'stream, the certificate it was issued. The rest is native memory. For comparison, a bare Node https server with ' +
      `the control plane's TLS options, holding idle mTLS streams, took ${kb(mem.ref.rss.p50)} KB of RSS ` +
      `(${kb(mem.ref.heap.p50)} KB of heap) per stream in the same run: ${Number.isFinite(refShare) ? refShare.toFixed(0) : '—'}% ` +
      "of the control plane's figure per proxy." +
      (mem.svc
        ? ` With one Service in front of all ${mem.hi} pods, every proxy's config lists ${mem.hi} endpoints: that added ` +
          `${kb(mem.svc.heap.p50)} KB of heap per proxy (${kb(mem.svc.rss.p50)} KB RSS), so the cost per proxy grows with the ` +
          'endpoints its config carries, i.e. with the mesh.'
        : ''),
  );
  lines.push(
    '- **How the file is written.** The bench replaces the policy file by rename, as editors and `sed -i` save. ' +
      'The control plane watches each directory (not a recursive watch, which on Node 20 / Linux loses a file once it has ' +
      'been replaced this way).',
  );
  lines.push(
    `- **Noise.** Two shared cores carry the control plane, ${int(r.latency.meshPods)} sidecars, the probes and the ` +
      'application: compare sizes within one run, by the ratios, not absolute times across runs.',
  );
  for (const i of r.interruptions) {
    lines.push(
      `- **Run again.** ${i}; that part was run again from the start, and only the second run is reported.`,
    );
  }
  return lines;
}

/** Puts the section in place of the previous one, or at the end of the file when there is none. */
export function replaceControlPlaneSection(markdown: string, section: string): string {
  const begin = markdown.indexOf(CP_SECTION_BEGIN);
  const end = markdown.indexOf(CP_SECTION_END);
  if (begin >= 0 && end > begin) {
    return markdown.slice(0, begin) + section + markdown.slice(end + CP_SECTION_END.length);
  }
  return `${markdown.trimEnd()}\n\n${section}\n`;
}
