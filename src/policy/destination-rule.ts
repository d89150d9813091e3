import { isIP } from 'node:net';
import { selectorMatches } from './labels.js';
import type { ClientTlsMode, ClientTlsSettings, DestinationRule, ObjectRef, TrafficPolicy } from './model.js';
import { refOf } from './model.js';
import { compareByCreation } from './order.js';

export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';

/**
 * Several DestinationRules for the same host in one namespace, merged as Istio's
 * `mergeDestinationRule` does: the oldest rule's trafficPolicy wins whole (no field merge), subsets
 * are united (the first of a name wins). A rule with a workloadSelector makes its own entry, into
 * which later rules with the same selector and every rule without selector are merged.
 */
export interface MergedDestinationRule {
  readonly host: string;
  readonly namespace: string;
  /** Every rule merged here, oldest first; the first one with a trafficPolicy supplied it. */
  readonly rules: readonly DestinationRule[];
  readonly trafficPolicy: TrafficPolicy | undefined;
  readonly policyFrom: DestinationRule | undefined;
  readonly subsets: ReadonlyMap<
    string,
    { subset: DestinationRule['subsets'][number]; from: DestinationRule }
  >;
  readonly exportTo: readonly string[];
  readonly selector: Readonly<Record<string, string>> | undefined;
}

interface HostTable {
  readonly exact: Map<string, MergedDestinationRule[]>;
  readonly wildcard: Map<string, MergedDestinationRule[]>;
}

export interface DestinationRuleIndex {
  readonly rootNamespace: string;
  readonly clusterDomain: string;
  readonly namespaceLocal: ReadonlyMap<string, HostTable>;
  readonly exportedByNamespace: ReadonlyMap<string, HostTable>;
  readonly rootNamespaceLocal: HostTable;
  readonly all: readonly DestinationRule[];
}

/** Istio's `ResolveShortnameToFQDN`: only a name without dots is completed with the rule's namespace. */
export function resolveRuleHost(host: string, namespace: string, clusterDomain: string): string {
  // Istio skips only real IP addresses (`net.ParseIP`): `db`, `cafe` or `123` are short names.
  if (host === '*' || host.includes('.') || isIP(host) !== 0) return host;
  return `${host}.${namespace}.svc.${clusterDomain}`;
}

function newTable(): HostTable {
  return { exact: new Map(), wildcard: new Map() };
}

/**
 * Istio's `mergeDestinationRule`. Rules arrive selector-first, then oldest first. A rule without
 * selector is merged into every entry already there — the other catch-all and each selector
 * entry, whose own trafficPolicy and subsets come first — and stands on its own only if no
 * catch-all exists yet. A selector rule merges only into the entry with the same selector.
 */
function addToTable(table: HostTable, rule: DestinationRule, host: string): void {
  const map = host.startsWith('*') ? table.wildcard : table.exact;
  const list = map.get(host) ?? [];
  const selector = rule.workloadSelector?.matchLabels;
  let isNewEntry = true;
  list.forEach((existing, i) => {
    if (selector !== undefined && existing.selector !== undefined && !sameLabels(selector, existing.selector))
      return;
    if (selector === undefined ? existing.selector === undefined : existing.selector !== undefined)
      isNewEntry = false;
    list[i] = merged(existing.host, existing.rules[0]!, [...existing.rules, rule]);
  });
  if (isNewEntry) list.push(merged(host, rule, [rule]));
  map.set(host, list);
}

function sameLabels(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => b[k] === a[k]);
}

function merged(host: string, first: DestinationRule, rules: DestinationRule[]): MergedDestinationRule {
  const policyFrom = rules.find((r) => r.trafficPolicy !== undefined);
  const subsets = new Map<string, { subset: DestinationRule['subsets'][number]; from: DestinationRule }>();
  for (const r of rules)
    for (const s of r.subsets) if (!subsets.has(s.name)) subsets.set(s.name, { subset: s, from: r });
  return {
    host,
    namespace: first.meta.namespace,
    rules,
    trafficPolicy: policyFrom?.trafficPolicy,
    policyFrom,
    subsets,
    exportTo: rules[0]!.exportTo,
    selector: rules[0]!.workloadSelector?.matchLabels,
  };
}

