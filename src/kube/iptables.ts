import { isIPv4, isIPv6 } from 'node:net';
import type { ErrorCode } from '../errors.js';
import { KmtlsError } from '../errors.js';

/**
 * Transparent interception in a pod, as Istio's `istio-iptables` sets it up in REDIRECT mode: the
 * nat-table rules that send the application's inbound TCP to the sidecar's inbound port and its
 * outbound TCP to the sidecar's outbound port, leaving the proxy's own traffic (its uid or gid) alone.
 * This module only builds the rules (pure); iptables-apply.ts runs them. IPv4 is redirected; IPv6 is
 * not intercepted, so that it cannot bypass the sidecar's STRICT ports, new inbound IPv6 TCP
 * connections on the ports IPv4 would intercept are rejected (ip6tables filter table, see
 * {@link buildIpv6Rules}). Outbound IPv6 leaves uninspected; IPv6 ranges in the options have no effect.
 */

export const CHAINS = {
  inbound: 'KMTLS_INBOUND',
  inRedirect: 'KMTLS_IN_REDIRECT',
  output: 'KMTLS_OUTPUT',
  redirect: 'KMTLS_REDIRECT',
} as const;

/** The ip6tables filter-table chain that rejects inbound IPv6 TCP the sidecar would not see. */
export const IPV6_CHAINS = { inbound: 'KMTLS_INBOUND6' } as const;

/** The proxy's own ports, never intercepted inbound: admin, inbound, outbound, status, health. */
export const ALWAYS_EXCLUDED_INBOUND_PORTS = [15000, 15006, 15001, 15020, 15021] as const;

/** Istio's defaults: the proxy runs as uid and gid 1337. */
export const DEFAULT_PROXY_UID = 1337;
export const DEFAULT_INBOUND_PORT = 15006;
export const DEFAULT_OUTBOUND_PORT = 15001;

/**
 * Istio's inbound passthrough source: connections from it to the pod's own address are never
 * intercepted again. The sidecar reaches the application at the pod's IP from this address (and so
 * do the status port's probes), as Istio does since 1.10.
 */
export const INBOUND_PASSTHROUGH_SOURCE = '127.0.0.6';

/** `*`: every port (or every address); a list: only these. An empty list intercepts nothing. */
export type Selection<T> = '*' | readonly T[];

export interface InterceptionOptions {
  /** The proxy's uid and gid: their connections are never redirected (no loops). */
  readonly proxyUid: number;
  readonly proxyGid: number;
  /** The sidecar's inbound port (Istio's 15006) and outbound port (15001). */
  readonly inboundPort: number;
  readonly outboundPort: number;
  readonly includeInboundPorts: Selection<number>;
  /** Only with `includeInboundPorts: '*'`; the proxy's own ports are always added. */
  readonly excludeInboundPorts: readonly number[];
  readonly excludeOutboundPorts: readonly number[];
  readonly excludeOutboundCidrs: readonly string[];
  readonly includeOutboundCidrs: Selection<string>;
}

export const DEFAULT_INTERCEPTION: InterceptionOptions = Object.freeze({
  proxyUid: DEFAULT_PROXY_UID,
  proxyGid: DEFAULT_PROXY_UID,
  inboundPort: DEFAULT_INBOUND_PORT,
  outboundPort: DEFAULT_OUTBOUND_PORT,
  includeInboundPorts: '*',
  excludeInboundPorts: [],
  excludeOutboundPorts: [],
  excludeOutboundCidrs: [],
  includeOutboundCidrs: '*',
});

/** The pod annotations Istio's injector reads for interception; kmtls reads the same. */
export const INTERCEPTION_ANNOTATIONS = {
  includeInboundPorts: 'traffic.sidecar.istio.io/includeInboundPorts',
  excludeInboundPorts: 'traffic.sidecar.istio.io/excludeInboundPorts',
  excludeOutboundPorts: 'traffic.sidecar.istio.io/excludeOutboundPorts',
  excludeOutboundCidrs: 'traffic.sidecar.istio.io/excludeOutboundIPRanges',
  includeOutboundCidrs: 'traffic.sidecar.istio.io/includeOutboundIPRanges',
} as const;

