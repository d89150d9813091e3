import type {
  DestinationRuleIndex,
  MergedDestinationRule,
  RuleLookup,
  TlsLevel,
} from './destination-rule.js';
import {
  clusterTlsFor,
  endpointTlsModeFor,
  findDestinationRule,
  isPassthroughCluster,
} from './destination-rule.js';
import { selectorMatches } from './labels.js';
import type { ClientTlsMode, ClientTlsSettings, ObjectRef, ResolvedMtlsMode, Workload } from './model.js';
import { refOf } from './model.js';
import type { ChainStep, PeerAuthenticationIndex } from './peer-authentication.js';
import {
  chainOf,
  effectiveInboundMtls,
  effectiveModeForPort,
  namespaceMtlsMode,
} from './peer-authentication.js';

/** The calling side of a connection. */
export interface EdgeSource {
  readonly ref: ObjectRef | undefined;
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Whether the caller has a sidecar; one without sends whatever its application sends (plaintext). */
  readonly inMesh: boolean;
}

/** One endpoint of the destination: a workload and the port it receives on (the resolved targetPort). */
export interface EdgeEndpoint {
  readonly workload: Workload;
  readonly port: number;
}

export interface EdgeQuery {
  readonly source: EdgeSource;
  /** The fully qualified host, e.g. `payments.finance.svc.cluster.local`. */
  readonly host: string;
  readonly servicePort: number;
  /** The Service behind the host; undefined when the host is outside the mesh's registry. */
  readonly service:
    | { readonly ref: ObjectRef; readonly namespace: string; readonly headless: boolean }
    | undefined;
  readonly subset: string | undefined;
  /** Every endpoint of the service port, before subset filtering. */
  readonly endpoints: readonly EdgeEndpoint[];
}

export interface EdgeContext {
  readonly peerAuthentications: PeerAuthenticationIndex;
  readonly destinationRules: DestinationRuleIndex;
  /** meshConfig.enableAutoMtls; Istio's default is true. */
  readonly autoMtls: boolean;
}

/** How a connection ends; `works`, `fails`, or `depends` on something kmtls cannot see. */
export type Verdict = 'works' | 'fails' | 'depends';

export const VERDICT_CODES = [
  'MTLS',
  'PLAINTEXT',
  'APP_TLS',
  'EXTERNAL',
  'PLAINTEXT_REJECTED',
  'MTLS_TO_DISABLED_PORT',
  'MTLS_TO_NON_MESH_WORKLOAD',
  'NO_CLIENT_CERT',
  'UNKNOWN_CA',
  'SUBSET_NOT_FOUND',
  'NO_ENDPOINTS',
] as const;
export type VerdictCode = (typeof VERDICT_CODES)[number];

/** What the server side of an endpoint accepts: a resolved mode, or no sidecar at all. */
export type ServerMode = ResolvedMtlsMode | 'NO_SIDECAR' | 'UNKNOWN';

export interface EndpointVerdict {
  readonly workload: ObjectRef;
  readonly port: number;
  readonly clientTls: ClientTlsMode;
  /** Why the client sends that: the rule level, or the auto-mTLS step that decided. */
  readonly clientTlsReason: string;
  readonly serverMode: ServerMode;
  /** The PeerAuthentication chain behind `serverMode`, when the server has a sidecar. */
  readonly serverChain: readonly ChainStep[];
  readonly verdict: Verdict;
  readonly code: VerdictCode;
  readonly reason: string;
}

export interface EdgeDecision {
  readonly host: string;
  readonly servicePort: number;
  readonly subset: string | undefined;
  readonly destinationRule:
    | { readonly rules: readonly ObjectRef[]; readonly host: string; readonly foundIn: RuleLookup['foundIn'] }
    | undefined;
  /** The user-supplied cluster TLS and the level it came from; undefined tls means auto mTLS. */
  readonly clusterTls: {
    readonly tls: ClientTlsSettings | undefined;
    readonly level: TlsLevel | undefined;
    readonly from: ObjectRef | undefined;
  };
  /** Istio's `BestEffortInferServiceMTLSMode`, the mode auto mTLS assumes for the whole service. */
  readonly serviceMtlsMode: ResolvedMtlsMode | 'UNKNOWN';
  readonly passthrough: boolean;
  readonly endpoints: readonly EndpointVerdict[];
  /** Set when the edge fails before any endpoint is chosen. */
  readonly problem: { readonly code: VerdictCode; readonly message: string } | undefined;
  /** For a host outside the mesh: what the client sends there, and that the outcome depends on the server. */
  readonly outside:
    | {
        readonly clientTls: ClientTlsMode;
        readonly clientTlsReason: string;
        readonly verdict: Verdict;
        readonly code: VerdictCode;
        readonly reason: string;
      }
    | undefined;
}

