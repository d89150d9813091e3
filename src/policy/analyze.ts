import type { EdgeContext, EdgeDecision, EndpointVerdict } from './client-tls.js';
import { decideEdge } from './client-tls.js';
import type { DestinationRuleIndex } from './destination-rule.js';
import { resolveRuleHost } from './destination-rule.js';
import type { Diagnostic } from './diagnostics.js';
import { diagnostic } from './diagnostics.js';
import { endpointsOf, servicesOf, targetPortOf } from './endpoints.js';
import { formatLabels, selectorMatches } from './labels.js';
import type { ClientTlsSettings, ObjectRef, Service, Workload } from './model.js';
import { refName, refOf } from './model.js';
import type { PeerAuthenticationIndex } from './peer-authentication.js';
import {
  chainOf,
  effectiveInboundMtls,
  effectiveModeForPort,
  isWidePolicy,
  matchingWorkloadPolicies,
} from './peer-authentication.js';

/** A workload known to call a service, and how we know (an env var, an argument, a flows file). */
export interface CallerFact {
  readonly source: Workload;
  readonly service: Service;
  /** The Service port called, when the reference names one. */
  readonly port: number | undefined;
  readonly via: string;
}

/** A kubelet probe of a workload, and whether the injector would rewrite it to the sidecar. */
export interface ProbeFact {
  readonly workload: Workload;
  readonly container: string;
  readonly kind: string;
  readonly handler: string;
  readonly port: number;
  readonly rewritten: boolean;
}

export interface AnalysisInput {
  readonly peerAuthentications: PeerAuthenticationIndex;
  readonly destinationRules: DestinationRuleIndex;
  readonly autoMtls: boolean;
  readonly workloads: readonly Workload[];
  readonly services: readonly Service[];
  readonly callers: readonly CallerFact[];
  readonly probes: readonly ProbeFact[];
}

const paRef = (p: { kind: string; meta: Workload['meta'] }): ObjectRef => refOf(p.kind, p.meta);
const wlRef = (w: Workload): ObjectRef => refOf(w.kind, w.meta);
const svcRef = (s: Service): ObjectRef => refOf('Service', s.meta);

function describeWorkloads(list: readonly Workload[], max = 5): string {
  const names = list.slice(0, max).map((w) => `${w.kind} ${refName(w.meta)}`);
  return list.length > max ? `${names.join(', ')} and ${list.length - max} more` : names.join(', ');
}

/** Every cross-resource finding kmtls makes; each names all the objects involved. */
export function analyze(input: AnalysisInput): Diagnostic[] {
  return [
    ...analyzeSelectors(input),
    ...analyzePortKeys(input),
    ...analyzeConflicts(input),
    ...analyzeStrictWithoutSidecar(input),
    ...analyzeEdges(input),
    ...analyzeCallers(input),
    ...analyzeProbes(input),
    ...analyzeDestinationRules(input),
  ];
}

