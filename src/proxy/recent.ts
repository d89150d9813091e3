import type { ConnectionRecord, ProxyObserver } from './events.js';

/** Counts per inbound port: what arrived, and who still calls in plaintext. */
export interface PortTally {
  mtls: number;
  plaintext: number;
  other: number;
  refused: number;
  /** Source IP → connections carried in plaintext (or raw) from it; `other` past 256 IPs. */
  readonly plaintextSources: Record<string, number>;
  /** Refusal reason → count. */
  readonly refusedBy: Record<string, number>;
}

/**
 * What the admin endpoint shows under /connections: the last connections (a bounded ring) and, per
 * inbound port, counts by transport with the plaintext callers by source address, the data a
 * migration to STRICT needs ("who would break?"). Bounded: 256 ports and 256 source IPs per port,
 * the rest folded into an `other` port and an `other` source.
 */
export class RecentConnections implements ProxyObserver {
  private readonly ring: ConnectionRecord[] = [];
  private readonly ports = new Map<number, PortTally>();
  outbound = { mtls: 0, plaintext: 0, other: 0, refused: 0 };

  constructor(
    private readonly size = 256,
    /** At most this many ports get a tally of their own; the rest share the `other` one. */
    private readonly maxPorts = 256,
    /** At most this many source IPs per port; the rest are counted under `other`. */
    private readonly maxSources = 256,
  ) {}

  connectionOpened(): void {}

  connectionClosed(c: ConnectionRecord): void {
    this.ring.push({ ...c });
    if (this.ring.length > this.size) this.ring.shift();
    if (c.direction === 'outbound') {
      if (c.outcome === 'refused') this.outbound.refused++;
      else if (c.transport === 'mtls') this.outbound.mtls++;
      else if (c.transport === 'plaintext' || c.transport === 'raw') this.outbound.plaintext++;
      else this.outbound.other++;
      return;
    }
    // A port scan must not grow memory without bound: ports past the cap fold into one tally.
    const key = this.ports.has(c.port) || this.ports.size < this.maxPorts ? c.port : OTHER_PORT;
    let t = this.ports.get(key);
    if (!t) {
      t = { mtls: 0, plaintext: 0, other: 0, refused: 0, plaintextSources: {}, refusedBy: {} };
      this.ports.set(key, t);
    }
    if (c.outcome === 'refused') {
      t.refused++;
      const r = c.reason ?? 'UNKNOWN';
      t.refusedBy[r] = (t.refusedBy[r] ?? 0) + 1;
    } else if (c.transport === 'mtls') t.mtls++;
    else if (c.transport === 'plaintext' || c.transport === 'raw') {
      t.plaintext++;
      let ip = sourceIp(c.sourceAddress);
      const sources = t.plaintextSources;
      if (!Object.hasOwn(sources, ip) && Object.keys(sources).length >= this.maxSources) ip = OTHER;
      sources[ip] = (sources[ip] ?? 0) + 1;
    } else t.other++;
  }

  request(): void {}

  snapshot(): {
    inbound: Record<string, PortTally>;
    outbound: RecentConnections['outbound'];
    recent: ConnectionRecord[];
  } {
    return {
      inbound: Object.fromEntries([...this.ports].map(([p, t]) => [p === OTHER_PORT ? OTHER : String(p), t])),
      outbound: this.outbound,
      recent: [...this.ring],
    };
  }
}

/** The bucket of ports, and of source IPs, past the caps. */
const OTHER = 'other';
const OTHER_PORT = -1;

function sourceIp(address: string): string {
  const i = address.lastIndexOf(':');
  return i > 0 ? address.slice(0, i).replace(/^\[|\]$/g, '') : address;
}