/** Indexes DestinationRules as Istio's `setDestinationRules`: by visibility, then by host. */
export function indexDestinationRules(
  rules: readonly DestinationRule[],
  rootNamespace: string,
  clusterDomain: string = DEFAULT_CLUSTER_DOMAIN,
): DestinationRuleIndex {
  // Istio sorts rules with a workloadSelector first, then oldest first.
  const sorted = [...rules].sort(
    (a, b) =>
      Number(b.workloadSelector !== undefined) - Number(a.workloadSelector !== undefined) ||
      compareByCreation(a.meta, b.meta),
  );
  const namespaceLocal = new Map<string, HostTable>();
  const exportedByNamespace = new Map<string, HostTable>();
  const rootNamespaceLocal = newTable();
  const table = (m: Map<string, HostTable>, ns: string) => {
    let t = m.get(ns);
    if (!t) {
      t = newTable();
      m.set(ns, t);
    }
    return t;
  };
  for (const rule of sorted) {
    const ns = rule.meta.namespace;
    const host = resolveRuleHost(rule.host, ns, clusterDomain);
    const exportTo = rule.workloadSelector !== undefined ? ['.'] : rule.exportTo;
    const visibleLocally = exportTo.length === 0 || exportTo.some((e) => e === '*' || e === '.' || e === ns);
    if (visibleLocally) addToTable(table(namespaceLocal, ns), rule, host);
    const privateOnly = exportTo.length === 1 && (exportTo[0] === '.' || exportTo[0] === ns);
    if (!privateOnly) addToTable(table(exportedByNamespace, ns), rule, host);
    else if (ns === rootNamespace) addToTable(rootNamespaceLocal, rule, host);
  }
  return {
    rootNamespace,
    clusterDomain,
    namespaceLocal,
    exportedByNamespace,
    rootNamespaceLocal,
    all: sorted,
  };
}

/** Istio's `MostSpecificHostMatch`: an exact host first, else the longest matching wildcard. */
function mostSpecific(host: string, table: HostTable | undefined): MergedDestinationRule[] | undefined {
  if (table === undefined) return undefined;
  const exact = table.exact.get(host);
  if (exact) return exact;
  let best: string | undefined;
  for (const w of table.wildcard.keys()) {
    if (w !== '*' && !host.endsWith(w.slice(1))) continue;
    if (best === undefined || w.length > best.length || (w.length === best.length && w < best)) best = w;
  }
  return best === undefined ? undefined : table.wildcard.get(best);
}

function exportedTo(
  rules: MergedDestinationRule[] | undefined,
  clientNamespace: string,
): MergedDestinationRule[] | undefined {
  const visible = rules?.filter(
    (r) => r.exportTo.length === 0 || r.exportTo.some((e) => e === '*' || e === clientNamespace),
  );
  return visible && visible.length > 0 ? visible : undefined;
}

export interface RuleLookup {
  /** The merged rule that applies, if any. */
  readonly rule: MergedDestinationRule | undefined;
  /** Which namespace's rules were searched and matched, in Istio's order. */
  readonly foundIn: 'client-namespace' | 'service-namespace' | 'root-namespace' | undefined;
}

/**
 * The DestinationRule a client in `clientNamespace` (with `clientLabels`) uses for `host`, as
 * Istio's `PushContext.destinationRule` then `SidecarScope.DestinationRule`: the client's own
 * namespace first, then the service's namespace, then the root namespace — the first namespace
 * with any host match wins, even a broad wildcard over an exact rule elsewhere.
 */
