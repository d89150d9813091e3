/**
 * The "Sidecar proxy" section of BENCHMARKS.md, rendered from one run of bench/proxy.ts. Its wording
 * follows the figures (a target is called met or missed from the numbers of the run), so the section
 * never says more than the run showed. The section sits between two markers, so that
 * `bench/run.ts --only proxy` can replace it alone and leave the rest of the file as it was.
 */
import type { ChainFigures, ChainId, ProxyBenchResult, SidecarFigures } from '../proxy.js';

export const SECTION_BEGIN = '<!-- bench:proxy:begin -->';
export const SECTION_END = '<!-- bench:proxy:end -->';

export interface SectionContext {
  /** The command that produced the figures, as a reader would type it. */
  readonly command: string;
  readonly date: string;
  readonly commit: string;
  readonly node: string;
  readonly cpu: string;
}

const LABELS: Readonly<Record<ChainId, string>> = {
  direct: 'direct (no sidecars)',
  kmtls: 'kmtls',
  'kmtls-info': 'kmtls, `--log-level info`',
  'node-relay': 'Node floor (a bare relay, bench/proxy/node-relay.mjs)',
  nginx: 'nginx',
  haproxy: 'haproxy',
  'nginx-full': 'nginx, `proxy_ssl_session_reuse off`',
  'haproxy-full': 'haproxy, `no-ssl-reuse`',
};

/** Megabytes as in the target ("under 60 MB"): 10^6 bytes. */
const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);
const int = (n: number): string => Math.round(n).toLocaleString('en-US');

