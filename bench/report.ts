/**
 * Renders BENCHMARKS.md from the figures of one run. The reading at the end is written from the
 * figures too (its wording follows the numbers), so the file never says more than the run showed.
 */
import type { CaseResult } from './cases.js';
import type { Timing } from './measure.js';
import type { PkiResult } from './pki.js';
import { renderPkiSection } from './pki-report.js';

export interface Environment {
  readonly command: string;
  readonly date: string;
  readonly node: string;
  readonly v8: string;
  readonly cpu: string;
  readonly os: string;
  readonly commit: string;
  readonly seed: number;
  readonly totalSeconds: number;
}

const int = (n: number): string => Math.round(n).toLocaleString('en-US');

function ms(value: number): string {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function ratio(value: number): string {
  if (value >= 10) return `${value.toFixed(0)}×`;
  return value >= 1 ? `${value.toFixed(1)}×` : `${value.toFixed(2)}×`;
}

/** Naive over indexed medians; the headline compares its alternating runs, the other cases their own. */
function naiveOverIndexed(c: CaseResult): number | undefined {
  if (c.naive === undefined) return undefined;
  return c.naive.medianMs / (c.sideBySide?.indexed ?? c.resolve).medianMs;
}

const mib = (bytes: number): string => (bytes / 1024 / 1024).toFixed(2);

function table(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  rightAligned: readonly number[] = [],
): string {
  const align = headers.map((_, i) => (rightAligned.includes(i) ? '---:' : '---'));
  return [headers, align, ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}

function timingCells(t: Timing): string[] {
  return [ms(t.medianMs), ms(t.minMs), ms(t.maxMs), String(t.runsMs.length)];
}

const scannedPerWorkload = (c: CaseResult): number => c.selectorChecks / c.workloads;
const nsPerCheck = (c: CaseResult): number => (c.resolve.medianMs * 1e6) / c.selectorChecks;
const usPerWorkload = (c: CaseResult): number => (c.resolve.medianMs * 1000) / c.workloads;

function describeRunPlans(c: CaseResult): string {
  const { index, resolve } = c.plan;
  return `index ${index.warmup}+${index.runs}, resolve ${resolve.warmup}+${resolve.runs}`;
}

function naiveCell(c: CaseResult): string {
  if (c.naive === undefined) return 'not timed';
  return c.naive.runsMs.length === 1 ? `${ms(c.naive.medianMs)} (1 run)` : ms(c.naive.medianMs);
}

function verifiedCell(c: CaseResult): string {
  return c.verifiedWorkloads === c.workloads
    ? `all ${int(c.workloads)}`
    : `${int(c.verifiedWorkloads)} (every ${c.plan.naive.kind === 'sample' ? c.plan.naive.every : '?'}th)`;
}

function readHeadline(h: CaseResult): string[] {
  const resolveMs = h.resolve.medianMs;
  const verdict =
    resolveMs < 500
      ? 'well under the one-second target'
      : resolveMs < 1000
        ? 'under the one-second target, but not by much'
        : 'over the one-second target';
  const lines = [
    `- **Headline.** Resolving the effective inbound mode of all ${int(h.workloads)} workloads and their ` +
      `${int(h.declaredPorts)} declared ports against ${int(h.policies)} PeerAuthentications took ` +
      `${ms(resolveMs)} ms (median; ${ms(h.resolve.minMs)}–${ms(h.resolve.maxMs)} ms over ${h.resolve.runsMs.length} runs), ` +
      `about ${usPerWorkload(h).toFixed(0)} µs per workload: ${verdict}. Building the index first took ` +
      `${ms(h.indexBuild.medianMs)} ms and it holds ${mib(h.indexRetainedBytes)} MiB of heap ` +
      `(${int(h.indexRetainedBytes / h.policies)} bytes per policy, on top of the policies themselves).`,
  ];
  if (h.naive !== undefined) {
    const besides = h.sideBySide?.indexed ?? h.resolve;
    lines.push(
      `- **Against the naive scan.** In the same run, alternating with it on the same data, scanning all ` +
        `${int(h.policies)} policies for every workload took ${ms(h.naive.medianMs)} ms against ` +
        `${ms(besides.medianMs)} ms with the index: the index is ${ratio(h.naive.medianMs / besides.medianMs)} faster. ` +
        `Both gave the same mode for every workload and every declared port, and chose the same mesh, ` +
        `namespace and workload policy (checked slot by slot; the bench stops if they differ).`,
    );
  }
  const indexed = h.sideBySide?.indexed ?? h.resolve;
  const modesOnly = h.sideBySide?.modesOnly ?? h.modesOnly;
  const explanationShare = 1 - modesOnly.medianMs / indexed.medianMs;
  lines.push(
    `- **Where the time goes.** The mode-only fast path over the same index (\`effectiveInboundMtls\`, ` +
      `no \`notMatching\`, \`ignored\` or \`chain\`) took ${ms(modesOnly.medianMs)} ms against ` +
      `${ms(indexed.medianMs)} ms in the same alternating runs, so about ` +
      `${(explanationShare * 100).toFixed(0)}% of \`resolveInboundMtls\` is the explanation that ` +
      `\`kmtls explain\` shows. Callers that need only modes (\`decideEdge\`, the analyzers) use the fast path.`,
  );
  return lines;
}

function readScaling(cases: readonly CaseResult[], h: CaseResult): string[] {
  const lines: string[] = [];
  const spread = cases
    .filter((c) => c.plan.shape.namespaces * 10 === c.plan.shape.workloads)
    .sort((a, b) => a.workloads - b.workloads);
  const packed = cases
    .filter((c) => c.policies === h.policies && c.plan.shape.namespaces < h.plan.shape.namespaces)
    .sort((a, b) => b.plan.shape.namespaces - a.plan.shape.namespaces);
  if (spread.length > 1) {
    const perWorkload = spread.map((c) => `${usPerWorkload(c).toFixed(0)} µs at ${int(c.workloads)}`);
    const costs = spread.map(usPerWorkload);
    const first = spread[0];
    const last = spread[spread.length - 1];
    const growth =
      first === undefined || last === undefined || first === last
        ? ''
        : ` From ${int(first.workloads)} to ${int(last.workloads)} workloads (${ratio(last.workloads / first.workloads)}) ` +
          `the time grew ${ratio(last.resolve.medianMs / first.resolve.medianMs)}.`;
    const spreadRatio = Math.max(...costs) / Math.min(...costs);
    const verdict =
      spreadRatio <= 2
        ? 'time grows about linearly with the number of workloads.'
        : 'more than noise explains: in this run time grew faster than the number of workloads.';
    const cacheNote =
      first !== undefined && usPerWorkload(first) === Math.min(...costs)
        ? ' The smallest mesh is the cheapest per workload, likely because all of it fits in CPU caches.'
        : '';
    lines.push(
      `- **More workloads, same density.** With about ten workloads and ten policies per namespace, each workload ` +
        `scans about the same number of selector policies at every size, and the cost per workload stays within ` +
        `${ratio(spreadRatio)} (${perWorkload.join(', ')}): ${verdict}${growth}${cacheNote}`,
    );
  }
  if (packed.length > 0) {
    const parts = packed.map(
      (c) =>
        `${int(c.workloads)} workloads in ${int(c.plan.shape.namespaces)} namespaces each scan ` +
        `${scannedPerWorkload(c).toFixed(0)} selector policies, workloads × scanned is ` +
        `${ratio(c.selectorChecks / h.selectorChecks)} the headline's, and resolution took ${ms(c.resolve.medianMs)} ms ` +
        `(${ratio(c.resolve.medianMs / h.resolve.medianMs)} the headline's)`,
    );
    lines.push(
      `- **The same ${int(h.policies)} policies packed into fewer namespaces.** The index narrows the scan to one ` +
        `namespace, so a namespace with many selector policies is scanned in full by each of its workloads: ` +
        `${parts.join('; ')}.`,
    );
  }
  const perCheck = cases.map(nsPerCheck);
  const lo = Math.min(...perCheck);
  const hi = Math.max(...perCheck);
  const linear = hi / lo <= 3;
  lines.push(
    linear
      ? `- **Growth.** Across all cases the cost per selector-policy check stays between ${lo.toFixed(0)} and ` +
          `${hi.toFixed(0)} ns (${ratio(hi / lo)} apart, on a shared machine), so resolution is roughly linear in ` +
          `workloads × selector policies per namespace (the root namespace's few selector policies count for every workload).`
      : `- **Growth.** The cost per selector-policy check ranges from ${lo.toFixed(0)} to ${hi.toFixed(0)} ns ` +
          `(${ratio(hi / lo)} apart), more than noise explains: resolution is not simply linear in ` +
          `workloads × selector policies per namespace in this run; see the scaling table.`,
  );
  const worst = packed[packed.length - 1];
  if (worst?.naive !== undefined) {
    const r = naiveOverIndexed(worst) ?? 0;
    const where =
      `With ${int(worst.workloads)} workloads and ${int(worst.policies)} policies in ` +
      `${int(worst.plan.shape.namespaces)} namespaces`;
    const headlineRatio = naiveOverIndexed(h);
    lines.push(
      r >= 1
        ? `- **Worst case.** ${where} the index still beats the naive scan, but only ${ratio(r)}` +
            (headlineRatio === undefined ? '.' : ` (against ${ratio(headlineRatio)} in the headline).`)
        : `- **Worst case.** ${where} the indexed resolution (${ms(worst.resolve.medianMs)} ms) is *slower* than ` +
            `the naive full scan (${ms(worst.naive.medianMs)} ms, one run): the index saves little when a few ` +
            `namespaces hold most policies, and every non-matching policy still costs an explanation entry. ` +
            `The mode-only fast path (\`effectiveInboundMtls\`) over the same index took ${ms(worst.modesOnly.medianMs)} ms.`,
    );
  }
  return lines;
}

export function renderReport(
  env: Environment,
  headline: CaseResult,
  cases: readonly CaseResult[],
  pki: PkiResult,
  /** The sidecar proxy section, already rendered (bench/proxy/report.ts). */
  proxySection?: string,
): string {
  const h = headline;
  const mix = h.mix;
  const out: string[] = [];
  out.push('# Benchmarks');
  out.push('');
  out.push(
    `Written by \`${env.command}\` (bench/run.ts); do not edit by hand, rerun it. The machine is shared and noisy: ` +
      'read medians and ratios, not single runs. No figure here is a pass/fail threshold.',
  );
  out.push('');
  out.push(
    [
      `- Command: \`${env.command}\``,
      `- Date: ${env.date}`,
      `- Node: ${env.node} (V8 ${env.v8})`,
      `- CPU: ${env.cpu}`,
      `- OS: ${env.os}`,
      `- Commit: ${env.commit}`,
      `- Synthetic data: seeded PRNG (mulberry32), seed ${env.seed}; the same meshes on every run`,
      `- Whole run: ${env.totalSeconds.toFixed(0)} s, including data generation and the checks against the naive scan`,
    ].join('\n'),
  );
  out.push('');
  out.push('## What is measured');
  out.push('');
  out.push(
    '- **Index build**: `indexPeerAuthentications(policies)`, sorting by creation and grouping by namespace, as `buildMeshSnapshot` does once per snapshot.',
  );
  out.push(
    '- **Resolve all**: for every workload, `resolveInboundMtls(index, workload)` then `modeForPort` for each declared container port, as `explain` and `analyze` call them.',
  );
  out.push(
    '- **Index heap**: `heapUsed` after minus before building an index, with a full GC on both sides and the index still reachable (median of several builds).',
  );
  out.push(
    '- Each timing is the median, min and max of the timed runs after untimed warm-up runs; a full GC runs before every run, outside the timer.',
  );
  out.push(
    "- **Naive full scan** (bench/naive.ts): the reference point, every workload checked against every policy, written from Istio's Go code rather than from `src/policy`.",
  );
  out.push(
    '- **Mode-only fast path** (`effectiveInboundMtls` + `effectiveModeForPort` in src/policy): the same index and decision without building the explanation; what `decideEdge` and the analyzers call.',
  );
  out.push('');
  out.push(
    `## Headline: ${int(h.workloads)} workloads × ${int(h.policies)} PeerAuthentications in ${int(h.plan.shape.namespaces)} namespaces`,
  );
  out.push('');
  out.push(
    table(
      ['measurement', 'median ms', 'min ms', 'max ms', 'runs'],
      [
        [`Build the index (${int(h.policies)} policies)`, ...timingCells(h.indexBuild)],
        [
          `Resolve all ${int(h.workloads)} workloads (${int(h.declaredPorts)} ports)`,
          ...timingCells(h.resolve),
        ],
      ],
      [1, 2, 3, 4],
    ),
  );
  out.push('');
  out.push(
    `Per workload: ${usPerWorkload(h).toFixed(1)} µs (median). Index heap: ${mib(h.indexRetainedBytes)} MiB ` +
      `(${int(h.indexRetainedBytes / h.policies)} bytes per policy), median of ${h.plan.heapSamples} builds. ` +
      `Warm-up runs: ${h.plan.index.warmup} (index), ${h.plan.resolve.warmup} (resolve).`,
  );
  out.push('');
  out.push('The synthetic mesh of the headline:');
  out.push('');
  out.push(
    table(
      ['PeerAuthentications', 'count'],
      [
        ['mesh-wide in istio-system', int(mix.meshWide)],
        ['… a newer duplicate mesh-wide one (ignored)', int(mix.meshWideDuplicates)],
        ['namespace-wide (no selector)', int(mix.namespaceWide)],
        [
          '… a newer duplicate namespace-wide one, `selector: {}` (ignored)',
          int(mix.namespaceWideDuplicates),
        ],
        ['workload selector policies', int(mix.selector)],
        ['… of which with portLevelMtls', int(mix.withPortLevelMtls)],
        ['… of which select labels no workload has', int(mix.selectorNeverMatching)],
        ['selector policies in istio-system (Istio ignores them)', int(mix.rootSelector)],
        ['without creationTimestamp (order assumed)', int(mix.withoutTimestamp)],
        ['**total**', int(h.policies)],
      ],
      [1],
    ),
  );
  out.push('');
  out.push(
    `Workloads: ${int(h.workloads)} with ${int(h.declaredPorts)} declared ports; each scans ` +
      `${scannedPerWorkload(h).toFixed(1)} selector policies on average (its namespace's and the root namespace's ` +
      `${int(h.mix.rootSelector)}; the busiest namespace has ${int(h.maxSelectorPerNamespace)}). ` +
      `Resolved port modes: ${int(h.portModes.STRICT)} STRICT, ${int(h.portModes.PERMISSIVE)} PERMISSIVE, ` +
      `${int(h.portModes.DISABLE)} DISABLE; ${int(h.portsDecidedByPortLevel)} ports decided by a portLevelMtls entry.`,
  );
  out.push('');
  out.push('## Indexed against a naive scan, side by side in the same run');
  out.push('');
  out.push(
    "The naive reference (bench/naive.ts) is Istio's `getConfigsForWorkload` + `ComposePeerAuthentication` + " +
      '`GetMutualTLSModeForPort` written out without an index: every workload scans all policies. The resolvers run ' +
      'in alternation (indexed, mode-only, naive, indexed, …) on the same data, after one untimed round, and their ' +
      'answers are compared for every workload.',
  );
  out.push('');
  const side = h.sideBySide;
  if (side === undefined) throw new Error('BUG: the headline case ran without the side-by-side comparison');
  const vsIndexed = (t: Timing) => ratio(t.medianMs / side.indexed.medianMs);
  out.push(
    table(
      ['resolver', 'median ms', 'min ms', 'max ms', 'runs', 'time vs indexed'],
      [
        ['indexed (`resolveInboundMtls` + `modeForPort`)', ...timingCells(side.indexed), '1×'],
        ['naive full scan', ...timingCells(side.naive), vsIndexed(side.naive)],
        [
          'mode-only fast path (`effectiveInboundMtls` + `effectiveModeForPort`)',
          ...timingCells(side.modesOnly),
          vsIndexed(side.modesOnly),
        ],
      ],
      [1, 2, 3, 4, 5],
    ),
  );
  out.push('');
  out.push(
    `**Naive ÷ indexed: ${vsIndexed(side.naive)}.** Asserted in the run: identical workload mode, per-port mode ` +
      `(${int(h.verifiedPorts)} ports) and deciding mesh/namespace/workload policy for all ${int(h.verifiedWorkloads)} ` +
      `workloads, indexed vs naive and mode-only vs naive; the bench stops at the first difference.`,
  );
  out.push('');
  out.push('## How the cost grows');
  out.push('');
  out.push(
    'Same generator, same mix. "Scanned" is the number of selector policies `resolveInboundMtls` checks per workload: ' +
      "those of its namespace plus the root namespace's. Ratios are against the headline row.",
  );
  out.push('');
  out.push(
    table(
      [
        'case',
        'workloads',
        'policies',
        'namespaces',
        'scanned / workload',
        'index median ms',
        'index heap MiB',
        'runs (warm-up+timed)',
      ],
      cases.map((c) => [
        c === h ? `**${c.plan.shape.label}**` : c.plan.shape.label,
        int(c.workloads),
        int(c.policies),
        int(c.plan.shape.namespaces),
        scannedPerWorkload(c).toFixed(1),
        ms(c.indexBuild.medianMs),
        mib(c.indexRetainedBytes),
        describeRunPlans(c),
      ]),
      [1, 2, 3, 4, 5, 6],
    ),
  );
  out.push('');
  out.push(
    table(
      [
        'case',
        'resolve median ms (min–max)',
        'µs / workload',
        'ns / selector check',
        'resolve time vs headline',
        'workloads × scanned vs headline',
        'mode-only ms',
        'naive ms',
        'naive ÷ indexed',
        'checked against naive',
      ],
      cases.map((c) => [
        c === h ? `**${c.plan.shape.label}**` : c.plan.shape.label,
        `${ms(c.resolve.medianMs)} (${ms(c.resolve.minMs)}–${ms(c.resolve.maxMs)})`,
        usPerWorkload(c).toFixed(1),
        nsPerCheck(c).toFixed(0),
        ratio(c.resolve.medianMs / h.resolve.medianMs),
        ratio(c.selectorChecks / h.selectorChecks),
        ms(c.modesOnly.medianMs),
        naiveCell(c),
        c.naive === undefined ? '—' : ratio(naiveOverIndexed(c) ?? 0),
        verifiedCell(c),
      ]),
      [1, 2, 3, 4, 5, 6, 7, 8],
    ),
  );
  out.push('');
  out.push(
    'Where the naive scan over every workload would take minutes (40k × 40k), it ran on a sample of workloads ' +
      'only, to check the answers; it is not timed there. Outside the headline the naive scan ran once.',
  );
  out.push('');
  out.push('## Reading the figures');
  out.push('');
  out.push(...readHeadline(h), ...readScaling(cases, h));
  out.push(
    '- **Noise.** Absolute times move with the load on this shared machine; ratios between rows of the same run ' +
      'move much less. Compare a rerun by its ratios.',
  );
  out.push('');
  out.push(...renderPkiSection(pki));
  out.push('');
  if (proxySection !== undefined) out.push(proxySection, '');
  return out.join('\n');
}