export function findDestinationRule(
  index: DestinationRuleIndex,
  clientNamespace: string,
  clientLabels: Readonly<Record<string, string>>,
  host: string,
  serviceNamespace: string | undefined,
): RuleLookup {
  const pick = (list: MergedDestinationRule[]): MergedDestinationRule | undefined => {
    const selected = list.find(
      (r) =>
        r.selector !== undefined &&
        r.namespace === clientNamespace &&
        selectorMatches(r.selector, clientLabels),
    );
    if (selected) return selected;
    let catchAll: MergedDestinationRule | undefined;
    for (const r of list) if (r.selector === undefined) catchAll = r;
    return catchAll;
  };
  const local =
    clientNamespace !== index.rootNamespace
      ? mostSpecific(host, index.namespaceLocal.get(clientNamespace))
      : mostSpecific(host, index.rootNamespaceLocal);
  if (local) {
    const rule = pick(local);
    if (rule) return { rule, foundIn: 'client-namespace' };
  }
  if (serviceNamespace !== undefined) {
    const fromService = exportedTo(
      mostSpecific(host, index.exportedByNamespace.get(serviceNamespace)),
      clientNamespace,
    );
    if (fromService) {
      const rule = pick(fromService);
      if (rule) return { rule, foundIn: 'service-namespace' };
    }
  }
  const fromRoot = exportedTo(
    mostSpecific(host, index.exportedByNamespace.get(index.rootNamespace)),
    clientNamespace,
  );
  if (fromRoot) {
    const rule = pick(fromRoot);
    if (rule) return { rule, foundIn: 'root-namespace' };
  }
  return { rule: undefined, foundIn: undefined };
}

export type TlsLevel = 'destination' | 'destination-port' | 'subset' | 'subset-port';

export interface ClusterTls {
  /** The user-supplied TLS settings for the cluster; undefined means auto mTLS decides. */
  readonly tls: ClientTlsSettings | undefined;
  /** Which level of the rule decided; undefined when nothing in the rule applied. */
  readonly level: TlsLevel | undefined;
  readonly from: ObjectRef | undefined;
}

/**
 * The cluster's TLS as Istio's `GetPortLevelTrafficPolicy` + `MergeSubsetTrafficPolicy`, highest
 * first: the subset's port entry (even without tls), the subset's tls, the rule's port entry (even
 * without tls: it replaces the destination level whole), the rule's tls.
 */
export function clusterTlsFor(
  rule: MergedDestinationRule | undefined,
  servicePort: number,
  subset: string | undefined,
): ClusterTls {
  let tls: ClientTlsSettings | undefined;
  let level: TlsLevel | undefined;
  const from = rule?.policyFrom ? refOf('DestinationRule', rule.policyFrom.meta) : undefined;
  let source = from;
  const top = rule?.trafficPolicy;
  const portEntry = top?.portLevelSettings.find((p) => p.port === servicePort);
  if (portEntry) {
    tls = portEntry.tls;
    level = 'destination-port';
  } else if (top?.tls) {
    tls = top.tls;
    level = 'destination';
  }
  const s = subset === undefined ? undefined : rule?.subsets.get(subset);
  const sp = s?.subset.trafficPolicy;
  if (s && sp) {
    const subsetPort = sp.portLevelSettings.find((p) => p.port === servicePort);
    if (subsetPort) {
      tls = subsetPort.tls;
      level = 'subset-port';
      source = refOf('DestinationRule', s.from.meta);
    } else if (sp.tls) {
      tls = sp.tls;
      level = 'subset';
      source = refOf('DestinationRule', s.from.meta);
    }
  }
  return { tls, level, from: level ? source : undefined };
}

/**
 * Istio's endpoint-level `tlsModeForDestinationRule`: the subset's own policy only (no fallback to
 * the rule's top level), where a port entry overrides only when it has tls.
 */
export function endpointTlsModeFor(
  rule: MergedDestinationRule | undefined,
  servicePort: number,
  subset: string | undefined,
): ClientTlsMode | undefined {
  if (rule === undefined) return undefined;
  const tp = subset === undefined ? rule.trafficPolicy : rule.subsets.get(subset)?.subset.trafficPolicy;
  if (tp === undefined) return undefined;
  let mode = tp.tls?.mode;
  const entry = tp.portLevelSettings.find((p) => p.port === servicePort && p.tls !== undefined);
  if (entry?.tls) mode = entry.tls.mode;
  return mode;
}

/** Whether the cluster is a passthrough (ORIGINAL_DST) one, judged from the policy Istio passes. */
export function isPassthroughCluster(
  headless: boolean,
  rule: MergedDestinationRule | undefined,
  subset: string | undefined,
): boolean {
  if (headless) return true;
  const tp = subset === undefined ? rule?.trafficPolicy : rule?.subsets.get(subset)?.subset.trafficPolicy;
  return tp?.loadBalancerPassthrough === true;
}
