import type { ConnectionRecord, ProxyObserver } from './events.js';

/** Counts per inbound port: what arrived, and who still calls in plaintext. */
export interface PortTally {
  mtls: number;
  plaintext: number;
  other: number;
  refused: number;
  /** Source IP → connections carried in plaintext (or raw) from it. */
  readonly plaintextSources: Record<string, number>;
  /** Refusal reason → count. */
  readonly refusedBy: Record<string, number>;
}

/**
 * What the admin endpoint shows under /connections: the last connections (a bounded ring) and, per
 * inbound port, counts by transport with the plaintext callers by source address, the data a
 * migration to STRICT needs ("who would break?").
 */
export class RecentConnections implements ProxyObserver {
  private readonly ring: ConnectionRecord[] = [];
  private readonly ports = new Map<number, PortTally>();
  outbound = { mtls: 0, plaintext: 0, other: 0, refused: 0 };

  constructor(private readonly size = 256) {}

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
    let t = this.ports.get(c.port);
    if (!t) {
      t = { mtls: 0, plaintext: 0, other: 0, refused: 0, plaintextSources: {}, refusedBy: {} };
      this.ports.set(c.port, t);
    }
    if (c.outcome === 'refused') {
      t.refused++;
      const r = c.reason ?? 'UNKNOWN';
      t.refusedBy[r] = (t.refusedBy[r] ?? 0) + 1;
    } else if (c.transport === 'mtls') t.mtls++;
    else if (c.transport === 'plaintext' || c.transport === 'raw') {
      t.plaintext++;
      const ip = sourceIp(c.sourceAddress);
      t.plaintextSources[ip] = (t.plaintextSources[ip] ?? 0) + 1;
    } else t.other++;
  }

  request(): void {}

  snapshot(): {
    inbound: Record<string, PortTally>;
    outbound: RecentConnections['outbound'];
    recent: ConnectionRecord[];
  } {
    return {
      inbound: Object.fromEntries([...this.ports].map(([p, t]) => [String(p), t])),
      outbound: this.outbound,
      recent: [...this.ring],
    };
  }
}

function sourceIp(address: string): string {
  const i = address.lastIndexOf(':');
  return i > 0 ? address.slice(0, i).replace(/^\[|\]$/g, '') : address;
}
