import { en } from 'zod/locales';
import * as z from 'zod/mini';
import { CLIENT_TLS_MODES } from '../policy/index.js';

// The mesh's message types use zod's small API (`zod/mini`: the same checks and messages as `zod`,
// without a method per schema): every sidecar loads them, and classic zod would add about 2 MB to
// each one's idle memory (BENCHMARKS.md). It loads no messages by default: English, as classic sets.
z.config(en());

/**
 * The message the control plane sends each sidecar, and the file `kmtls proxy --config` reads:
 * everything a proxy needs to enforce and originate mTLS for one workload, already decided by the
 * policy core. The proxy never imports the control plane; both share only this type.
 */

const address = z
  .string()
  .check(
    z.regex(
      /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|localhost):\d{1,5}$/,
      'an address is HOST:PORT, e.g. 127.0.0.1:8080',
    ),
  );

const mode = z.enum(['STRICT', 'PERMISSIVE', 'DISABLE']);

const originalDestination = z
  .string()
  .check(
    z.regex(
      /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d{1,5}$/,
      'an original destination is IP:PORT, e.g. 10.96.0.10:80',
    ),
  );

/**
 * Transparent interception (in a cluster, with `kmtls iptables apply` in the pod): one inbound and
 * one outbound listener take every redirected connection and dispatch it by its original destination.
 */
export const interceptionSchema = z.strictObject({
  /** Where redirected inbound connections arrive (Istio's 15006), e.g. 0.0.0.0:15006. */
  inbound: address,
  /** Where redirected outbound connections arrive (Istio's 15001), e.g. 0.0.0.0:15001. */
  outbound: address,
  /**
   * Inbound ports no `inbound` entry declares: the workload-level mode (what the policy core gives a
   * port no portLevelMtls names), forwarded to the original destination (the pod's IP) on the same
   * port, from 127.0.0.6. PERMISSIVE when absent, Istio's default.
   */
  defaultMode: z._default(mode, 'PERMISSIVE'),
  /** The policy that decided `defaultMode`, for logs and metrics. */
  defaultPolicy: z._default(z.string(), 'default'),
  /**
   * Undeclared ports the workload policy's portLevelMtls names, by port number: their own mode and
   * deciding policy, which win over `defaultMode` (Istio's port-level override applies to every port
   * the sidecar intercepts, not only to container ports).
   */
  portModes: z.optional(
    z.record(
      z.string().check(z.regex(/^[1-9][0-9]{0,4}$/, 'a port number')),
      z.strictObject({ mode, policy: z._default(z.string(), 'default') }),
    ),
  ),
});
const protocol = z._default(z.enum(['tcp', 'http']), 'tcp');
const spiffe = z.string().check(z.startsWith('spiffe://'));
/** An integer above zero, for the limits. */
const positiveInt = (fallback: number) => z._default(z.int().check(z.positive()), fallback);

export const inboundPortSchema = z.strictObject({
  /** The workload (container) port this listener stands for. */
  port: z.int().check(z.gte(1), z.lte(65535)),
  /**
   * Where the sidecar listens (podIP:port locally). Needed without `interception`; with it, the one
   * inbound listener takes the port's connections and this is not used.
   */
  listen: z.optional(address),
  /**
   * Where the application listens (127.0.0.1:PORT locally; podIP:PORT in a cluster). With
   * `interception` only its port is used: the address is the connection's original destination
   * (the pod's IP), reached from 127.0.0.6, never 127.0.0.1.
   */
  forward: address,
  mode,
  protocol,
  /**
   * HTTP ports: the application speaks HTTP/2 (Service port `http2`, `grpc`, `grpc-web`, or
   * appProtocol `http2`, `grpc`, `kubernetes.io/h2c`), so HTTP/2 streams reach it as HTTP/2. On
   * other HTTP ports they reach it as HTTP/1.1 requests, as Envoy sends an `http` port's application.
   */
  http2: z.optional(z.boolean()),
  /** The policy that decided the mode, `namespace/name`, or `default` when none did. */
  policy: z._default(z.string(), 'default'),
});

export const outboundEndpointSchema = z.strictObject({
  address,
  /** What the client side sends to this endpoint (the policy core's decision). */
  tls: z.enum(CLIENT_TLS_MODES),
  /** The pod or workload, for logs. */
  workload: z.optional(z.string()),
});

export const outboundSchema = z.strictObject({
  /** `host:port` of the service, for logs and metrics. */
  name: z.string(),
  /** What the application connects to (local mesh). Optional when `match` is given. */
  listen: z.optional(address),
  /**
   * Transparent mode: the original destinations (`IP:PORT`, what the application dialled before
   * iptables redirected it) that are this service: its ClusterIP:port, or pod IPs for a headless one.
   */
  match: z.optional(z.array(originalDestination)),
  protocol,
  endpoints: z.array(outboundEndpointSchema).check(z.minLength(1)),
  /** Secure naming: the identities a server of this service may present. */
  expectedIdentities: z._default(z.array(spiffe), []),
  /** DestinationRule SIMPLE / MUTUAL settings: file paths, as in the rule. */
  tls: z.optional(
    z.strictObject({
      caCertificates: z.optional(z.string()),
      clientCertificate: z.optional(z.string()),
      privateKey: z.optional(z.string()),
      sni: z.optional(z.string()),
      subjectAltNames: z.optional(z.array(z.string())),
    }),
  ),
});