/** The options as text, as annotations and flags carry them: comma-separated lists, `*` for all. */
export type InterceptionText = Partial<Record<keyof typeof INTERCEPTION_ANNOTATIONS, string>> & {
  readonly proxyUid?: string;
  readonly proxyGid?: string;
  readonly inboundPort?: string;
  readonly outboundPort?: string;
};

export type InterceptionResult =
  | { readonly ok: true; readonly options: InterceptionOptions }
  | { readonly ok: false; readonly errors: readonly KmtlsError[] };

function items(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function asPort(item: string): number | undefined {
  if (!/^[0-9]{1,5}$/.test(item)) return undefined;
  const n = Number(item);
  return n >= 1 && n <= 65535 ? n : undefined;
}

function isCidr(item: string): boolean {
  const slash = item.indexOf('/');
  if (slash < 0) return false;
  const ip = item.slice(0, slash);
  const bits = item.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(bits)) return false;
  if (isIPv4(ip)) return Number(bits) <= 32;
  if (isIPv6(ip)) return Number(bits) <= 128;
  return false;
}

/**
 * Reads interception options from text (annotations or flags); everything not given keeps its
 * default. Every bad value is reported, each as a KmtlsError with `code` and the name it came under.
 */
export function parseInterception(
  text: InterceptionText,
  opts: { code: ErrorCode; nameOf: (key: keyof InterceptionText) => string },
): InterceptionResult {
  const errors: KmtlsError[] = [];
  const bad = (key: keyof InterceptionText, value: string, why: string) =>
    errors.push(new KmtlsError(opts.code, `bad ${opts.nameOf(key)}: ${JSON.stringify(value)} (${why})`));
  const ports = (key: keyof InterceptionText, star: boolean): Selection<number> | undefined => {
    const value = text[key];
    if (value === undefined) return undefined;
    if (value.trim() === '*') {
      if (star) return '*';
      bad(key, value, '`*` is not allowed here; list ports');
      return undefined;
    }
    const out: number[] = [];
    for (const item of items(value)) {
      const p = asPort(item);
      if (p === undefined) bad(key, value, `${JSON.stringify(item)} is not a port (1..65535)`);
      else if (!out.includes(p)) out.push(p);
    }
    return out;
  };
  const cidrs = (key: keyof InterceptionText, star: boolean): Selection<string> | undefined => {
    const value = text[key];
    if (value === undefined) return undefined;
    if (value.trim() === '*') {
      if (star) return '*';
      bad(key, value, '`*` is not allowed here; list CIDRs');
      return undefined;
    }
    const out: string[] = [];
    for (const item of items(value)) {
      if (!isCidr(item)) bad(key, value, `${JSON.stringify(item)} is not a CIDR such as 10.0.0.0/8`);
      else if (!out.includes(item)) out.push(item);
    }
    return out;
  };
  const id = (key: 'proxyUid' | 'proxyGid'): number | undefined => {
    const value = text[key];
    if (value === undefined) return undefined;
    if (!/^[0-9]{1,10}$/.test(value.trim()) || Number(value) > 0xfffffffe) {
      bad(key, value, 'not a numeric uid/gid');
      return undefined;
    }
    return Number(value);
  };
  const port = (key: 'inboundPort' | 'outboundPort'): number | undefined => {
    const value = text[key];
    if (value === undefined) return undefined;
    const p = asPort(value.trim());
    if (p === undefined) bad(key, value, 'not a port (1..65535)');
    return p;
  };
  const d = DEFAULT_INTERCEPTION;
  const proxyUid = id('proxyUid') ?? d.proxyUid;
  const options: InterceptionOptions = {
    proxyUid,
    // Istio: the gid defaults to the uid.
    proxyGid: id('proxyGid') ?? proxyUid,
    inboundPort: port('inboundPort') ?? d.inboundPort,
    outboundPort: port('outboundPort') ?? d.outboundPort,
    includeInboundPorts: ports('includeInboundPorts', true) ?? d.includeInboundPorts,
    excludeInboundPorts:
      (ports('excludeInboundPorts', false) as number[] | undefined) ?? d.excludeInboundPorts,
    excludeOutboundPorts:
      (ports('excludeOutboundPorts', false) as number[] | undefined) ?? d.excludeOutboundPorts,
    excludeOutboundCidrs:
      (cidrs('excludeOutboundCidrs', false) as string[] | undefined) ?? d.excludeOutboundCidrs,
    includeOutboundCidrs: cidrs('includeOutboundCidrs', true) ?? d.includeOutboundCidrs,
  };
  if (options.inboundPort === options.outboundPort && errors.length === 0)
    bad('outboundPort', String(options.outboundPort), 'the inbound and outbound ports must differ');
  return errors.length > 0 ? { ok: false, errors } : { ok: true, options: Object.freeze(options) };
}

