import net from 'node:net';
import type { LocalPod, LocalService } from './plan.js';

/**
 * The local stand-in for kube-proxy: each Service gets a virtual IP whose ports spread connections
 * round-robin over the Service's pods. Pods without a sidecar reach Services here, so what they send
 * arrives at the pods exactly as sent (plaintext stays plaintext). An endpoint that refuses the
 * connection is skipped for the next one.
 */
interface Entry {
  readonly server: net.Server;
  endpoints: string[];
  next: number;
  /** The pod the connections come from, so the receiving side sees the caller's pod IP. */
  readonly from: string | undefined;
}

export class KubeProxy {
  private readonly servers = new Map<string, Entry>();
  private readonly sockets = new Set<net.Socket>();

  /**
   * Each Service port on its VIP, and, for each pod without a sidecar, on that pod's own outbound
   * address: connections from there leave from the pod's IP, so receiving sidecars can name the
   * caller (status lists plaintext callers by pod).
   */
  async update(services: readonly LocalService[], pods: readonly LocalPod[]): Promise<void> {
    const wanted = new Map<string, { endpoints: string[]; from: string | undefined }>();
    for (const s of services) {
      for (const p of s.ports) {
        wanted.set(`${s.vip}:${p.port}`, { endpoints: [...p.endpoints], from: undefined });
        for (const pod of pods) {
          if (!pod.sidecar)
            wanted.set(`${pod.outboundIP}:${p.outboundPort}`, {
              endpoints: [...p.endpoints],
              from: pod.podIP,
            });
        }
      }
    }
    for (const [addr, entry] of this.servers) {
      if (!wanted.has(addr)) {
        this.servers.delete(addr);
        entry.server.close();
      }
    }
    for (const [addr, { endpoints, from }] of wanted) {
      const existing = this.servers.get(addr);
      if (existing && existing.from === from) {
        existing.endpoints = endpoints;
        continue;
      }
      if (existing) {
        this.servers.delete(addr);
        await new Promise<void>((resolve) => existing.server.close(() => resolve()));
      }
      const entry: Entry = { server: net.createServer(), endpoints, next: 0, from };
      entry.server.on('connection', (client) => this.forward(entry, client));
      const i = addr.lastIndexOf(':');
      await new Promise<void>((resolve, reject) => {
        entry.server.once('error', reject);
        entry.server.listen(Number(addr.slice(i + 1)), addr.slice(0, i), () => resolve());
      });
      this.servers.set(addr, entry);
    }
  }

  private forward(entry: Entry, client: net.Socket): void {
    client.on('error', () => {});
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.pause();
    const tryAt = (attempt: number) => {
      if (attempt >= entry.endpoints.length) {
        client.destroy();
        return;
      }
      const ep = entry.endpoints[entry.next++ % entry.endpoints.length]!;
      const i = ep.lastIndexOf(':');
      const upstream = net.connect({
        port: Number(ep.slice(i + 1)),
        host: ep.slice(0, i),
        ...(entry.from ? { localAddress: entry.from } : {}),
      });
      upstream.once('error', () => {
        if (!upstream.readable || upstream.bytesRead === 0) tryAt(attempt + 1);
      });
      upstream.once('connect', () => {
        upstream.removeAllListeners('error');
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        upstream.on('close', () => client.destroy());
        client.on('close', () => upstream.destroy());
      });
    };
    tryAt(0);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await Promise.all(
      [...this.servers.values()].map((e) => new Promise<void>((resolve) => e.server.close(() => resolve()))),
    );
    this.servers.clear();
  }
}
