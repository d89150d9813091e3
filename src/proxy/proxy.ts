import type { InboundPortConfig, OutboundConfig, ProxyConfig } from '../mesh/index.js';
import type { Clock } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import type { ProxyObserver } from './events.js';
import { InboundListener } from './inbound.js';
import type { OriginalDstLookup } from './original-dst.js';
import { originalDstLookup } from './original-dst.js';
import { OutboundListener } from './outbound.js';
import type { LiveConnection, ProxyRuntime } from './runtime.js';
import type { TransparentRoutes } from './transparent.js';
import { passthroughPort, TransparentInbound, TransparentOutbound } from './transparent.js';

/** Where an outbound entry's handler is kept: by its listen address, else by its first match. */
function outboundKey(o: OutboundConfig): string | undefined {
  return o.listen ?? (o.match?.[0] !== undefined ? `match:${o.match[0]}` : undefined);
}

/**
 * The sidecar: one inbound listener per workload port and one outbound listener per destination,
 * sharing the current config and identity. With `interception` (transparent mode, in a cluster) it
 * opens one inbound and one outbound listener instead, and dispatches each redirected connection by
 * its original destination to the same per-port and per-destination handlers. `applyConfig` and `setIdentity` take effect for new
 * connections at once; established connections keep going, except those a stricter mode refuses,
 * which are closed after the drain period.
 */
export class Sidecar {
  private current: ProxyConfig;
  private id: ProxyIdentity | undefined;
  private readonly inbound = new Map<string, InboundListener>();
  private readonly outbound = new Map<string, OutboundListener>();
  /** Transparent mode: the handlers by original destination, and the listeners that dispatch to them. */
  private inboundByPort = new Map<number, InboundListener>();
  private outboundByMatch = new Map<string, OutboundListener>();
  /** Transparent mode: the handler of inbound ports no entry declares. */
  private passthrough: InboundListener | undefined;
  private transparentIn: TransparentInbound | undefined;
  private transparentOut: TransparentOutbound | undefined;
  private originalDst: OriginalDstLookup | undefined;
  private readonly routes: TransparentRoutes = {
    inbound: (port) => {
      const declared = this.inboundByPort.get(port);
      if (declared) return { handler: declared };
      const interception = this.current.interception;
      if (!this.passthrough || !interception) return undefined;
      return { handler: this.passthrough, fixed: passthroughPort(interception, port) };
    },
    outbound: (key) => this.outboundByMatch.get(key),
  };
  private readonly connections = new Set<LiveConnection>();
  private counter = 0;
  private configured: boolean;
  readonly runtime: ProxyRuntime;

  constructor(
    config: ProxyConfig,
    deps: {
      clock: Clock;
      observer: ProxyObserver;
      identity?: ProxyIdentity;
      configured?: boolean;
      /** Transparent mode's SO_ORIGINAL_DST reader; the native addon's by default. */
      originalDst?: OriginalDstLookup;
    },
  ) {
    this.current = config;
    this.originalDst = deps.originalDst;
    this.configured = deps.configured ?? true;
    this.id = deps.identity;
    this.runtime = {
      clock: deps.clock,
      observer: deps.observer,
      config: () => this.current,
      identity: () => this.id,
      nextId: () => ++this.counter,
      track: (c) => {
        this.connections.add(c);
        return () => this.connections.delete(c);
      },
      connectionCount: () => this.connections.size,
    };
  }

  get config(): ProxyConfig {
    return this.current;
  }

  get identity(): ProxyIdentity | undefined {
    return this.id;
  }

  /** Ready when it has both a config and a certificate. */
  isReady(): boolean {
    return this.id !== undefined && this.configured;
  }

  /** What keeps it from being ready, for /ready. */
  notReadyBecause(): string | undefined {
    if (this.id === undefined) return 'no certificate loaded';
    if (!this.configured) return 'no config received from the control plane yet';
    return undefined;
  }

  async start(): Promise<void> {
    await this.applyConfig(this.current);
  }