/**
 * The interception a pod's annotations ask for (Istio's `traffic.sidecar.istio.io/*`), for the
 * injector. A bad annotation is a KMTLS_INJECT_BAD_ANNOTATION error naming it; none is ignored.
 */
export function interceptionFromAnnotations(
  annotations: Readonly<Record<string, string>> | undefined,
): InterceptionResult {
  const a = annotations ?? {};
  const text: Record<string, string> = {};
  for (const [key, name] of Object.entries(INTERCEPTION_ANNOTATIONS)) {
    const value = a[name];
    if (value !== undefined) text[key] = value;
  }
  return parseInterception(text, {
    code: 'KMTLS_INJECT_BAD_ANNOTATION',
    nameOf: (key) => `annotation ${(INTERCEPTION_ANNOTATIONS as Record<string, string>)[key] ?? String(key)}`,
  });
}

/** The inbound ports never intercepted: the proxy's own, the configured ones, then the given ones. */
export function excludedInboundPorts(o: InterceptionOptions): number[] {
  const out: number[] = [];
  for (const p of [...ALWAYS_EXCLUDED_INBOUND_PORTS, o.inboundPort, o.outboundPort, ...o.excludeInboundPorts])
    if (!out.includes(p)) out.push(p);
  return out;
}

/**
 * The rules, in order, as `iptables -t nat` arguments (one string per rule): Istio's REDIRECT-mode
 * rules with its chain names replaced by kmtls's.
 */