/** What happens when a client sending `clientTls` meets a server in `serverMode`. */
export function judge(
  clientTls: ClientTlsMode,
  serverMode: ServerMode,
): { verdict: Verdict; code: VerdictCode; reason: string } {
  if (serverMode === 'UNKNOWN') {
    return {
      verdict: 'depends',
      code: 'EXTERNAL',
      reason: 'the destination is outside the mesh; it works if the server accepts what the client sends',
    };
  }
  switch (clientTls) {
    case 'ISTIO_MUTUAL':
      if (serverMode === 'STRICT' || serverMode === 'PERMISSIVE') {
        return { verdict: 'works', code: 'MTLS', reason: `mesh mTLS, accepted by the ${serverMode} server` };
      }
      if (serverMode === 'DISABLE') {
        return {
          verdict: 'fails',
          code: 'MTLS_TO_DISABLED_PORT',
          reason:
            'the client sends mesh mTLS but the server port is DISABLE: its sidecar passes the TLS bytes to an application that expects plaintext',
        };
      }
      return {
        verdict: 'fails',
        code: 'MTLS_TO_NON_MESH_WORKLOAD',
        reason:
          'the client sends mesh mTLS but the server has no sidecar to terminate it; the application receives a TLS handshake',
      };
    case 'DISABLE':
      if (serverMode === 'STRICT') {
        return {
          verdict: 'fails',
          code: 'PLAINTEXT_REJECTED',
          reason: 'the client sends plaintext and the server port is STRICT: the connection is reset',
        };
      }
      return {
        verdict: 'works',
        code: 'PLAINTEXT',
        reason:
          serverMode === 'NO_SIDECAR'
            ? 'plaintext to a workload without sidecar'
            : `plaintext, accepted by the ${serverMode} server`,
      };
    case 'SIMPLE':
    case 'MUTUAL':
      if (serverMode === 'STRICT') {
        return clientTls === 'SIMPLE'
          ? {
              verdict: 'fails',
              code: 'NO_CLIENT_CERT',
              reason:
                'the client sends TLS without a client certificate and the STRICT server requires a mesh certificate',
            }
          : {
              verdict: 'fails',
              code: 'UNKNOWN_CA',
              reason:
                'the STRICT server terminates the TLS itself and requires a certificate from the mesh CA; a certificate from another CA is refused',
            };
      }
      return {
        verdict: 'depends',
        code: 'APP_TLS',
        reason:
          serverMode === 'NO_SIDECAR'
            ? 'the client originates TLS; it works if the application terminates TLS itself'
            : `the ${serverMode} server passes non-mesh TLS through to the application; it works if the application terminates TLS itself`,
      };
    default: {
      const never: never = clientTls;
      throw new Error(`BUG: unknown client TLS mode ${String(never)}`);
    }
  }
}

function describeLevel(level: TlsLevel, rule: ObjectRef | undefined): string {
  const name = rule ? `${rule.namespace}/${rule.name}` : 'the DestinationRule';
  switch (level) {
    case 'destination':
      return `DestinationRule ${name} sets trafficPolicy.tls`;
    case 'destination-port':
      return `DestinationRule ${name} has a portLevelSettings entry for this port`;
    case 'subset':
      return `DestinationRule ${name} sets tls for the subset`;
    case 'subset-port':
      return `DestinationRule ${name} has a portLevelSettings entry for this port in the subset`;
    default: {
      const never: never = level;
      throw new Error(`BUG: unknown TLS level ${String(never)}`);
    }
  }
}

/**
 * What a client sends to each endpoint of `host:port`, and whether the server accepts it — Istio's
 * `buildUpstreamTLSSettings` (cluster level), auto mTLS's `BestEffortInferServiceMTLSMode`, and the
 * endpoint-level `checkMtlsEnabled`, in that order.
 */
