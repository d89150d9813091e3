import type { ResolvedMtlsMode } from '../policy/index.js';

/** Why the proxy refused or dropped a connection: stable names, in logs, metrics and errors. */
export const REFUSAL_REASONS = [
  'PLAINTEXT_REJECTED',
  'NO_CLIENT_CERT',
  'UNKNOWN_CA',
  'CERT_EXPIRED',
  'NOT_YET_VALID',
  'UNTRUSTED_TRUST_DOMAIN',
  'NO_SPIFFE_ID',
  'BAD_CERTIFICATE',
  'TLS_VERSION',
  'HANDSHAKE_TIMEOUT',
  'HANDSHAKE_FAILED',
  'SAN_MISMATCH',
  'UPSTREAM_UNREACHABLE',
  'MAX_CONNECTIONS',
  'POLICY_CHANGED',
  'UNEXPECTED_TLS',
  'NO_ORIGINAL_DST',
] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/**
 * How a connection was carried on the listener side: `raw` is passed on without inspection (DISABLE
 * on a TCP port), `app-tls` is the application's own TLS passed through, `tls` is TLS kmtls originated.
 */
export type Transport = 'mtls' | 'plaintext' | 'app-tls' | 'tls' | 'raw';

/** One connection, as the access log and the metrics see it. */
export interface ConnectionRecord {
  readonly id: number;
  readonly direction: 'inbound' | 'outbound';
  /** Inbound: the workload port; outbound: the service port. */
  readonly port: number;
  /** Outbound: the service `host:port`. */
  readonly service?: string;
  readonly mode?: ResolvedMtlsMode;
  /** The policy that decided the mode (inbound) or the TLS decision (outbound). */
  readonly policy?: string;
  readonly sourceAddress: string;
  readonly destinationAddress?: string;
  transport?: Transport | undefined;
  sourcePrincipal?: string | undefined;
  destinationPrincipal?: string | undefined;
  tlsVersion?: string | undefined;
  /** Whether the TLS session was resumed (no full handshake). */
  resumed?: boolean | undefined;
  cipher?: string | undefined;
  alpn?: string | undefined;
  outcome?: 'accepted' | 'refused' | undefined;
  reason?: RefusalReason | undefined;
  message?: string | undefined;
  bytesReceived: number;
  bytesSent: number;
  readonly startMs: number;
  durationMs?: number;
}

/** One HTTP request on an HTTP port. */
export interface RequestRecord {
  readonly connection: ConnectionRecord;
  readonly method: string;
  readonly path: string;
  readonly status: number;
  /** Istio's `request_protocol`: `grpc` for gRPC requests, else `http`. */
  readonly protocol: 'http' | 'grpc';
  /** gRPC's own status (`grpc-status`), when the answer carried one. */
  readonly grpcStatus?: string;
  readonly durationMs: number;
}

/** Where the proxy reports what happens; metrics and the access log both implement it. */
export interface ProxyObserver {
  /** A connection was accepted and is being carried (refused ones never open, as in Istio). */
  connectionOpened(c: ConnectionRecord): void;
  /** Every connection ends here, accepted or refused. */
  connectionClosed(c: ConnectionRecord): void;
  request(r: RequestRecord): void;
}

export const NO_OBSERVER: ProxyObserver = {
  connectionOpened: () => {},
  connectionClosed: () => {},
  request: () => {},
};

export function fanOut(...observers: ProxyObserver[]): ProxyObserver {
  return {
    connectionOpened: (c) => {
      for (const o of observers) o.connectionOpened(c);
    },
    connectionClosed: (c) => {
      for (const o of observers) o.connectionClosed(c);
    },
    request: (r) => {
      for (const o of observers) o.request(r);
    },
  };
}
