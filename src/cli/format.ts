import type { EdgeExplanation, PodExplanation } from '../mesh/index.js';
import type { ChainStep, Diagnostic, ObjectRef, SourceLocation } from '../policy/index.js';
import { formatLabels, refName } from '../policy/index.js';

export function formatLocation(loc: SourceLocation | undefined): string {
  if (!loc) return '';
  return loc.column !== undefined ? `${loc.file}:${loc.line}:${loc.column}` : `${loc.file}:${loc.line}`;
}

function objectName(ref: ObjectRef): string {
  return ref.namespace ? `${ref.kind} ${ref.namespace}/${ref.name}` : `${ref.kind} ${ref.name}`;
}

/** `file:line:col: severity CODE: message`, then the objects and the hint, indented. */
export function formatDiagnostic(d: Diagnostic): string {
  const where = formatLocation(d.location);
  const lines = [
    `${where ? `${where}: ` : ''}${d.severity} ${d.code}${d.istioCode ? ` (${d.istioCode})` : ''}: ${d.message}`,
  ];
  if (d.objects.length > 1) {
    lines.push(
      `    objects: ${d.objects.map((o) => `${objectName(o)}${o.location ? ` (${formatLocation(o.location)})` : ''}`).join('; ')}`,
    );
  }
  if (d.hint) lines.push(`    hint: ${d.hint}`);
  return lines.join('\n');
}

export function summarize(list: readonly Diagnostic[]): string {
  const count = (s: Diagnostic['severity']) => list.filter((d) => d.severity === s).length;
  const e = count('error');
  const w = count('warning');
  return `${e} error${e === 1 ? '' : 's'}, ${w} warning${w === 1 ? '' : 's'}`;
}

function policyText(ref: ObjectRef | undefined): string {
  return ref ? refName(ref) : '(none)';
}

function stepLine(s: ChainStep): [string, string, string, string] {
  const level = s.level === 'port' ? `port ${s.port}` : s.level;
  if (s.level === 'default') return [level, '', 'no policy sets a mode', s.result];
  if (s.policy === undefined) return [level, '(none)', '', s.result];
  const declared = s.declared === undefined ? 'mtls not set' : `mode ${s.declared}`;
  const effect = s.effect === 'sets' ? s.result : `${s.result} (inherited)`;
  return [level, policyText(s.policy), declared, effect];
}

function table(rows: readonly (readonly string[])[], indent = '  '): string[] {
  const widths: number[] = [];
  for (const r of rows) {
    r.forEach((c, i) => {
      widths[i] = Math.max(widths[i] ?? 0, c.length);
    });
  }
  return rows.map((r) =>
    (indent + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).trimEnd(),
  );
}

export function formatPodExplanation(x: PodExplanation): string {
  const w = x.workload;
  const out: string[] = [];
  const what = w.template ? `${w.kind}, read from ${w.template}` : w.kind;
  out.push(`${w.namespace}/${w.name} (${what})${w.location ? ` at ${formatLocation(w.location)}` : ''}`);
  out.push(`  labels:   ${formatLabels(w.labels)}`);
  out.push(`  identity: ${w.identity ?? '(invalid names for a SPIFFE ID)'}`);
  out.push(`  sidecar:  ${w.inMesh ? 'yes' : 'NO'} (${w.meshReason})`);
  out.push('');
  const subject = x.port === undefined ? 'workload mTLS mode' : `mTLS mode for port ${x.port}`;
  out.push(`Effective ${subject}: ${x.mode}${x.enforced ? '' : ' (not enforced: no sidecar)'}`);
  if (x.port !== undefined && x.mode !== x.workloadMode) out.push(`(workload mode: ${x.workloadMode})`);
  out.push('');
  out.push('Decision chain (the narrowest level that sets a mode wins):');
  out.push(...table(x.chain.map(stepLine)));
  if (x.ports.length > 0) {
    out.push('');
    out.push('Ports:');
    out.push(
      ...table(
        x.ports.map((p) => [
          `${p.port}${p.name ? `/${p.name}` : ''}`,
          p.mode,
          p.decidedBy === 'port' ? `portLevelMtls ${p.declared ?? ''}`.trim() : 'workload mode',
          [
            p.isDeclared ? (p.container ? `container ${p.container}` : '') : 'not a declared container port',
            p.services.length > 0
              ? `from ${p.services.map((s) => `Service ${s.service}:${s.port}`).join(', ')}`
              : '',
          ]
            .filter(Boolean)
            .join('; '),
        ]),
      ),
    );
    out.push(`  any other port: ${x.workloadMode}`);
  }
  if (x.ignored.length > 0) {
    out.push('');
    out.push('Ignored policies:');
    for (const i of x.ignored) out.push(`  ${refName(i.policy)} [${i.reason}]: ${i.message}`);
  }
  if (x.notMatching.length > 0) {
    out.push('');
    out.push(`Selector policies in namespace ${w.namespace} that do not match this workload:`);
    for (const n of x.notMatching) out.push(`  ${refName(n.policy)} (selector ${n.selector})`);
  }
  if (x.elsewhere.length > 0) {
    out.push('');
    out.push('Policies in other namespaces that select these labels but cannot apply:');
    for (const e of x.elsewhere) out.push(`  ${refName(e.policy)}: ${e.message}`);
  }
  if (x.notes.length > 0) {
    out.push('');
    out.push('Notes:');
    for (const n of x.notes) out.push(`  - ${n}`);
  }
  return `${out.join('\n')}\n`;
}

