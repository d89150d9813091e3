import type { Logger } from 'pino';
import type { ConnectionRecord, ProxyObserver, RequestRecord } from './events.js';

/** One JSON line per connection, and one per request on HTTP ports, through the component's logger. */
export function accessLog(log: Logger): ProxyObserver {
  return {
    connectionOpened: () => {},
    connectionClosed: (c: ConnectionRecord) => {
      const line = {
        id: c.id,
        direction: c.direction,
        port: c.port,
        service: c.service,
        mode: c.mode,
        policy: c.policy,
        source: c.sourceAddress,
        destination: c.destinationAddress,
        transport: c.transport,
        sourcePrincipal: c.sourcePrincipal,
        destinationPrincipal: c.destinationPrincipal,
        tlsVersion: c.tlsVersion,
        resumed: c.resumed,
        alpn: c.alpn,
        outcome: c.outcome,
        reason: c.reason,
        detail: c.message,
        bytesReceived: c.bytesReceived,
        bytesSent: c.bytesSent,
        durationMs: c.durationMs,
      };
      if (c.outcome === 'refused') log.warn(line, 'connection refused');
      else log.info(line, 'connection');
    },
    request: (r: RequestRecord) => {
      log.info(
        {
          id: r.connection.id,
          method: r.method,
          path: r.path,
          status: r.status,
          protocol: r.protocol,
          grpcStatus: r.grpcStatus,
          durationMs: r.durationMs,
          sourcePrincipal: r.connection.sourcePrincipal,
          transport: r.connection.transport,
        },
        'request',
      );
    },
  };
}
