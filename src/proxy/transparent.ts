import net from 'node:net';
import type { InboundPortConfig, InterceptionConfig } from '../mesh/index.js';
import type { ConnectionRecord, RefusalReason } from './events.js';
import type { InboundListener } from './inbound.js';
import type { OriginalDestination, OriginalDstLookup } from './original-dst.js';
import type { OutboundListener } from './outbound.js';
import type { ProxyRuntime } from './runtime.js';
import { listenOn, splice } from './runtime.js';

/** `IP:PORT` as outbound `match` entries write it (IPv6 in brackets). */
export function destinationKey(d: OriginalDestination): string {
  return d.address.includes(':') ? `[${d.address}]:${d.port}` : `${d.address}:${d.port}`;
}

/** The config an undeclared inbound port gets: the workload-level mode, forwarded to 127.0.0.1:PORT. */
export function passthroughPort(interception: InterceptionConfig, port: number): InboundPortConfig {
  return {
    port,
    forward: `127.0.0.1:${port}`,
    mode: interception.defaultMode,
    protocol: 'tcp',
    policy: interception.defaultPolicy,
  };
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
    const found = lookup(this.originalDst, socket);
    if (!found.ok) {
      refuseUnplaced(this.runtime, socket, 'inbound', this.address, 'NO_ORIGINAL_DST', found.why);
      return;
    }
    const route = this.routes.inbound(found.dst.port);
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
    route.handler.handle(socket, route.fixed);
  }
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
    const found = lookup(this.originalDst, socket);
    if (!found.ok) {
      refuseUnplaced(this.runtime, socket, 'outbound', this.address, 'NO_ORIGINAL_DST', found.why);
      return;
    }
    const key = destinationKey(found.dst);
    const handler = this.routes.outbound(key);
    if (handler) {
      handler.handle(socket);
      return;
    }
    this.passThrough(socket, found.dst, key);
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
      if (record.outcome === undefined || outcome === 'refused') record.outcome = outcome;
      if (reason) record.reason = reason;
      if (message) record.message = message;
      record.durationMs = rt.clock.now() - record.startMs;
      client.destroy();
      this.live.delete(client);
      untrack();
      rt.observer.connectionClosed(record);
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