export function decideEdge(ctx: EdgeContext, query: EdgeQuery): EdgeDecision {
  const { source, service, subset } = query;
  const lookup: RuleLookup = source.inMesh
    ? findDestinationRule(
        ctx.destinationRules,
        source.namespace,
        source.labels,
        query.host,
        service?.namespace,
      )
    : { rule: undefined, foundIn: undefined };
  const rule: MergedDestinationRule | undefined = lookup.rule;
  const destinationRule = rule
    ? {
        rules: rule.rules.map((r) => refOf('DestinationRule', r.meta)),
        host: rule.host,
        foundIn: lookup.foundIn,
      }
    : undefined;
  const clusterTls = clusterTlsFor(rule, query.servicePort, subset);
  const passthrough = service !== undefined && isPassthroughCluster(service.headless, rule, subset);

  let endpoints = query.endpoints;
  let problem: EdgeDecision['problem'];
  if (subset !== undefined) {
    const s = rule?.subsets.get(subset);
    if (s === undefined) {
      problem = {
        code: 'SUBSET_NOT_FOUND',
        message: rule
          ? `subset ${JSON.stringify(subset)} is not defined in DestinationRule ${rule.rules.map((r) => `${r.meta.namespace}/${r.meta.name}`).join(', ')} for ${query.host}`
          : `subset ${JSON.stringify(subset)} needs a DestinationRule for ${query.host} that defines it, and there is none`,
      };
      endpoints = [];
    } else {
      endpoints = endpoints.filter((e) => selectorMatches(s.subset.labels, e.workload.meta.labels));
    }
  }
  if (problem === undefined && service !== undefined && endpoints.length === 0) {
    problem = {
      code: 'NO_ENDPOINTS',
      message: `no endpoint of ${query.host}:${query.servicePort} is known${subset ? ` in subset ${subset}` : ''}`,
    };
  }

  // BestEffortInferServiceMTLSMode.
  let serviceMtlsMode: ResolvedMtlsMode | 'UNKNOWN';
  if (service === undefined) {
    serviceMtlsMode = 'UNKNOWN';
  } else if (
    // Istio's ServiceEndpointsByPort(service, port, nil): every endpoint of the port, not the subset's.
    passthrough &&
    (query.endpoints.length === 0 || query.endpoints.some((e) => !e.workload.membership.inMesh))
  ) {
    serviceMtlsMode = 'DISABLE';
  } else {
    const m = namespaceMtlsMode(ctx.peerAuthentications, service.namespace);
    serviceMtlsMode = m === 'UNKNOWN' ? 'PERMISSIVE' : m;
  }

  const verdicts: EndpointVerdict[] = [];
  for (const ep of endpoints) {
    const w = ep.workload;
    let serverMode: ServerMode = 'NO_SIDECAR';
    let serverChain: readonly ChainStep[] = [];
    if (service === undefined) {
      serverMode = 'UNKNOWN';
    } else if (w.membership.inMesh) {
      const effective = effectiveInboundMtls(ctx.peerAuthentications, {
        namespace: w.meta.namespace,
        labels: w.meta.labels,
      });
      serverMode = effectiveModeForPort(effective, ep.port);
      serverChain = chainOf(effective, ep.port);
    }
    const { clientTls, reason } = clientTlsFor(
      ctx,
      query,
      rule,
      clusterTls,
      passthrough,
      serviceMtlsMode,
      ep,
      serverMode,
    );
    const j = judge(clientTls, serverMode);
    verdicts.push({
      workload: refOf(w.kind, w.meta),
      port: ep.port,
      clientTls,
      clientTlsReason: reason,
      serverMode,
      serverChain,
      ...j,
    });
  }
  return {
    host: query.host,
    servicePort: query.servicePort,
    subset,
    destinationRule,
    clusterTls,
    serviceMtlsMode,
    passthrough,
    endpoints: verdicts,
    problem,
    outside: service === undefined ? outsideVerdict(ctx, query, rule, clusterTls) : undefined,
  };
}

