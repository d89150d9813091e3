import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import type { ProxyMetrics } from './metrics.js';
import type { Sidecar } from './proxy.js';
import type { RecentConnections } from './recent.js';

/** Admin endpoint: /ready, /metrics, /config (no key material), /certs. */
export function startAdmin(
  proxy: Sidecar,
  metrics: ProxyMetrics,
  listen: { host: string; port: number },
  extras: {
    /** /connections: recent connections and per-port counts. */
    connections?: RecentConnections;
    /** /control-plane: the state of the link to the control plane. */
    controlPlane?: () => unknown;
  } = {},
): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const send = (status: number, body: unknown, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type });
      res.end(typeof body === 'string' ? body : `${JSON.stringify(body, null, 2)}\n`);
    };
    switch (req.url) {
      case '/ready':
        return proxy.isReady()
          ? send(200, 'ready\n', 'text/plain')
          : send(503, `not ready: ${proxy.notReadyBecause()}\n`, 'text/plain');
      case '/metrics':
        void metrics.registry.metrics().then((text) => send(200, text, metrics.registry.contentType));
        return;
      case '/config': {
        // The config holds no key material, only file paths for DestinationRule certificates.
        return send(200, proxy.config);
      }
      case '/certs': {
        const id = proxy.identity;
        if (!id) return send(503, { error: 'no certificate loaded' });
        return send(200, {
          identity: id.identity,
          // Lower-case hex, as kmtls ca issue and ca inspect print it.
          serial: id.serial.toLowerCase(),
          notAfter: id.notAfter.toISOString(),
          timeLeftSeconds: Math.floor((id.notAfter.getTime() - proxy.runtime.clock.now()) / 1000),
          trustBundle: id.roots.map((r) => new X509Certificate(r).subject.replace(/\n/g, ', ')),
        });
      }
      case '/connections':
        if (extras.connections) return send(200, extras.connections.snapshot());
        break;
      case '/control-plane':
        if (extras.controlPlane) return send(200, extras.controlPlane());
        break;
    }
    const endpoints = ['/ready', '/metrics', '/config', '/certs'];
    if (extras.connections) endpoints.push('/connections');
    if (extras.controlPlane) endpoints.push('/control-plane');
    return send(404, { error: 'not found', endpoints });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve(server));
  });
}