function ms(value: number): string {
  if (!Number.isFinite(value)) return '—';
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function ratio(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return '—';
  if (value >= 10) return `${value.toFixed(0)}×`;
  return value >= 1 ? `${value.toFixed(1)}×` : `${value.toFixed(2)}×`;
}

function table(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  rightAligned: readonly number[] = [],
): string {
  const align = headers.map((_, i) => (rightAligned.includes(i) ? '---:' : '---'));
  return [headers, align, ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}

const sidecar = (c: ChainFigures | undefined, role: 'client' | 'server'): SidecarFigures | undefined =>
  c?.sidecars.find((s) => s.role === role);

/** Both sidecars added up: what one proxied request costs the chain. */
function chainCpu(
  c: ChainFigures | undefined,
  pick: (s: SidecarFigures) => number | undefined,
): number | undefined {
  if (c === undefined || c.sidecars.length === 0) return undefined;
  const values = c.sidecars.map(pick);
  if (values.some((v) => v === undefined)) return undefined;
  return values.reduce<number>((a, v) => a + (v ?? 0), 0);
}

const largestIdleRss = (c: ChainFigures | undefined): number | undefined =>
  c === undefined || c.sidecars.length === 0 ? undefined : Math.max(...c.sidecars.map((s) => s.idleRssBytes));

const addedP99 = (c: ChainFigures | undefined, direct: ChainFigures | undefined): number | undefined =>
  c?.fixedRate && direct?.fixedRate ? c.fixedRate.p99Ms - direct.fixedRate.p99Ms : undefined;

interface Metric {
  readonly name: string;
  readonly unit: string;
  readonly value: (c: ChainFigures | undefined) => number | undefined;
  readonly higherIsBetter: boolean;
  readonly format: (v: number) => string;
  /** The issue's target for kmtls, judged from the figures; undefined when there is none. */
  readonly target?: {
    readonly text: string;
    readonly met: (kmtls: number, best: number | undefined) => boolean;
  };
}

/** A metric's row heading: name, unit and which way is better. */
const heading = (m: Metric): string =>
  `${m.name} (${m.unit}; ${m.higherIsBetter ? 'higher' : 'lower'} is better)`;

function metrics(direct: ChainFigures | undefined, rate: number): Metric[] {
  return [
    {
      name: 'Max throughput with keep-alive, wrk',
      unit: 'req/s',
      value: (c) => c?.throughput?.medianPerSecond,
      higherIsBetter: true,
      format: int,
      target: { text: '≥ best of nginx/haproxy', met: (k, best) => best !== undefined && k >= best },
    },
    {
      name: 'CPU per 1,000 requests at max load, both sidecars',
      unit: 'ms',
      value: (c) => chainCpu(c, (s) => s.cpuMsPer1kAtMax),
      higherIsBetter: false,
      format: ms,
      target: { text: '≤ best of nginx/haproxy', met: (k, best) => best !== undefined && k <= best },
    },
    {
      name: `CPU per 1,000 requests at ${int(rate)} req/s, both sidecars`,
      unit: 'ms',
      value: (c) => chainCpu(c, (s) => s.cpuMsPer1kAtFixedRate),
      higherIsBetter: false,
      format: ms,
    },
    {
      name: `p99 latency at ${int(rate)} req/s`,
      unit: 'ms',
      value: (c) => c?.fixedRate?.p99Ms,
      higherIsBetter: false,
      format: ms,
    },
    {
      name: `p99 added to direct at ${int(rate)} req/s`,
      unit: 'ms',
      value: (c) => addedP99(c, direct),
      higherIsBetter: false,
      format: ms,
      target: { text: '< 1 ms', met: (k) => k < 1 },
    },
    {
      name: 'Idle RSS, larger sidecar',
      unit: 'MB',
      value: largestIdleRss,
      higherIsBetter: false,
      format: (v) => mb(v),
      target: { text: '< 60 MB', met: (k) => k < 60e6 },
    },
    {
      name: 'New connections per second, one request each',
      unit: '/s',
      value: (c) => c?.newConnections?.medianPerSecond,
      higherIsBetter: true,
      format: int,
    },
  ];
}

const spread = (values: readonly number[]): string =>
  values.length === 0 ? '—' : `${ms(Math.min(...values))}–${ms(Math.max(...values))}`;

function best(values: readonly (number | undefined)[], higherIsBetter: boolean): number | undefined {
  const known = values.filter((v): v is number => v !== undefined && Number.isFinite(v));
  if (known.length === 0) return undefined;
  return higherIsBetter ? Math.max(...known) : Math.min(...known);
}

function renderHeadline(r: ProxyBenchResult, byId: (id: ChainId) => ChainFigures | undefined): string[] {
  const kmtls = byId('kmtls');
  const nginx = byId('nginx');
  const haproxy = byId('haproxy');
  const rows = metrics(byId('direct'), r.plan.fixedRate.ratePerSecond).map((m) => {
    const k = m.value(kmtls);
    const n = m.value(nginx);
    const h = m.value(haproxy);
    const b = best([n, h], m.higherIsBetter);
    const cell = (v: number | undefined) => (v === undefined ? '—' : m.format(v));
    const verdict =
      m.target === undefined
        ? '—'
        : k === undefined
          ? 'not measured'
          : m.target.met(k, b)
            ? '**met**'
            : '**missed**';
    return [
      heading(m),
      cell(k),
      cell(n),
      cell(h),
      k === undefined || n === undefined ? '—' : ratio(k / n),
      k === undefined || h === undefined ? '—' : ratio(k / h),
      k === undefined || b === undefined ? '—' : ratio(k / b),
      m.target?.text ?? '—',
      verdict,
    ];
  });
  return [
    table(
      [
        'measure',
        'kmtls',
        'nginx',
        'haproxy',
        'kmtls ÷ nginx',
        'kmtls ÷ haproxy',
        'kmtls ÷ best of the two',
        'target',
        'kmtls',
      ],
      rows,
      [1, 2, 3, 4, 5, 6],
    ),
  ];
}

/**
 * kmtls against the least a Node sidecar must do (bench/proxy/node-relay.mjs), and that floor against
 * nginx and haproxy: which part of a gap is Node's TLS and streams, and which is kmtls's own work.
 */
function renderNodeFloor(r: ProxyBenchResult, byId: (id: ChainId) => ChainFigures | undefined): string[] {
  const kmtls = byId('kmtls');
  const floor = byId('node-relay');
  if (kmtls === undefined || floor === undefined) return [];
  const [throughput, cpuMax, , , , rss] = metrics(byId('direct'), r.plan.fixedRate.ratePerSecond);
  const perConnection: Metric = {
    name: 'CPU per new connection, both sidecars',
    unit: 'ms',
    value: (c) => chainCpu(c, (s) => s.cpuMsPerNewConnection),
    higherIsBetter: false,
    format: ms,
  };
  const rows = [throughput, cpuMax, perConnection, rss].filter((x): x is Metric => x !== undefined);
  return [
    table(
      [
        'measure',
        'kmtls',
        'Node floor',
        'best of nginx/haproxy',
        'kmtls ÷ Node floor',
        'Node floor ÷ best of nginx/haproxy',
      ],
      rows.map((metric) => {
        const k = metric.value(kmtls);
        const f = metric.value(floor);
        const b = best([metric.value(byId('nginx')), metric.value(byId('haproxy'))], metric.higherIsBetter);
        const cell = (v: number | undefined) => (v === undefined ? '—' : metric.format(v));
        return [
          heading(metric),
          cell(k),
          cell(f),
          cell(b),
          k === undefined || f === undefined ? '—' : ratio(k / f),
          f === undefined || b === undefined ? '—' : ratio(f / b),
        ];
      }),
      [1, 2, 3, 4, 5],
    ),
  ];
}

function cpuCells(c: ChainFigures, pick: (s: SidecarFigures) => number | undefined, format = ms): string[] {
  if (c.sidecars.length === 0) return ['—', '—'];
  const v = (role: 'client' | 'server') => {
    const s = sidecar(c, role);
    const x = s === undefined ? undefined : pick(s);
    return x === undefined ? '—' : format(x);
  };
  return [v('client'), v('server')];
}

function describeTools(r: ProxyBenchResult): string[] {
  const t = r.tools;
  const lines = [
    `- OpenSSL: Node's own ${r.nodeOpenssl} in kmtls; the system's ${t.openssl} in nginx and haproxy.`,
    `- nginx: ${t.nginx?.version ?? 'not available'}${t.nginx ? ' (stream module, `worker_processes 1` per sidecar; master and worker counted together)' : ''}.`,
    `- haproxy: ${t.haproxy?.version.replace(/ - https?:\S+/, '') ?? 'not available'}${t.haproxy ? ' (`nbthread 1`, `-db`: one process per sidecar)' : ''}.`,
    `- wrk: ${t.wrk?.version ?? 'not available'}.`,
  ];
  for (const note of t.notes) lines.push(`- Install: ${note}.`);
  return lines;
}

/** What the Node floor's figures say about the throughput and CPU targets. */
function floorVerdict(slower: boolean, costlier: boolean): string {
  const missed = [slower ? 'throughput' : '', costlier ? 'CPU' : ''].filter(Boolean).join(' and ');
  if (missed === '')
    return "The floor is on par with nginx and haproxy here, so any gap in these two lines is kmtls's own work.";
  return (
    `On Node's TLS sockets and streams the floor alone misses the ${missed} target${slower && costlier ? 's' : ''}, ` +
    "before any of kmtls's checks: meeting " +
    (slower && costlier ? 'them' : 'it') +
    ' needs a different data plane (TLS and copying in native code), not a leaner kmtls.'
  );
}
function renderFindings(r: ProxyBenchResult, byId: (id: ChainId) => ChainFigures | undefined): string[] {
  const kmtlsResumes = r.kmtlsAsBuilt?.ok !== false;
  const out: string[] = [];
  const kmtls = byId('kmtls');
  const nginx = byId('nginx');
  const haproxy = byId('haproxy');
  const direct = byId('direct');
  const rate = r.plan.fixedRate.ratePerSecond;
  const m = metrics(direct, rate);
  const [throughput, cpuMax, cpuFixed, , added, rss, newConns] = m;
  const bestOf = (metric: Metric | undefined) =>
    metric === undefined
      ? undefined
      : best([metric.value(nginx), metric.value(haproxy)], metric.higherIsBetter);
  const k = (metric: Metric | undefined) => metric?.value(kmtls);

  const kt = k(throughput);
  const bt = bestOf(throughput);
  if (kt !== undefined && bt !== undefined && throughput) {
    out.push(
      `- **Throughput.** kmtls carried ${int(kt)} req/s against ${int(bt)} for the better of nginx and haproxy ` +
        `(${ratio(kt / bt)}): the target (at least on par) is ${kt >= bt ? 'met' : 'missed'}. On two cores ` +
        'shared by wrk, the backend and both sidecars, maximum throughput follows CPU per request, the next line.',
    );
  }
  const kc = k(cpuMax);
  const bc = bestOf(cpuMax);
  if (kc !== undefined && bc !== undefined) {
    const client = sidecar(kmtls, 'client')?.cpuMsPer1kAtMax;
    const server = sidecar(kmtls, 'server')?.cpuMsPer1kAtMax;
    const kf = k(cpuFixed);
    const bf = bestOf(cpuFixed);
    out.push(
      `- **CPU per request.** At maximum load the two kmtls sidecars used ${ms(kc)} ms of CPU per 1,000 requests ` +
        `(client ${ms(client ?? Number.NaN)}, server ${ms(server ?? Number.NaN)}) against ${ms(bc)} ms for the better ` +
        `of nginx and haproxy (${ratio(kc / bc)}): the target (on par) is ${kc <= bc ? 'met' : 'missed'}.` +
        (kf !== undefined && bf !== undefined
          ? ` At ${int(rate)} req/s, where nothing is saturated, it is ${ms(kf)} against ${ms(bf)} ms (${ratio(kf / bf)}), ` +
            `i.e. ${((kf * rate) / 1e6 / 2) * 100 < 1 ? 'under 1' : (((kf * rate) / 1e6 / 2) * 100).toFixed(0)}% of a core per sidecar at that rate.`
          : ''),
    );
  }
  const floor = byId('node-relay');
  const ft = throughput?.value(floor);
  const fc = cpuMax?.value(floor);
  if (
    kt !== undefined &&
    bt !== undefined &&
    kc !== undefined &&
    bc !== undefined &&
    ft !== undefined &&
    fc !== undefined
  ) {
    out.push(
      `- **What Node costs.** The Node floor, which does nothing but TLS and copying, carried ${int(ft)} req/s at ` +
        `${ms(fc)} ms of CPU per 1,000 requests (${ratio(ft / bt)} the throughput and ${ratio(fc / bc)} the CPU of the ` +
        `better of nginx and haproxy); kmtls ran at ${ratio(kt / ft)} the floor's throughput and ${ratio(kc / fc)} its CPU. ` +
        floorVerdict(ft < bt, fc > bc),
    );
  }
  const ka = k(added);

  if (ka !== undefined && kmtls?.fixedRate && direct?.fixedRate) {
    const others = [nginx, haproxy]
      .filter((c): c is ChainFigures => c?.fixedRate !== undefined)
      .map((c) => `${c.id} ${ms(addedP99(c, direct) ?? Number.NaN)} ms`);
    out.push(
      `- **Latency at ${int(rate)} req/s.** p99 was ${ms(kmtls.fixedRate.p99Ms)} ms through kmtls against ` +
        `${ms(direct.fixedRate.p99Ms)} ms direct: ${ms(ka)} ms added, so the target (under 1 ms) is ` +
        `${ka < 1 ? 'met' : 'missed'}` +
        (others.length > 0 ? ` (added by the others: ${others.join(', ')}).` : '.') +
        ([nginx, haproxy].every((c) => (addedP99(c, direct) ?? 0) >= 1)
          ? ' nginx and haproxy miss it too on this machine, where every hop is a process on the same two CPUs.'
          : '') +
        ` The p50 added is ${ms(kmtls.fixedRate.p50Ms - direct.fixedRate.p50Ms)} ms. For scale, direct's own p99 ` +
        `ranged ${spread(direct.fixedRate.runs.map((x) => x.fromReady.p99Ms))} ms over its rounds.`,
    );
  }
  const kr = k(rss);
  if (kr !== undefined && rss) {
    const loaded = kmtls ? Math.max(...kmtls.sidecars.map((s) => s.loadedRssBytes)) : Number.NaN;
    const br = bestOf(rss);
    const atStart = kmtls ? Math.max(...kmtls.sidecars.map((s) => s.startRssBytes)) : Number.NaN;
    const floorIdle = largestIdleRss(floor);
    out.push(
      `- **Memory.** An idle kmtls sidecar holds ${mb(kr)} MB resident after ${r.plan.idleSeconds} s without traffic ` +
        `(${mb(atStart)} MB just after start` +
        (atStart > kr ? ', before V8 gives back what start-up grew' : '') +
        `; ${mb(loaded)} MB after load), ` +
        `so the target (under 60 MB) is ${kr < 60e6 ? 'met' : 'missed'}` +
        (br === undefined
          ? '.'
          : `; the lighter of nginx and haproxy holds ${mb(br)} MB per sidecar (${ratio(kr / br)}).`) +
        (r.nodeBaselineRssBytes === undefined
          ? ''
          : ` A bare \`node\` process, before any module is loaded, holds ${mb(r.nodeBaselineRssBytes)} MB on this machine` +
            (floorIdle === undefined ? '.' : `, and an idle Node floor sidecar ${mb(floorIdle)} MB.`)),
    );
  }
  const kn = k(newConns);
  const full = best(
    [
      byId('nginx-full')?.newConnections?.medianPerSecond,
      byId('haproxy-full')?.newConnections?.medianPerSecond,
    ],
    true,
  );
  if (kn !== undefined) {
    const perConn = chainCpu(kmtls, (s) => s.cpuMsPerNewConnection);
    const reusePerConn = best(
      [chainCpu(nginx, (s) => s.cpuMsPerNewConnection), chainCpu(haproxy, (s) => s.cpuMsPerNewConnection)],
      false,
    );
    const fullPerConn = best(
      [
        chainCpu(byId('nginx-full'), (s) => s.cpuMsPerNewConnection),
        chainCpu(byId('haproxy-full'), (s) => s.cpuMsPerNewConnection),
      ],
      false,
    );
    out.push(
      `- **New connections.** kmtls set up ${int(kn)} mTLS connections/s (one request each)` +
        (full === undefined
          ? ''
          : `, against ${int(full)}/s for the better of nginx and haproxy with session reuse off`) +
        (bestOf(newConns) === undefined
          ? ''
          : ` and ${int(bestOf(newConns) ?? 0)}/s with their default reuse`) +
        '.' +
        (perConn !== undefined && reusePerConn !== undefined
          ? ` Each new connection (${kmtlsResumes ? 'resumed between the sidecars' : 'a full handshake, see the note on resumption'}) ` +
            `cost the two kmtls sidecars ${ms(perConn)} ms of CPU ` +
            `against ${ms(reusePerConn)} ms (${ratio(perConn / reusePerConn)}) for the better of nginx and haproxy resuming` +
            (fullPerConn === undefined
              ? '.'
              : `, and ${ms(fullPerConn)} ms with a full handshake every time.`)
          : ''),
    );
  }
  const asBuilt = r.kmtlsAsBuilt;
  if (asBuilt !== undefined && !asBuilt.ok) {
    const noContext = asBuilt.refusals.some((x) => x.includes('session id context uninitialized'));
    out.push(
      '- **Session resumption between kmtls sidecars.** ' +
        (noContext
          ? 'The server sidecar refused the resumed handshake with OpenSSL\'s "session id context uninitialized": ' +
            'OpenSSL does not resume a session on a context that asks for a client certificate unless the context ' +
            'has a session id context, which `tls.createServer` sets and a context from `tls.createSecureContext` ' +
            'used with a bare `TLSSocket` does not. The client sidecar keeps offering the same cached session, so ' +
            'from its second connection on it refuses every connection until it restarts. '
          : `Every connection after the first failed: ${asBuilt.refusals.join('; ') || asBuilt.failure}. `) +
        'nginx and haproxy resume by default (their new connections/s with and without reuse are in the table).',
    );
  }
  const info = byId('kmtls-info');
  if (info && kmtls) {
    const tp =
      info.throughput && kmtls.throughput
        ? info.throughput.medianPerSecond / kmtls.throughput.medianPerSecond
        : undefined;
    const nc =
      info.newConnections && kmtls.newConnections
        ? info.newConnections.medianPerSecond / kmtls.newConnections.medianPerSecond
        : undefined;
    const cpu = chainCpu(info, (s) => s.cpuMsPerNewConnection);
    const base = chainCpu(kmtls, (s) => s.cpuMsPerNewConnection);
    out.push(
      `- **Access log.** With \`--log-level info\` (one JSON line per connection on each sidecar), keep-alive ` +
        `throughput was ${ratio(tp)} and new connections/s ${ratio(nc)} of the \`warn\` figures` +
        (cpu !== undefined && base !== undefined
          ? `; CPU per new connection ${ms(cpu)} ms against ${ms(base)} ms.`
          : '.') +
        ' A TCP port logs once per connection, not per request' +
        (tp !== undefined && tp > 0.9 && tp < 1.1 ? ', so keep-alive traffic barely logs.' : '.'),
    );
  }
  return out;
}

export function renderProxySection(r: ProxyBenchResult, ctx: SectionContext): string {
  // Without the as-built check passing, kmtls ran with its session cache bypassed (see the banner).
  const kmtlsResumes = r.kmtlsAsBuilt?.ok !== false;
  const byId = (id: ChainId) => r.chains.find((c) => c.id === id);
  const out: string[] = [SECTION_BEGIN, '## Sidecar proxy: kmtls against nginx and haproxy', ''];
  const onlyCommand = 'npm run build && node --import tsx bench/run.ts --only proxy';
  out.push(
    `Written by \`${ctx.command}\` on ${ctx.date} (commit ${ctx.commit}; ${ctx.cpu}; node ${ctx.node}); ` +
      `\`${onlyCommand}\` reruns only this section (about ${Math.ceil(r.totalSeconds / 60)} minutes) and leaves the rest ` +
      'of this file as it is. bench/proxy.ts; configurations in bench/proxy/configs.ts.',
  );
  out.push('');
  const tp = r.plan.throughput;
  const fr = r.plan.fixedRate;
  const nc = r.plan.newConnections;
  out.push(
    [
      '- **Chains**, all on 127.0.0.1, each load generator → client sidecar → mTLS → server sidecar → backend: ' +
        '*direct* (load generator → backend), *Node floor* (two processes of bench/proxy/node-relay.mjs, below), *kmtls* (two `kmtls proxy` processes of the bundled CLI, `--log-level warn`: client outbound ' +
        "`ISTIO_MUTUAL`, protocol tcp, `expectedIdentities` = the server's SPIFFE ID → server inbound `STRICT`, tcp), " +
        '*nginx* (two nginx `stream` instances: `proxy_ssl on` with a client certificate → `listen … ssl` with ' +
        '`ssl_verify_client on`) and *haproxy* (two haproxy instances, mode tcp: `server … ssl crt … ca-file … verify required` ' +
        '→ `bind … ssl crt … ca-file … verify required`).',
      `- **Backend**: ${r.backend === 'nginx' ? 'nginx answering `return 200 "ok"` (one worker, keep-alive without a request limit)' : 'a Node HTTP server answering 200 "ok" (nginx was not available)'}, the same process for every chain.`,
      '- **Certificates**: one throwaway kmtls CA; `kmtls ca issue` made an ECDSA P-256 leaf for ' +
        '`spiffe://cluster.local/ns/bench/sa/client` and one for `…/sa/server`. Every chain uses these two, each side ' +
        'presenting its leaf and trusting only the kmtls root; the server side of every chain requires a client ' +
        'certificate.' +
        (Object.keys(r.negotiated).length === 0
          ? ''
          : ` Each server side, to \`openssl s_client\` with the client certificate, negotiated: ${Object.entries(
              r.negotiated,
            )
              .map(([id, what]) => `${LABELS[id as ChainId]} ${what}`)
              .join('; ')}.`),
      '- **One core each**: each nginx sidecar runs one worker, each haproxy sidecar one thread, as a kmtls sidecar ' +
        'is one Node event loop. Load generator, backend and both sidecars share the same ' +
        `${ctx.cpu.replace(/^.* × /, '').replace(/ \(os\.cpus\(\)\)/, '')}, as sidecars share a node's cores.`,
      `- **Max requests/s**: \`wrk -t${tp.threads} -c${tp.connections} -d${tp.durationSeconds}s\` (keep-alive), after a ` +
        `${tp.warmupSeconds} s warm-up run, ${tp.rounds} rounds; the median round is reported.`,
      `- **Latency at a fixed rate**: an open-loop generator (bench/proxy/fixed-rate.ts, its own process; wrk2 is not in ` +
        `Debian) sends ${int(fr.ratePerSecond)} req/s over ${fr.connections} keep-alive connections for ` +
        `${fr.durationMs / 1000} s after ${fr.warmupMs / 1000} s of warm-up, ${fr.rounds} rounds (median of the rounds' ` +
        'percentiles). Latency counts from when the generator took a request up, including any wait for a free ' +
        "connection; the p99 from the request's due time (wrk2's definition, which adds the lateness of the " +
        "generator's own millisecond timer) is in the detail table.",
      `- **New connections/s**: \`wrk -t${nc.threads} -c${nc.connections} -d${nc.durationSeconds}s -H 'Connection: close'\`: ` +
        'every request is a new TCP connection to the client side and a new mTLS connection between the sidecars; ' +
        `${nc.rounds} rounds after a ${nc.warmupSeconds} s warm-up. ${kmtlsResumes ? 'kmtls, the' : 'The'} Node floor, nginx and haproxy ` +
        'resume TLS sessions between the sidecars; nginx and haproxy also ran with reuse off (a second client side in ' +
        'front of the same server side), for a full handshake on every connection.',
      '- **CPU**: utime + stime of each sidecar from /proc/PID/stat around the timed run (all threads; nginx master + ' +
        'worker), divided by the requests (or connections) wrk counted. **RSS**: VmRSS from /proc/PID/status, read ' +
        'once every chain is up and has carried a few requests (a second after the last one started), then again after ' +
        `${r.plan.idleSeconds} s without traffic (*idle*, the figure the target is about: V8 gives back what it grew ` +
        'during start-up only after a few seconds without work); loaded = the largest value read at the end of a load run.',
    ].join('\n'),
  );
  out.push('');
  out.push(...describeTools(r));
  // Rounding in the kernel's tick accounting can make a quiet machine's difference slightly negative.
  const others = Math.max(0, r.machineBusySeconds - r.ownSeconds);
  const share = r.machineBusySeconds > 0 ? others / r.machineBusySeconds : 0;
  out.push(
    `- Other load: while this section ran, work outside the bench (other processes, stray interrupts) took ${others.toFixed(0)} of the ` +
      `${r.machineBusySeconds.toFixed(0)} CPU seconds the machine was busy (${(share * 100).toFixed(0)}%)` +
      (share > 0.05
        ? ': **the machine was not quiet, so the figures below are disturbed; rerun on a quiet machine before reading much into them.**'
        : '.'),
  );
  out.push('');

  if (r.kmtlsAsBuilt && !r.kmtlsAsBuilt.ok) {
    out.push(
      `> **kmtls as built did not carry a second connection.** The first request went through; ${r.kmtlsAsBuilt.failure}` +
        (r.kmtlsAsBuilt.refusals.length > 0 ? ` — ${r.kmtlsAsBuilt.refusals.join('; ')}` : '') +
        '. The client sidecar caches the TLS session of its first connection and offers it on every later one, and ' +
        'resumption between the kmtls sidecars fails (the refusals above; more in the reading below). So that the rest could be measured, the ' +
        'kmtls client sidecar ran with bench/proxy/no-session-reuse.mjs preloaded (`node --import`), which drops the ' +
        'cached session: every kmtls figure below is kmtls **without session resumption**, a full handshake per ' +
        'connection. The bench checks again on every run and measures kmtls unmodified once three connections in a ' +
        'row go through.',
    );
    out.push('');
  }
  for (const s of r.skipped) out.push(`- **Skipped: ${LABELS[s.id]}.** ${s.reason}`);
  for (const c of r.chains)
    if (c.failure !== undefined) out.push(`- **${LABELS[c.id]} failed part-way:** ${c.failure}`);
  if (r.skipped.length > 0 || r.chains.some((c) => c.failure !== undefined)) out.push('');

  out.push('### Headline: kmtls as a ratio to nginx and haproxy');
  out.push('');
  out.push(...renderHeadline(r, byId));
  out.push('');

  const floorTable = renderNodeFloor(r, byId);
  if (floorTable.length > 0) {
    out.push('### What Node itself costs: kmtls against the Node floor');
    out.push('');
    out.push(
      'The *Node floor* is the least two Node processes must do to carry a connection over mTLS: `tls` and ' +
        '`stream.pipe` both ways with the same certificates and TLS versions as kmtls, resuming sessions, and ' +
        'nothing else (no policy, no SPIFFE check, no log, no metrics, no timeouts). What separates kmtls from it is ' +
        "kmtls's own work; what separates it from nginx and haproxy is Node's TLS and stream machinery.",
    );
    out.push('');
    out.push(...floorTable);
    out.push('');
  }
  out.push('### Detail');
  out.push('');
  const loadChains = r.chains.filter((c) => c.throughput !== undefined || c.fixedRate !== undefined);
  out.push(
    table(
      [
        'chain',
        'max req/s (median)',
        'runs',
        'wrk p50 / p99 ms at max',
        'socket errors',
        'CPU ms / 1k req, client',
        'server',
      ],
      loadChains
        .filter((c) => c.throughput !== undefined)
        .map((c) => {
          const t = c.throughput!;
          return [
            LABELS[c.id],
            int(t.medianPerSecond),
            t.runsPerSecond.map(int).join(', '),
            `${ms(t.p50Ms)} / ${ms(t.p99Ms)}`,
            String(t.socketErrors + t.badStatus),
            ...cpuCells(c, (s) => s.cpuMsPer1kAtMax),
          ];
        }),
      [1, 3, 4, 5, 6],
    ),
  );
  out.push('');
  const direct = byId('direct');
  out.push(
    table(
      [
        `chain at ${int(fr.ratePerSecond)} req/s`,
        'p50 ms',
        'p99 ms',
        'p99.9 ms',
        'max ms',
        'p99 added to direct',
        'p99 from due time',
        'failed',
        'CPU ms / 1k req, client',
        'server',
      ],
      loadChains
        .filter((c) => c.fixedRate !== undefined)
        .map((c) => {
          const f = c.fixedRate!;
          return [
            LABELS[c.id],
            ms(f.p50Ms),
            ms(f.p99Ms),
            ms(f.p999Ms),
            ms(f.maxMs),
            c.id === 'direct' ? '—' : ms(addedP99(c, direct) ?? Number.NaN),
            ms(f.p99FromDueMs),
            String(f.failed),
            ...cpuCells(c, (s) => s.cpuMsPer1kAtFixedRate),
          ];
        }),
      [1, 2, 3, 4, 5, 6, 7, 8, 9],
    ),
  );
  out.push('');
  out.push(
    table(
      ['chain', 'new connections/s (median)', 'runs', 'errors', 'CPU ms / connection, client', 'server'],
      r.chains
        .filter((c) => c.newConnections !== undefined)
        .map((c) => {
          const n = c.newConnections!;
          return [
            LABELS[c.id],
            int(n.medianPerSecond),
            n.runsPerSecond.map(int).join(', '),
            String(n.socketErrors + n.badStatus),
            ...cpuCells(c, (s) => s.cpuMsPerNewConnection),
          ];
        }),
      [1, 3, 4, 5],
    ),
  );
  out.push('');
  out.push(
    table(
      [
        'sidecar',
        'RSS MB just after start, client',
        'server',
        `idle RSS MB (${r.plan.idleSeconds} s later), client`,
        'server',
        'loaded RSS MB, client',
        'server',
      ],
      r.chains
        .filter((c) => c.sidecars.length > 0 && !c.id.endsWith('-full'))
        .map((c) => [
          LABELS[c.id],
          ...cpuCells(c, (s) => s.startRssBytes, mb),
          ...cpuCells(c, (s) => s.idleRssBytes, mb),
          ...cpuCells(c, (s) => s.loadedRssBytes, mb),
        ]),
      [1, 2, 3, 4, 5, 6],
    ),
  );
  out.push('');

  out.push('### Reading the figures');
  out.push('');
  out.push(...renderFindings(r, byId));
  if (r.nginxVerifyOn !== undefined) {
    out.push(
      '- **nginx cannot check a SPIFFE server certificate.** With `proxy_ssl_verify on`, nginx matches `proxy_ssl_name` ' +
        'against the DNS names or the CN of the server certificate, and a kmtls certificate has only a URI SAN and an ' +
        `empty subject. In this run, a client side with \`proxy_ssl_verify on\`: ${r.nginxVerifyOn}. The nginx client ` +
        'side therefore runs with `proxy_ssl_verify off`: it presents its certificate (the server side still requires and ' +
        'verifies it) but does not authenticate the server, less work per full handshake than kmtls or haproxy do.',
    );
  }
  out.push(
    '- **What each side verifies.** kmtls checks the chain and the SPIFFE identity itself, in JavaScript, on every ' +
      'connection (client: the server must be `expectedIdentities`; server: the client must be in a trusted trust ' +
      'domain); the signatures of a chain it has seen before under the same trust bundle are not checked again, its ' +
      "dates and identity are. The Node floor leaves the chain to OpenSSL and checks no identity. haproxy checks the chain against the root (no name: no `verifyhost`). nginx's server side checks the " +
      "client's chain; its client side checks nothing (above).",
  );
  out.push('');
  out.push(SECTION_END);
  return out.join('\n');
}

/** Puts the section in place of the previous one, or at the end of the file when there is none. */
export function replaceProxySection(markdown: string, section: string): string {
  const begin = markdown.indexOf(SECTION_BEGIN);
  const end = markdown.indexOf(SECTION_END);
  if (begin >= 0 && end > begin) {
    return markdown.slice(0, begin) + section + markdown.slice(end + SECTION_END.length);
  }
  return `${markdown.trimEnd()}\n\n${section}\n`;
}
