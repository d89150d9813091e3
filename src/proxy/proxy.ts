import type { ProxyConfig } from '../mesh/index.js';
import type { Clock } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import type { ProxyObserver } from './events.js';
import { InboundListener } from './inbound.js';
import { OutboundListener } from './outbound.js';
import type { LiveConnection, ProxyRuntime } from './runtime.js';

/**
 * The sidecar: one inbound listener per workload port and one outbound listener per destination,
 * sharing the current config and identity. `applyConfig` and `setIdentity` take effect for new
 * connections at once; established connections keep going, except those a stricter mode refuses,
 * which are closed after the drain period.
 */
export class Sidecar {
  private current: ProxyConfig;
  private id: ProxyIdentity | undefined;
  private readonly inbound = new Map<string, InboundListener>();
  private readonly outbound = new Map<string, OutboundListener>();
  private readonly connections = new Set<LiveConnection>();
  private counter = 0;
  private configured: boolean;
  readonly runtime: ProxyRuntime;

  constructor(
    config: ProxyConfig,
    deps: { clock: Clock; observer: ProxyObserver; identity?: ProxyIdentity; configured?: boolean },
  ) {
    this.current = config;
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

  /** Opens, updates and closes listeners to match the config. A listener that cannot open fails the whole change. */
  async applyConfig(config: ProxyConfig): Promise<void> {
    this.current = config;
    this.configured = true;
    const wantedIn = new Map(config.inbound.map((p) => [p.listen, p]));
    const wantedOut = new Map(config.outbound.map((o) => [o.listen, o]));
    for (const [addr, l] of this.inbound) {
      if (!wantedIn.has(addr)) {
        this.inbound.delete(addr);
        await l.close();
      }
    }
    for (const [addr, l] of this.outbound) {
      if (!wantedOut.has(addr)) {
        this.outbound.delete(addr);
        await l.close();
      }
    }
    for (const [addr, p] of wantedIn) {
      const existing = this.inbound.get(addr);
      if (existing) {
        existing.update(p, config.limits.drainMs);
        continue;
      }
      const l = new InboundListener(p, this.runtime);
      await l.listen();
      this.inbound.set(addr, l);
    }
    for (const [addr, o] of wantedOut) {
      const existing = this.outbound.get(addr);
      if (existing) {
        existing.update(o);
        continue;
      }
      const l = new OutboundListener(o, this.runtime);
      await l.listen();
      this.outbound.set(addr, l);
    }
  }

  async stop(): Promise<void> {
    await Promise.all([...this.inbound.values(), ...this.outbound.values()].map((l) => l.close()));
    this.inbound.clear();
    this.outbound.clear();
  }
}