function analyzeSelectors(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  const index = input.peerAuthentications;
  const namespacesWithWorkloads = new Set(input.workloads.map((w) => w.meta.namespace));
  for (const policy of index.all) {
    const ns = policy.meta.namespace;
    if (ns === index.rootNamespace) continue;
    if (isWidePolicy(policy)) {
      if (input.workloads.length > 0 && !namespacesWithWorkloads.has(ns)) {
        out.push(
          diagnostic(
            'KMTLS_ANALYZE_NAMESPACE_HAS_NO_WORKLOADS',
            `PeerAuthentication ${refName(policy.meta)} applies to namespace ${ns}, which has no workloads: it protects nothing`,
            {
              objects: [paRef(policy)],
              hint:
                ns === 'default'
                  ? 'a manifest without metadata.namespace lands in "default": set the namespace you meant'
                  : 'check metadata.namespace',
            },
          ),
        );
      }
      continue;
    }
    const selector = policy.selector?.matchLabels ?? {};
    const here = input.workloads.filter(
      (w) => w.meta.namespace === ns && selectorMatches(selector, w.meta.labels),
    );
    if (here.length > 0) continue;
    const elsewhere = input.workloads.filter(
      (w) => w.meta.namespace !== ns && selectorMatches(selector, w.meta.labels),
    );
    if (elsewhere.length > 0) {
      const namespaces = [...new Set(elsewhere.map((w) => w.meta.namespace))].sort();
      out.push(
        diagnostic(
          'KMTLS_ANALYZE_SELECTOR_MATCHES_OTHER_NAMESPACE',
          `PeerAuthentication ${refName(policy.meta)} selects ${formatLabels(selector)}, which matches no workload in namespace ${ns} ` +
            `but matches ${describeWorkloads(elsewhere)}: a PeerAuthentication applies only to workloads of its own namespace`,
          {
            objects: [paRef(policy), ...elsewhere.map(wlRef)],
            hint: `move it to namespace ${namespaces.join(' or ')}`,
          },
        ),
      );
    } else {
      out.push(
        diagnostic(
          'KMTLS_ANALYZE_SELECTOR_MATCHES_NOTHING',
          `PeerAuthentication ${refName(policy.meta)} selects ${formatLabels(selector)}, which matches no workload`,
          { objects: [paRef(policy)], hint: 'check the selector labels against the pod template labels' },
        ),
      );
    }
  }
  return out;
}

function analyzePortKeys(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  const index = input.peerAuthentications;
  for (const policy of index.all) {
    if (policy.meta.namespace === index.rootNamespace || isWidePolicy(policy) || !policy.portLevelMtls)
      continue;
    const selector = policy.selector?.matchLabels ?? {};
    const selected = input.workloads.filter(
      (w) => w.meta.namespace === policy.meta.namespace && selectorMatches(selector, w.meta.labels),
    );
    if (selected.length === 0) continue;
    for (const port of policy.portLevelMtls.keys()) {
      if (selected.some((w) => w.ports.some((p) => p.port === port))) continue;
      const location = policy.locate(['spec', 'portLevelMtls', String(port)]);
      // Is it a Service port that maps to another container port? The classic mistake (istio#49098).
      const meant = new Map<number, Service[]>();
      for (const w of selected) {
        for (const s of servicesOf(w, input.services)) {
          for (const sp of s.ports) {
            if (sp.port !== port) continue;
            const target = targetPortOf(sp, w);
            if (target !== undefined && target !== port) meant.set(target, [...(meant.get(target) ?? []), s]);
          }
        }
      }
      if (meant.size > 0) {
        const targets = [...meant.keys()].sort((a, b) => a - b);
        const services = [...new Set([...meant.values()].flat())];
        out.push(
          diagnostic(
            'KMTLS_ANALYZE_PORT_IS_SERVICE_PORT',
            `portLevelMtls key ${port} of PeerAuthentication ${refName(policy.meta)} is a Service port, not a container port: ` +
              `Service ${services.map((s) => refName(s.meta)).join(', ')} sends port ${port} to targetPort ${targets.join(', ')}, ` +
              `so the mode for ${port} never applies to that traffic`,
            {
              location,
              objects: [paRef(policy), ...services.map(svcRef), ...selected.map(wlRef)],
              hint: `use the container port: portLevelMtls key ${targets.join(' / ')}`,
            },
          ),
        );
      } else {
        out.push(
          diagnostic(
            'KMTLS_ANALYZE_PORT_NOT_DECLARED',
            `portLevelMtls key ${port} of PeerAuthentication ${refName(policy.meta)} is not a declared container port of ` +
              `${describeWorkloads(selected)} (declared: ${[...new Set(selected.flatMap((w) => w.ports.map((p) => p.port)))].sort((a, b) => a - b).join(', ') || 'none'})`,
            {
              location,
              objects: [paRef(policy), ...selected.map(wlRef)],
              hint: 'it still applies if the application listens there; declare the port in the pod spec, or fix the key',
            },
          ),
        );
      }
    }
  }
  return out;
}

