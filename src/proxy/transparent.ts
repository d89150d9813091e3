import net from 'node:net';
import type { InboundPortConfig, InterceptionConfig } from '../mesh/index.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import type { InboundListener } from './inbound.js';
import type { OriginalDestination, OriginalDstLookup } from './original-dst.js';
import type { OutboundListener } from './outbound.js';
import type { ProxyRuntime } from './runtime.js';
import { closeRecord, listenOn, splice } from './runtime.js';

/** `IP:PORT` as outbound `match` entries write it (IPv6 in brackets). */
export function destinationKey(d: OriginalDestination): string {
  return d.address.includes(':') ? `[${d.address}]:${d.port}` : `${d.address}:${d.port}`;
}

/**
 * Istio's InboundPassthroughClusterIpv4 source: the sidecar reaches the application at the pod's own
 * address from 127.0.0.6, which the interception rules never redirect again (kube/iptables.ts).
 */
export const INBOUND_SOURCE_IPV4 = '127.0.0.6';

/** The proxy's well-known ports (Istio's admin, outbound, inbound, status, health). */
export const WELL_KNOWN_PROXY_PORTS = [15000, 15001, 15006, 15020, 15021] as const;

/** `HOST:PORT` with IPv6 in brackets. */
function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `::ffff:10.0.0.2` → `10.0.0.2`: a dual-stack socket names IPv4 peers that way. */
function plainIp(address: string | undefined): string {
  const a = address ?? '';
  return a.toLowerCase().startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

function isLoopback(address: string): boolean {
  return address.startsWith('127.') || address === '::1';
}

/**
 * The config an undeclared inbound port gets: the port-level mode when the workload policy's
 * portLevelMtls names the port (`portModes`), else the workload-level mode; forwarded to
 * `HOST:PORT`. The transparent listener then replaces HOST by the connection's original destination
 * address (the pod's IP, see {@link inboundTarget}), never 127.0.0.1, so loopback-only listeners
 * stay unreachable from the network.
 */
export function passthroughPort(
  interception: InterceptionConfig,
  port: number,
  host = '127.0.0.1',
): InboundPortConfig {
  const own = interception.portModes?.[String(port)];
  return {
    port,
    forward: hostPort(host, port),
    mode: own?.mode ?? interception.defaultMode,
    protocol: 'tcp',
    policy: own?.policy ?? interception.defaultPolicy,
  };
}

/**
 * Where a transparent inbound connection goes: the original destination's address (the pod's IP) on
 * the port `forward` names, from 127.0.0.6 (IPv4) so that the rules let it reach the application.
 */
export function inboundTarget(
  dst: OriginalDestination,
  forward: string,
): { forward: string; localAddress?: string } {
  const i = forward.lastIndexOf(':');
  const port = Number(forward.slice(i + 1)) || dst.port;
  const host = plainIp(dst.address);
  return {
    forward: hostPort(host, port),
    ...(net.isIPv4(host) ? { localAddress: INBOUND_SOURCE_IPV4 } : {}),
  };
}

/**
 * Why a connection must not be dispatched because it would come straight back to the sidecar: its
 * original destination is the socket's own address (it was dialled at the interception port itself;
 * with conntrack loaded SO_ORIGINAL_DST then returns the local address instead of failing), or one of
 * the proxy's own ports. Inbound, every original destination is this pod, so the port alone decides;
 * outbound, a proxy port counts only on a local address (another pod's 15020 is a fine destination).
 */
export function loopReason(
  socket: net.Socket,
  dst: OriginalDestination,
  direction: 'inbound' | 'outbound',
  ownPorts: ReadonlySet<number>,
): string | undefined {
  const address = plainIp(dst.address);
  const local = plainIp(socket.localAddress);
  if (address === local && dst.port === socket.localPort)
    return `the original destination ${hostPort(address, dst.port)} is the interception listener itself: it was dialled directly, not redirected`;
  if (!ownPorts.has(dst.port)) return undefined;
  if (direction === 'inbound' || address === local || isLoopback(address))
    return `the original destination ${hostPort(address, dst.port)} is one of the proxy's own ports: refused, it would loop back to the sidecar`;
  return undefined;
}

/** The proxy's own listener ports: the interception ports, admin, and the well-known ones. */
export function proxyPorts(config: {
  interception?: InterceptionConfig | undefined;
  admin?: string | undefined;
}): Set<number> {
  const out = new Set<number>(WELL_KNOWN_PROXY_PORTS);
  for (const a of [config.interception?.inbound, config.interception?.outbound, config.admin]) {
    if (a === undefined) continue;
    out.add(Number(a.slice(a.lastIndexOf(':') + 1)));
  }
  return out;
}

/** What the transparent listeners ask the Sidecar for, per connection (the config of the moment). */
export interface TransparentRoutes {
  /** The handler of a declared inbound port, or the passthrough handler with the port's config. */
  inbound(port: number): { handler: InboundListener; fixed?: InboundPortConfig } | undefined;
  /** The outbound entry whose `match` holds this destination. */
  outbound(key: string): OutboundListener | undefined;
}

/**
 * Closes a connection the interception could not place, with a record of why: no original
 * destination (it was not redirected, so it was dialled at the interception port itself).
 */
function refuseUnplaced(
  rt: ProxyRuntime,
  socket: net.Socket,
  direction: 'inbound' | 'outbound',
  listen: string,
  reason: RefusalReason,
  message: string,
): void {
  const record: ConnectionRecord = {
    id: rt.nextId(),
    direction,
    port: socket.localPort ?? 0,
    sourceAddress: `${socket.remoteAddress}:${socket.remotePort}`,
    destinationAddress: listen,
    outcome: 'refused',
    reason,
    message,
    bytesReceived: 0,
    bytesSent: 0,
    startMs: rt.clock.now(),
    durationMs: 0,
  };
  socket.on('error', () => {});
  socket.destroy();
  rt.observer.connectionClosed(record);
}

/** Reads the original destination; a failing lookup counts as "not redirected" and is named. */
function lookup(
  originalDst: OriginalDstLookup,
  socket: net.Socket,
): { ok: true; dst: OriginalDestination } | { ok: false; why: string } {
  try {
    const dst = originalDst(socket);
    return dst ? { ok: true, dst } : { ok: false, why: 'the connection was not redirected by iptables' };
  } catch (err) {
    return { ok: false, why: `SO_ORIGINAL_DST: ${(err as Error).message}` };
  }
}

/**
 * The one inbound listener of transparent mode (Istio's virtualInbound on 15006): each connection's
 * original destination port picks the port's handler, so every rule of the per-port inbound path
 * (detection, mode, verification, forwarding) applies unchanged.
 */
export class TransparentInbound {
  private server: net.Server | undefined;

  constructor(
    readonly address: string,
    private readonly runtime: ProxyRuntime,
    private readonly originalDst: OriginalDstLookup,
    private readonly routes: TransparentRoutes,
  ) {}

  async listen(): Promise<void> {
    this.server = await listenOn(this.address, (s) => this.accept(s));
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private accept(socket: net.Socket): void {
    const dst = redirectedDestination(this.runtime, this.originalDst, socket, 'inbound', this.address);
    if (!dst) return;
    const route = this.routes.inbound(dst.port);
    if (!route) {
      refuseUnplaced(
        this.runtime,
        socket,
        'inbound',
        this.address,
        'POLICY_CHANGED',
        'interception turned off',
      );
      return;
    }
    const forward = (route.fixed ?? route.handler.config).forward;
    route.handler.handle(socket, route.fixed, inboundTarget(dst, forward));
  }
}

/**
 * Where a redirected connection was going, or undefined after refusing it: one that arrived without
 * being redirected, or that was aimed at the proxy's own ports (dialled directly, it would loop).
 */
function redirectedDestination(
  runtime: ProxyRuntime,
  originalDst: OriginalDstLookup,
  socket: net.Socket,
  direction: 'inbound' | 'outbound',
  address: string,
): OriginalDestination | undefined {
  const found = lookup(originalDst, socket);
  const why = found.ok ? loopReason(socket, found.dst, direction, proxyPorts(runtime.config())) : found.why;
  if (why !== undefined) {
    refuseUnplaced(runtime, socket, direction, address, 'NO_ORIGINAL_DST', why);
    return undefined;
  }
  return found.ok ? found.dst : undefined;
}

/**
 * The one outbound listener of transparent mode (Istio's virtualOutbound on 15001): a connection
 * whose original destination an outbound entry `match`es is handled as that service; any other is
 * passed through as plain TCP to where the application sent it (Istio's PassthroughCluster).
 */
export class TransparentOutbound {
  private server: net.Server | undefined;
  private readonly live = new Set<net.Socket>();

  constructor(
    readonly address: string,
    private readonly runtime: ProxyRuntime,
    private readonly originalDst: OriginalDstLookup,
    private readonly routes: TransparentRoutes,
  ) {}

  async listen(): Promise<void> {
    this.server = await listenOn(this.address, (s) => this.accept(s));
  }

  async close(): Promise<void> {
    for (const s of this.live) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private accept(socket: net.Socket): void {
    const dst = redirectedDestination(this.runtime, this.originalDst, socket, 'outbound', this.address);
    if (!dst) return;
    const key = destinationKey(dst);
    const handler = this.routes.outbound(key);
    if (handler) {
      handler.handle(socket);
      return;
    }
    this.passThrough(socket, dst, key);
  }

  private passThrough(client: net.Socket, dst: OriginalDestination, key: string): void {
    const rt = this.runtime;
    const record: ConnectionRecord = {
      id: rt.nextId(),
      direction: 'outbound',
      port: dst.port,
      service: 'PassthroughCluster',
      sourceAddress: `${client.remoteAddress}:${client.remotePort}`,
      destinationAddress: key,
      // Bytes go as the application wrote them: its own TLS, or plaintext.
      transport: 'raw',
      message: `no outbound entry matches ${key}: passed through as plain TCP`,
      bytesReceived: 0,
      bytesSent: 0,
      startMs: rt.clock.now(),
    };
    let ended = false;
    const finish = (outcome: 'accepted' | 'refused', reason?: RefusalReason, message?: string) => {
      if (ended) return;
      ended = true;
      client.destroy();
      this.live.delete(client);
      untrack();
      closeRecord(rt, record, outcome, reason, message);
    };
    let untrack = () => {};
    if (rt.connectionCount() >= rt.config().limits.maxConnections) {
      finish('refused', 'MAX_CONNECTIONS', `more than ${rt.config().limits.maxConnections} connections`);
      return;
    }
    untrack = rt.track({ record, close: (reason, message) => finish('refused', reason, message) });
    this.live.add(client);
    client.on('error', () => finish(record.outcome ?? 'refused'));
    const from = rt.config().sourceAddress;
    const upstream = net.connect({
      host: dst.address,
      port: dst.port,
      allowHalfOpen: true,
      ...(from ? { localAddress: from } : {}),
    });
    const unreachable = (err: Error) => finish('refused', 'UPSTREAM_UNREACHABLE', `${key}: ${err.message}`);
    upstream.once('error', unreachable);
    upstream.once('connect', () => {
      upstream.off('error', unreachable);
      if (client.destroyed) {
        upstream.destroy();
        return finish(record.outcome ?? 'accepted');
      }
      record.outcome = 'accepted';
      rt.observer.connectionOpened(record);
      splice(client, upstream, record, () => finish('accepted'), rt.config().limits.idleTimeoutMs);
      client.resume();
    });
  }
}
