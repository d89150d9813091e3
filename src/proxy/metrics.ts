import { Counter, Histogram, Registry } from 'prom-client';
import type { ConnectionRecord, ProxyObserver, RequestRecord } from './events.js';

const TCP_LABELS = [
  'reporter',
  'source_principal',
  'destination_principal',
  'destination_service',
  'destination_workload',
  'destination_workload_namespace',
  'connection_security_policy',
] as const;

/**
 * Prometheus metrics with Istio's standard names and labels, so existing dashboards work. Unlike
 * Istio, the client side says `mutual_tls` when it sent mTLS instead of `unknown`.
 */
export class ProxyMetrics implements ProxyObserver {
  readonly registry = new Registry();
  private readonly opened: Counter<(typeof TCP_LABELS)[number]>;
  private readonly closed: Counter<(typeof TCP_LABELS)[number]>;
  private readonly sent: Counter<(typeof TCP_LABELS)[number]>;
  private readonly received: Counter<(typeof TCP_LABELS)[number]>;
  private readonly requests: Counter<string>;
  private readonly duration: Histogram<string>;
  private readonly refused: Counter<string>;

  constructor(private readonly workload: { namespace: string; name: string }) {
    const r = [this.registry];
    const labelNames = [...TCP_LABELS];
    this.opened = new Counter({
      name: 'istio_tcp_connections_opened_total',
      help: 'TCP connections opened',
      labelNames,
      registers: r,
    });
    this.closed = new Counter({
      name: 'istio_tcp_connections_closed_total',
      help: 'TCP connections closed',
      labelNames,
      registers: r,
    });
    this.sent = new Counter({
      name: 'istio_tcp_sent_bytes_total',
      help: 'Bytes sent to the downstream',
      labelNames,
      registers: r,
    });
    this.received = new Counter({
      name: 'istio_tcp_received_bytes_total',
      help: 'Bytes received from the downstream',
      labelNames,
      registers: r,
    });
    const requestLabels = [...TCP_LABELS, 'response_code', 'grpc_response_status', 'request_protocol'];
    this.requests = new Counter({
      name: 'istio_requests_total',
      help: 'Requests',
      labelNames: requestLabels,
      registers: r,
    });
    this.duration = new Histogram({
      name: 'istio_request_duration_milliseconds',
      help: 'Request duration',
      labelNames: requestLabels,
      buckets: [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000],
      registers: r,
    });
    this.refused = new Counter({
      name: 'kmtls_connections_refused_total',
      help: 'Connections refused, by reason and deciding policy',
      labelNames: ['reason', 'policy', 'direction', 'port'],
      registers: r,
    });
  }

  private labels(c: ConnectionRecord): Record<(typeof TCP_LABELS)[number], string> {
    return {
      reporter: c.direction === 'inbound' ? 'destination' : 'source',
      source_principal: c.sourcePrincipal ?? 'unknown',
      destination_principal: c.destinationPrincipal ?? 'unknown',
      destination_service: c.service ?? 'unknown',
      destination_workload: c.direction === 'inbound' ? this.workload.name : 'unknown',
      destination_workload_namespace: c.direction === 'inbound' ? this.workload.namespace : 'unknown',
      connection_security_policy:
        c.transport === 'mtls' ? 'mutual_tls' : c.transport === undefined ? 'unknown' : 'none',
    };
  }

  /** Records opened here, so a connection refused later (a drain) still counts as closed. */
  private readonly open = new WeakSet<ConnectionRecord>();

  connectionOpened(c: ConnectionRecord): void {
    // Opened once accepted: the security of the connection, and so every label, is known by then.
    this.open.add(c);
    this.opened.inc(this.labels(c));
  }

  connectionClosed(c: ConnectionRecord): void {
    if (c.outcome === 'refused' && c.reason) {
      this.refused.inc({
        reason: c.reason,
        policy: c.policy ?? 'none',
        direction: c.direction,
        port: String(c.port),
      });
    }
    if (!this.open.has(c)) return;
    const l = this.labels(c);
    this.closed.inc(l);
    this.sent.inc(l, c.bytesSent);
    this.received.inc(l, c.bytesReceived);
  }

  request(r: RequestRecord): void {
    const l = {
      ...this.labels(r.connection),
      response_code: String(r.status),
      grpc_response_status: r.grpcStatus ?? '',
      request_protocol: r.protocol,
    };
    this.requests.inc(l);
    this.duration.observe(l, r.durationMs);
  }
}