function analyzeConflicts(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  const index = input.peerAuthentications;
  if (index.mesh && index.ignoredMesh.length > 0) {
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_CONFLICTING_MESH_POLICIES',
        `${index.ignoredMesh.length + 1} mesh-wide PeerAuthentications in root namespace ${index.rootNamespace}: ` +
          `${refName(index.mesh.meta)} applies (oldest); ignored: ${index.ignoredMesh.map((i) => refName(i.policy)).join(', ')}`,
        {
          objects: [paRef(index.mesh), ...index.ignoredMesh.map((i) => i.policy)],
          hint: 'delete the ignored ones, or merge them into one',
        },
      ),
    );
  }
  for (const [ns, entry] of index.namespaces) {
    if (!entry.wide || entry.ignoredWide.length === 0) continue;
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_CONFLICTING_NAMESPACE_POLICIES',
        `${entry.ignoredWide.length + 1} namespace-wide PeerAuthentications in namespace ${ns}: ` +
          `${refName(entry.wide.meta)} applies (oldest); ignored: ${entry.ignoredWide.map((i) => refName(i.policy)).join(', ')}`,
        {
          objects: [paRef(entry.wide), ...entry.ignoredWide.map((i) => i.policy)],
          hint: 'delete the ignored ones, or merge them into one',
        },
      ),
    );
  }
  for (const policy of index.rootSelected) {
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_ROOT_NAMESPACE_SELECTOR',
        `PeerAuthentication ${refName(policy.meta)} has a selector and is in the root namespace ${index.rootNamespace}: Istio ignores it`,
        {
          objects: [paRef(policy)],
          hint: 'move it to the namespace of the workloads it selects, or remove the selector to make it mesh-wide',
        },
      ),
    );
  }
  // Several workload policies matching the same workload: only the oldest applies.
  const pairs = new Map<string, { winner: ObjectRef; loserRefs: ObjectRef[]; workloads: Workload[] }>();
  for (const w of input.workloads) {
    const [first, ...losers] = matchingWorkloadPolicies(index, {
      namespace: w.meta.namespace,
      labels: w.meta.labels,
    });
    if (first === undefined || losers.length === 0) continue;
    const key = [first, ...losers].map((p) => refName(p.meta)).join('|');
    const entry = pairs.get(key) ?? { winner: paRef(first), loserRefs: losers.map(paRef), workloads: [] };
    entry.workloads.push(w);
    pairs.set(key, entry);
  }
  for (const { winner, loserRefs, workloads } of pairs.values()) {
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_OVERLAPPING_WORKLOAD_POLICIES',
        `${loserRefs.length + 1} workload PeerAuthentications select ${describeWorkloads(workloads)}: ${refName(winner)} applies (oldest); ` +
          `ignored for these workloads: ${loserRefs.map(refName).join(', ')}`,
        {
          objects: [winner, ...loserRefs, ...workloads.map(wlRef)],
          hint: 'make the selectors disjoint, or merge the policies',
        },
      ),
    );
  }
  return out;
}

function analyzeStrictWithoutSidecar(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  for (const w of input.workloads) {
    if (w.membership.inMesh) continue;
    const e = effectiveInboundMtls(input.peerAuthentications, {
      namespace: w.meta.namespace,
      labels: w.meta.labels,
    });
    const ports = [...w.ports.map((p) => p.port), ...(e.workloadPolicy?.portLevelMtls?.keys() ?? [])];
    const strictPort = ports.find((p) => effectiveModeForPort(e, p) === 'STRICT');
    if (e.workloadMode !== 'STRICT' && strictPort === undefined) continue;
    const chain = chainOf(e, e.workloadMode === 'STRICT' ? undefined : strictPort);
    const decider = [...chain].reverse().find((s) => s.effect === 'sets' && s.policy)?.policy;
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_STRICT_WITHOUT_SIDECAR',
        `${w.kind} ${refName(w.meta)} is STRICT${decider ? ` by PeerAuthentication ${refName(decider)}` : ''} but has no sidecar ` +
          `(${w.membership.reason}): nothing enforces mTLS there, so plaintext is accepted`,
        {
          objects: [wlRef(w), ...(decider ? [decider] : [])],
          hint: 'enable injection for the workload or its namespace (and restart it), or exclude it from the policy',
        },
      ),
    );
  }
  return out;
}