  /** New certificates and bundles: new connections use them, established ones are untouched. */
  setIdentity(identity: ProxyIdentity): void {
    this.id = identity;
  }

  /**
   * Opens, updates and closes listeners to match the config. A listener that cannot open fails the
   * whole change; so does transparent mode without the original-dst addon (KMTLS_PROXY_NO_ORIGINAL_DST),
   * before anything changes.
   */
  async applyConfig(config: ProxyConfig): Promise<void> {
    const interception = config.interception;
    if (interception) this.originalDst ??= originalDstLookup();
    this.current = config;
    this.configured = true;
    const drainMs = config.limits.drainMs;
    const wantedIn = new Map<string, InboundPortConfig>();
    for (const p of config.inbound) {
      if (interception) wantedIn.set(`port:${p.port}`, p);
      else if (p.listen !== undefined) wantedIn.set(p.listen, p);
    }
    const wantedOut = new Map<string, OutboundConfig>();
    for (const o of config.outbound) {
      const key = outboundKey(o);
      // Without interception, an entry with only `match` has nothing to listen on.
      if (key === undefined || (o.listen === undefined && !interception)) continue;
      wantedOut.set(key, o);
    }
    for (const [key, l] of this.inbound) {
      if (!wantedIn.has(key)) {
        this.inbound.delete(key);
        await l.close();
      }
    }
    for (const [key, l] of this.outbound) {
      if (!wantedOut.has(key)) {
        this.outbound.delete(key);
        await l.close();
      }
    }
    for (const [key, p] of wantedIn) {
      const existing = this.inbound.get(key);
      if (existing) {
        existing.update(p, drainMs);
        continue;
      }
      const l = new InboundListener(p, this.runtime);
      if (!interception) await l.listen();
      this.inbound.set(key, l);
    }
    for (const [key, o] of wantedOut) {
      const existing = this.outbound.get(key);
      if (existing) {
        existing.update(o);
        continue;
      }
      const l = new OutboundListener(o, this.runtime);
      if (o.listen !== undefined) await l.listen();
      this.outbound.set(key, l);
    }
    await this.applyInterception(config);
  }

  /** Transparent mode's dispatch tables and its two listeners; without interception, none of them. */
  private async applyInterception(config: ProxyConfig): Promise<void> {
    const interception = config.interception;
    const byPort = new Map<number, InboundListener>();
    const byMatch = new Map<string, OutboundListener>();
    if (interception) {
      for (const l of this.inbound.values()) byPort.set(l.config.port, l);
      for (const l of this.outbound.values()) for (const m of l.config.match ?? []) byMatch.set(m, l);
    }
    this.inboundByPort = byPort;
    this.outboundByMatch = byMatch;
    if (!interception || !this.originalDst) {
      await this.closeInterception();
      return;
    }
    const template = passthroughPort(interception, 0);
    if (this.passthrough) this.passthrough.update(template, config.limits.drainMs);
    else this.passthrough = new InboundListener(template, this.runtime);
    if (this.transparentIn?.address !== interception.inbound) {
      await this.transparentIn?.close();
      this.transparentIn = undefined;
      const l = new TransparentInbound(interception.inbound, this.runtime, this.originalDst, this.routes);
      await l.listen();
      this.transparentIn = l;
    }
    if (this.transparentOut?.address !== interception.outbound) {
      await this.transparentOut?.close();
      this.transparentOut = undefined;
      const l = new TransparentOutbound(interception.outbound, this.runtime, this.originalDst, this.routes);
      await l.listen();
      this.transparentOut = l;
    }
  }

  private async closeInterception(): Promise<void> {
    const all = [this.transparentIn, this.transparentOut, this.passthrough];
    this.transparentIn = undefined;
    this.transparentOut = undefined;
    this.passthrough = undefined;
    await Promise.all(all.map((l) => l?.close()));
  }

  async stop(): Promise<void> {
    await this.closeInterception();
    await Promise.all([...this.inbound.values(), ...this.outbound.values()].map((l) => l.close()));
    this.inbound.clear();
    this.outbound.clear();
  }
}