export function formatEdgeExplanation(x: EdgeExplanation): string {
  const d = x;
  const out: string[] = [];
  out.push(
    `${x.source.kind} ${x.source.namespace}/${x.source.name} -> ${x.host}:${x.port}${d.subset ? ` (subset ${d.subset})` : ''}` +
      (x.service ? ` (Service ${x.service})` : ' (outside the mesh)'),
  );
  out.push(`  source sidecar: ${x.source.inMesh ? 'yes' : 'NO'} (${x.source.meshReason})`);
  if (d.destinationRule) {
    const where = d.destinationRule.foundIn?.replace('-', ' ');
    out.push(
      `  DestinationRule: ${d.destinationRule.rules.map(refName).join(' + ')} for host ${d.destinationRule.host}${where ? ` (found in the ${where})` : ''}`,
    );
  } else {
    out.push('  DestinationRule: none applies');
  }
  if (!x.source.inMesh) {
    out.push('  cluster TLS: none (the source has no sidecar; DestinationRules apply only to sidecars)');
  } else if (d.clusterTls.tls) {
    out.push(`  cluster TLS: ${d.clusterTls.tls.mode} from the ${d.clusterTls.level} level`);
  } else if (!x.service) {
    out.push('  cluster TLS: none (not a mesh service, so no auto mTLS)');
  } else {
    const headless = d.passthrough ? ', passthrough/headless service' : '';
    out.push(`  cluster TLS: auto mTLS (service namespace mode ${d.serviceMtlsMode}${headless})`);
  }
  if (d.outside) {
    out.push('');
    out.push(
      `Outside the mesh: client ${d.outside.clientTls} => ${d.outside.verdict.toUpperCase()} (${d.outside.code})`,
    );
    out.push(`      client: ${d.outside.clientTlsReason}`);
    out.push(`      ${d.outside.reason}`);
  }
  if (d.problem) {
    out.push('');
    out.push(`FAILS: ${d.problem.code}: ${d.problem.message}`);
  }
  if (d.endpoints.length > 0) {
    out.push('');
    out.push('Endpoints:');
    for (const e of d.endpoints) {
      out.push(
        `  ${e.kind} ${e.pod} port ${e.port}: client ${e.clientTls}, server ${e.serverMode} => ${e.verdict.toUpperCase()} (${e.code})`,
      );
      out.push(`      client: ${e.clientTlsReason}`);
      const decider = [...e.serverChain].reverse().find((s) => s.effect === 'sets' && s.policy);
      if (e.serverMode !== 'NO_SIDECAR' && e.serverMode !== 'UNKNOWN') {
        out.push(
          `      server: ${decider ? `${decider.level === 'port' ? `port ${decider.port} of ` : `${decider.level} policy `}${refName(decider.policy!)}` : 'no policy sets a mode (PERMISSIVE by default)'}`,
        );
      }
      out.push(`      ${e.reason}`);
    }
  }
  if (x.notes.length > 0) {
    out.push('');
    out.push('Notes:');
    for (const n of x.notes) out.push(`  - ${n}`);
  }
  return `${out.join('\n')}\n`;
}

/** JSON output: absent values are `null`, so every documented key is always present. */
export function toJson(value: unknown): string {
  return `${JSON.stringify(value, (_key, v: unknown) => (v === undefined ? null : v), 2)}\n`;
}