export const proxyConfigSchema = z.strictObject({
  version: z._default(z.string(), '0'),
  workload: z.strictObject({ namespace: z.string(), name: z.string(), identity: spiffe }),
  trustDomains: z.array(z.string()).check(z.minLength(1)),
  inbound: z._default(z.array(inboundPortSchema), []),
  outbound: z._default(z.array(outboundSchema), []),
  admin: z.optional(address),
  interception: z.optional(interceptionSchema),
  /** The address upstream connections leave from (the pod's IP), so peers can tell who called. */
  sourceAddress: z.optional(z.string().check(z.regex(/^\d{1,3}(\.\d{1,3}){3}$/, 'an IPv4 address'))),
  limits: z.prefault(
    z.strictObject({
      maxConnections: positiveInt(10_000),
      handshakeTimeoutMs: positiveInt(10_000),
      idleTimeoutMs: positiveInt(3_600_000),
      maxHeaderBytes: positiveInt(64 * 1024),
      /** PERMISSIVE: how long to wait for a first byte before taking the connection as server-first plaintext. */
      detectTimeoutMs: positiveInt(300),
      /** How long a connection that a new policy refuses may live on before it is closed. */
      drainMs: z._default(z.int().check(z.nonnegative()), 5_000),
    }),
    {},
  ),
});

export type ProxyConfig = z.infer<typeof proxyConfigSchema>;
export type InboundPortConfig = z.infer<typeof inboundPortSchema>;
export type OutboundConfig = z.infer<typeof outboundSchema>;
export type OutboundEndpointConfig = z.infer<typeof outboundEndpointSchema>;
export type InterceptionConfig = z.infer<typeof interceptionSchema>;

/** The mesh ALPN values (Istio's): a ClientHello offering one of these is mesh mTLS. */
export const MESH_ALPNS = [
  'istio',
  'istio-peer-exchange',
  'istio-http/1.0',
  'istio-http/1.1',
  'istio-h2',
] as const;
/** What a client sidecar offers: TCP ports (Istio's ALPNInMeshWithMxc) and HTTP/1.1 ports (istio.alpn filter). */
export const CLIENT_ALPN_TCP = ['istio-peer-exchange', 'istio'] as const;
export const CLIENT_ALPN_HTTP = ['istio-http/1.1', 'istio', 'http/1.1'] as const;
/** What a client sidecar offers for HTTP/2 (gRPC, h2c) on HTTP ports (Istio's istio.alpn filter). */
export const CLIENT_ALPN_H2 = ['istio-h2', 'istio', 'h2'] as const;

export type ProxyConfigResult = { ok: true; config: ProxyConfig } | { ok: false; problems: string[] };

/** Parses and checks a ProxyConfig; every problem names its path. */
export function parseProxyConfig(value: unknown): ProxyConfigResult {
  const r = proxyConfigSchema.safeParse(value);
  if (!r.success) {
    return {
      ok: false,
      problems: r.error.issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`),
    };
  }
  const problems: string[] = [];
  const listens = new Map<string, string>();
  const claim = (addr: string, what: string) => {
    const prior = listens.get(addr);
    if (prior) problems.push(`${what}: listen address ${addr} is already used by ${prior}`);
    listens.set(addr, what);
  };
  const transparent = r.data.interception !== undefined;
  const ports = new Map<number, number>();
  for (const [i, p] of r.data.inbound.entries()) {
    if (p.listen !== undefined) claim(p.listen, `inbound[${i}]`);
    else if (!transparent) problems.push(`inbound[${i}].listen: required without interception`);
    // Transparent mode dispatches by port: one entry per port.
    const prior = ports.get(p.port);
    if (transparent && prior !== undefined)
      problems.push(`inbound[${i}].port: port ${p.port} is already declared by inbound[${prior}]`);
    ports.set(p.port, i);
  }
  const matched = new Map<string, number>();
  for (const [i, o] of r.data.outbound.entries()) {
    if (o.listen !== undefined) claim(o.listen, `outbound[${i}]`);
    else if (!o.match?.length) problems.push(`outbound[${i}]: needs listen, match, or both`);
    for (const m of o.match ?? []) {
      const prior = matched.get(m);
      if (prior !== undefined && prior !== i)
        problems.push(`outbound[${i}].match: ${m} already matches outbound[${prior}]`);
      matched.set(m, i);
    }
  }
  if (r.data.admin) claim(r.data.admin, 'admin');
  if (r.data.interception) {
    claim(r.data.interception.inbound, 'interception.inbound');
    claim(r.data.interception.outbound, 'interception.outbound');
  }
  return problems.length > 0 ? { ok: false, problems } : { ok: true, config: r.data };
}