function outsideVerdict(
  ctx: EdgeContext,
  query: EdgeQuery,
  rule: MergedDestinationRule | undefined,
  cluster: ReturnType<typeof clusterTlsFor>,
): EdgeDecision['outside'] {
  const { clientTls, reason } = clientTlsFor(
    ctx,
    query,
    rule,
    cluster,
    false,
    'UNKNOWN',
    undefined,
    'UNKNOWN',
  );
  return { clientTls, clientTlsReason: reason, ...judge(clientTls, 'UNKNOWN') };
}

function clientTlsFor(
  ctx: EdgeContext,
  query: EdgeQuery,
  rule: MergedDestinationRule | undefined,
  cluster: ReturnType<typeof clusterTlsFor>,
  passthrough: boolean,
  serviceMtlsMode: ResolvedMtlsMode | 'UNKNOWN',
  /** Undefined only for a host outside the mesh, which has no endpoints kmtls knows. */
  ep: EdgeEndpoint | undefined,
  serverMode: ServerMode,
): { clientTls: ClientTlsMode; reason: string } {
  if (!query.source.inMesh) {
    return {
      clientTls: 'DISABLE',
      reason: 'the source has no sidecar: it sends what its application sends (plaintext)',
    };
  }
  if (cluster.tls !== undefined && cluster.level !== undefined) {
    return {
      clientTls: cluster.tls.mode,
      reason: `${describeLevel(cluster.level, cluster.from)} to ${cluster.tls.mode}`,
    };
  }
  const replaced =
    cluster.level === 'destination-port' || cluster.level === 'subset-port'
      ? `${describeLevel(cluster.level, cluster.from)} without tls, which replaces the rest of the rule; `
      : '';
  if (query.service === undefined || ep === undefined) {
    return {
      clientTls: 'DISABLE',
      reason: `${replaced}the host is not a service of the mesh: no auto mTLS, plaintext`,
    };
  }
  if (!ctx.autoMtls)
    return { clientTls: 'DISABLE', reason: `${replaced}auto mTLS is off and no DestinationRule sets tls` };
  if (serviceMtlsMode === 'DISABLE' || serviceMtlsMode === 'UNKNOWN') {
    const why = passthrough
      ? query.endpoints.length === 0
        ? 'the headless service has no endpoints'
        : 'an endpoint of the headless service has no sidecar'
      : `namespace ${query.service.namespace} is DISABLE by its namespace- or mesh-wide PeerAuthentication`;
    const caveat =
      serverMode === 'STRICT'
        ? ' (auto mTLS looks only at namespace and mesh policies; a workload-level STRICT needs a DestinationRule with ISTIO_MUTUAL)'
        : '';
    return { clientTls: 'DISABLE', reason: `${replaced}auto mTLS sends plaintext: ${why}${caveat}` };
  }
  if (passthrough) {
    return {
      clientTls: 'ISTIO_MUTUAL',
      reason: `${replaced}auto mTLS for a passthrough (headless) service: mTLS to every endpoint, decided for the whole service from namespace mode ${serviceMtlsMode}`,
    };
  }
  // checkMtlsEnabled: a rule's endpoint-level mode first, then the endpoint's sidecar and port mode.
  const drMode = endpointTlsModeFor(rule, query.servicePort, query.subset);
  if (drMode !== undefined) {
    return drMode === 'ISTIO_MUTUAL'
      ? {
          clientTls: 'ISTIO_MUTUAL',
          reason: `${replaced}auto mTLS: the DestinationRule's ${drMode} marks the endpoint for mTLS`,
        }
      : {
          clientTls: 'DISABLE',
          reason: `${replaced}auto mTLS: the DestinationRule's ${drMode} at another level keeps the endpoint in plaintext`,
        };
  }
  if (!ep.workload.membership.inMesh) {
    return {
      clientTls: 'DISABLE',
      reason: `${replaced}auto mTLS: the endpoint has no sidecar (no security.istio.io/tlsMode=istio), so plaintext`,
    };
  }
  if (serverMode === 'DISABLE') {
    return {
      clientTls: 'DISABLE',
      reason: `${replaced}auto mTLS: the endpoint's PeerAuthentication makes port ${ep.port} DISABLE, so plaintext`,
    };
  }
  return {
    clientTls: 'ISTIO_MUTUAL',
    reason: `${replaced}auto mTLS: the endpoint has a sidecar and port ${ep.port} is ${serverMode}`,
  };
}