/** Namespaces to test as callers: each with rules of its own, plus one standing for all the others. */
function clientNamespaces(
  input: AnalysisInput,
): { namespace: string; labels: Readonly<Record<string, string>> }[] {
  const inMesh = input.workloads.filter((w) => w.membership.inMesh);
  const withRules = new Set(input.destinationRules.namespaceLocal.keys());
  const out: { namespace: string; labels: Readonly<Record<string, string>> }[] = [];
  const seen = new Set<string>();
  let other = false;
  for (const w of inMesh) {
    const ns = w.meta.namespace;
    if (withRules.has(ns) || ns === input.destinationRules.rootNamespace) {
      // Workload-selector rules depend on the caller's labels: test each distinct label set.
      const key = `${ns}|${formatLabels(w.meta.labels)}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push({ namespace: ns, labels: w.meta.labels });
    } else if (!other) {
      other = true;
      out.push({ namespace: ns, labels: w.meta.labels });
    }
  }
  return out;
}

function analyzeEdges(input: AnalysisInput): Diagnostic[] {
  const ctx: EdgeContext = {
    peerAuthentications: input.peerAuthentications,
    destinationRules: input.destinationRules,
    autoMtls: input.autoMtls,
  };
  const clients = clientNamespaces(input);
  // One finding per failing (rule, target, endpoint, outcome), naming every client namespace it hits.
  const found = new Map<
    string,
    { decision: EdgeDecision; verdict: EndpointVerdict; service: Service; namespaces: string[] }
  >();
  const domain = input.destinationRules.clusterDomain;
  for (const service of input.services) {
    const host = `${service.meta.name}.${service.meta.namespace}.svc.${domain}`;
    for (const sp of service.ports) {
      const endpoints = endpointsOf(service, sp, input.workloads);
      for (const client of clients) {
        const decisionFor = (subset: string | undefined): EdgeDecision =>
          decideEdge(ctx, {
            source: { ref: undefined, namespace: client.namespace, labels: client.labels, inMesh: true },
            host,
            servicePort: sp.port,
            service: { ref: svcRef(service), namespace: service.meta.namespace, headless: service.headless },
            subset,
            endpoints,
          });
        const base = decisionFor(undefined);
        const subsets = [...(base.destinationRule ? subsetNames(input, base) : [])];
        for (const d of [base, ...subsets.map(decisionFor)]) {
          for (const ev of d.endpoints) {
            if (ev.verdict !== 'fails') continue;
            const key = [
              d.destinationRule?.rules.map(refName).join('+') ?? '',
              d.host,
              d.servicePort,
              d.subset ?? '',
              refName(ev.workload),
              ev.port,
              ev.clientTls,
              ev.code,
            ].join('|');
            const entry = found.get(key);
            if (entry) {
              if (!entry.namespaces.includes(client.namespace)) entry.namespaces.push(client.namespace);
            } else {
              found.set(key, { decision: d, verdict: ev, service, namespaces: [client.namespace] });
            }
          }
        }
      }
    }
  }
  return [...found.values()].map((f) => edgeFinding(f.decision, f.verdict, f.service, f.namespaces));
}

function subsetNames(input: AnalysisInput, d: EdgeDecision): string[] {
  const first = d.destinationRule?.rules[0];
  const rule = input.destinationRules.all.find(
    (r) => r.meta.namespace === first?.namespace && r.meta.name === first?.name,
  );
  return rule?.subsets.map((s) => s.name) ?? [];
}

function edgeFinding(
  d: EdgeDecision,
  ev: EndpointVerdict,
  service: Service,
  clientNamespaces: readonly string[],
): Diagnostic {
  const target = `${d.host}:${d.servicePort}${d.subset ? ` (subset ${d.subset})` : ''}`;
  const serverPolicy = [...ev.serverChain].reverse().find((s) => s.effect === 'sets' && s.policy)?.policy;
  const server =
    ev.serverMode === 'NO_SIDECAR'
      ? `${ev.workload.kind} ${refName(ev.workload)} has no sidecar`
      : `${ev.workload.kind} ${refName(ev.workload)} port ${ev.port} is ${ev.serverMode}`;
  const fromRule = d.clusterTls.tls !== undefined || /DestinationRule/.test(ev.clientTlsReason);
  const clients = `mesh clients in namespace${clientNamespaces.length === 1 ? '' : 's'} ${clientNamespaces.join(', ')}`;
  const objects: ObjectRef[] = [
    ...(d.destinationRule?.rules ?? []),
    refOf('Service', service.meta),
    ev.workload,
    ...(serverPolicy ? [serverPolicy] : []),
  ];
  if (fromRule && d.destinationRule) {
    return diagnostic(
      'KMTLS_ANALYZE_DR_TLS_CONFLICT',
      `${clients} calling ${target} send ${ev.clientTls} (${ev.clientTlsReason}) but ${server}: ${ev.code}`,
      {
        objects,
        ...(ev.code === 'MTLS_TO_NON_MESH_WORKLOAD' ? { istioCode: 'IST0115' } : {}),
        hint:
          ev.clientTls === 'DISABLE'
            ? 'set tls.mode ISTIO_MUTUAL, or remove the tls setting to let auto mTLS decide'
            : "align the DestinationRule's tls mode with the server's PeerAuthentication",
      },
    );
  }
  return diagnostic(
    'KMTLS_ANALYZE_AUTO_MTLS_LIMITATION',
    `${clients} calling ${target} send ${ev.clientTls} (${ev.clientTlsReason}) but ${server}: ${ev.code}`,
    {
      objects,
      hint: 'add a DestinationRule for the host with tls.mode ISTIO_MUTUAL, or make the namespace-wide mode match',
    },
  );
}

function analyzeCallers(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  for (const caller of input.callers) {
    if (caller.source.membership.inMesh) continue;
    const ports =
      caller.port === undefined
        ? caller.service.ports
        : caller.service.ports.filter((p) => p.port === caller.port);
    for (const sp of ports) {
      const endpoints = endpointsOf(caller.service, sp, input.workloads).filter(
        (e) => e.workload.membership.inMesh,
      );
      const strict: Workload[] = [];
      const permissive: Workload[] = [];
      for (const e of endpoints) {
        const effective = effectiveInboundMtls(input.peerAuthentications, {
          namespace: e.workload.meta.namespace,
          labels: e.workload.meta.labels,
        });
        const m = effectiveModeForPort(effective, e.port);
        if (m === 'STRICT') strict.push(e.workload);
        else if (m === 'PERMISSIVE') permissive.push(e.workload);
      }
      const who = `${caller.source.kind} ${refName(caller.source.meta)} (no sidecar: ${caller.source.membership.reason})`;
      const what = `Service ${refName(caller.service.meta)} port ${sp.port}`;
      if (strict.length > 0) {
        out.push(
          diagnostic(
            'KMTLS_ANALYZE_CALLER_OUTSIDE_MESH_STRICT',
            `${who} calls ${what} (${caller.via}) with plaintext, which STRICT on ${describeWorkloads(strict)} refuses`,
            {
              objects: [wlRef(caller.source), svcRef(caller.service), ...strict.map(wlRef)],
              hint: 'bring the caller into the mesh, or give that port PERMISSIVE until it is',
            },
          ),
        );
      }
      if (permissive.length > 0) {
        out.push(
          diagnostic(
            'KMTLS_ANALYZE_CALLER_OUTSIDE_MESH',
            `${who} calls ${what} (${caller.via}) with plaintext: it works now (PERMISSIVE) but breaks when ${describeWorkloads(permissive)} turns STRICT`,
            { objects: [wlRef(caller.source), svcRef(caller.service), ...permissive.map(wlRef)] },
          ),
        );
      }
    }
  }
  return out;
}

function analyzeProbes(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  for (const probe of input.probes) {
    if (probe.rewritten || !probe.workload.membership.inMesh) continue;
    const w = probe.workload;
    const e = effectiveInboundMtls(input.peerAuthentications, {
      namespace: w.meta.namespace,
      labels: w.meta.labels,
    });
    if (effectiveModeForPort(e, probe.port) !== 'STRICT') continue;
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_PROBE_ON_STRICT_PORT',
        `the ${probe.kind} probe (${probe.handler}) of container ${probe.container} in ${w.kind} ${refName(w.meta)} targets STRICT port ${probe.port} ` +
          'and probe rewriting is off: the kubelet sends plaintext, which is refused',
        {
          objects: [wlRef(w)],
          hint: 'remove the annotation sidecar.istio.io/rewriteAppHTTPProbers: "false", or make that port PERMISSIVE',
        },
      ),
    );
  }
  return out;
}

function noCa(tls: ClientTlsSettings | undefined): boolean {
  return (
    tls !== undefined &&
    (tls.mode === 'SIMPLE' || tls.mode === 'MUTUAL') &&
    !tls.caCertificates &&
    !tls.credentialName &&
    tls.insecureSkipVerify !== true
  );
}

function analyzeDestinationRules(input: AnalysisInput): Diagnostic[] {
  const out: Diagnostic[] = [];
  const domain = input.destinationRules.clusterDomain;
  const hosts = new Set(input.services.map((s) => `${s.meta.name}.${s.meta.namespace}.svc.${domain}`));
  const namespaces = new Set(input.workloads.map((w) => w.meta.namespace));
  for (const rule of input.destinationRules.all) {
    const ref = refOf('DestinationRule', rule.meta);
    const check = (tls: ClientTlsSettings | undefined, path: (string | number)[], portLevel: boolean) => {
      if (!noCa(tls)) return;
      out.push(
        diagnostic(
          'KMTLS_DR_NO_CA_CERTIFICATES',
          `DestinationRule ${refName(rule.meta)} originates ${tls?.mode} TLS without caCertificates${portLevel ? ' at port level' : ''}: the server certificate is not verified`,
          {
            location: rule.locate(path),
            objects: [ref],
            istioCode: portLevel ? 'IST0129' : 'IST0128',
            hint: 'set caCertificates (or credentialName) so the server is authenticated',
          },
        ),
      );
    };
    const tp = rule.trafficPolicy;
    check(tp?.tls, ['spec', 'trafficPolicy', 'tls'], false);
    for (const [i, p] of (tp?.portLevelSettings ?? []).entries()) {
      check(p.tls, ['spec', 'trafficPolicy', 'portLevelSettings', i, 'tls'], true);
    }
    for (const [i, s] of rule.subsets.entries()) {
      check(s.trafficPolicy?.tls, ['spec', 'subsets', i, 'trafficPolicy', 'tls'], false);
    }

    const host = resolveRuleHost(rule.host, rule.meta.namespace, domain);
    if (host.startsWith('*') || hosts.size === 0 || hosts.has(host)) continue;
    const parts = rule.host.split('.');
    const looksInternal =
      host.endsWith(`.svc.${domain}`) || (parts.length === 2 && namespaces.has(parts[1] ?? ''));
    if (!looksInternal) continue;
    const expanded = parts.length === 2 ? `${rule.host}.svc.${domain}` : undefined;
    out.push(
      diagnostic(
        'KMTLS_ANALYZE_DR_HOST_MATCHES_NOTHING',
        `DestinationRule ${refName(rule.meta)} host ${JSON.stringify(rule.host)} matches no Service` +
          (expanded
            ? ': only a name without dots is completed with the namespace, so this host is taken literally'
            : ''),
        {
          location: rule.locate(['spec', 'host']),
          objects: [ref],
          ...(expanded && hosts.has(expanded) ? { hint: `write host: ${expanded}` } : {}),
        },
      ),
    );
  }
  return out;
}