export function buildInterceptionRules(o: InterceptionOptions): string[] {
  const { inbound, inRedirect, output, redirect } = CHAINS;
  const rules: string[] = [
    `-A ${inRedirect} -p tcp -j REDIRECT --to-ports ${o.inboundPort}`,
    `-A ${redirect} -p tcp -j REDIRECT --to-ports ${o.outboundPort}`,
  ];
  // Inbound: everything arriving from outside the pod, except the excluded ports, or only the listed ones.
  const inboundAll = o.includeInboundPorts === '*';
  if (inboundAll || o.includeInboundPorts.length > 0) {
    rules.push(`-A PREROUTING -p tcp -j ${inbound}`);
    if (o.includeInboundPorts === '*') {
      for (const p of excludedInboundPorts(o)) rules.push(`-A ${inbound} -p tcp --dport ${p} -j RETURN`);
      rules.push(`-A ${inbound} -p tcp -j ${inRedirect}`);
    } else {
      for (const p of o.includeInboundPorts) rules.push(`-A ${inbound} -p tcp --dport ${p} -j ${inRedirect}`);
    }
  }
  // Outbound: connections the pod makes.
  rules.push(`-A OUTPUT -p tcp -j ${output}`);
  // Port exclusions come first: they hold even for connections back to the pod itself.
  for (const p of o.excludeOutboundPorts) rules.push(`-A ${output} -p tcp --dport ${p} -j RETURN`);
  // The sidecar's inbound side reaching the application from 127.0.0.6 is never intercepted again.
  rules.push(`-A ${output} -s ${INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN`);
  for (const [match, id] of [
    ['--uid-owner', o.proxyUid],
    ['--gid-owner', o.proxyGid],
  ] as const) {
    // The proxy calling the pod's own address (app -> own Service via the sidecar): the inbound
    // side applies the pod's own policy, as for any other caller.
    rules.push(`-A ${output} ! -d 127.0.0.1/32 -o lo -p tcp -m owner ${match} ${id} -j ${inRedirect}`);
    // The application calling itself over loopback (its own pod IP included) skips the sidecar.
    rules.push(`-A ${output} -o lo -m owner ! ${match} ${id} -j RETURN`);
    // Everything else the proxy sends goes where it was sent: no loops.
    rules.push(`-A ${output} -m owner ${match} ${id} -j RETURN`);
  }
  rules.push(`-A ${output} -d 127.0.0.1/32 -j RETURN`);
  // IPv4 only: IPv6 ranges have nothing to act on here.
  for (const cidr of o.excludeOutboundCidrs)
    if (isIPv4(cidr.split('/')[0]!)) rules.push(`-A ${output} -d ${cidr} -j RETURN`);
  if (o.includeOutboundCidrs === '*') rules.push(`-A ${output} -j ${redirect}`);
  else
    for (const cidr of o.includeOutboundCidrs)
      if (isIPv4(cidr.split('/')[0]!)) rules.push(`-A ${output} -d ${cidr} -j ${redirect}`);
  return rules;
}

/** The `iptables-restore --noflush` input that installs the rules in one transaction. */
export function renderIptablesRestore(o: InterceptionOptions): string {
  return [
    '*nat',
    ...Object.values(CHAINS).map((c) => `:${c} - [0:0]`),
    ...buildInterceptionRules(o),
    'COMMIT',
    '',
  ].join('\n');
}

/**
 * The ip6tables rules (filter table), as arguments: new inbound IPv6 TCP connections (SYN) arriving
 * on a non-loopback interface are reset on every port the IPv4 rules would redirect to the sidecar,
 * so a client cannot reach a STRICT port in plaintext over the pod's IPv6 address. Excluded ports
 * (the proxy's own included) stay open, as for IPv4. No rules when no inbound port is intercepted.
 */
export function buildIpv6Rules(o: InterceptionOptions): string[] {
  const { inbound } = IPV6_CHAINS;
  if (o.includeInboundPorts !== '*' && o.includeInboundPorts.length === 0) return [];
  const rules = [`-A INPUT -p tcp -j ${inbound}`, `-A ${inbound} -i lo -j RETURN`];
  const reject = '-j REJECT --reject-with tcp-reset';
  if (o.includeInboundPorts === '*') {
    for (const p of excludedInboundPorts(o)) rules.push(`-A ${inbound} -p tcp --dport ${p} -j RETURN`);
    rules.push(`-A ${inbound} -p tcp --syn ${reject}`);
  } else {
    for (const p of o.includeInboundPorts) rules.push(`-A ${inbound} -p tcp --dport ${p} --syn ${reject}`);
  }
  return rules;
}

/** The `ip6tables-restore --noflush` input for {@link buildIpv6Rules}, or undefined when there are none. */
export function renderIp6tablesRestore(o: InterceptionOptions): string | undefined {
  const rules = buildIpv6Rules(o);
  if (rules.length === 0) return undefined;
  return ['*filter', ...Object.values(IPV6_CHAINS).map((c) => `:${c} - [0:0]`), ...rules, 'COMMIT', ''].join(
    '\n',
  );
}
