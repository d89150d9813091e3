import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { KmtlsError } from '../errors.js';
import { CP_PATHS } from '../mesh/index.js';
import type { CertificateAuthority, Clock } from '../pki/index.js';
import { verifyPeerChain } from '../pki/index.js';
import type { ControlPlane, ControlPlaneObserver } from './control-plane.js';

/** Largest request body accepted (a CSR is under 1 KiB). */
const MAX_BODY = 64 * 1024;
/** How often an idle config stream gets a heartbeat line. */
export const DEFAULT_HEARTBEAT_MS = 15_000;
/** A config stream with more than this unsent is a reader that no longer reads: it is ended. */
export const DEFAULT_MAX_STREAM_BUFFER_BYTES = 4 * 1024 * 1024;
/** The heartbeat line: no `config`, so every client skips it. */
const HEARTBEAT_LINE = `${JSON.stringify({ heartbeat: true })}\n`;

export class ControlPlaneMetrics implements ControlPlaneObserver {
  readonly registry = new Registry();
  private readonly pushes = new Counter({
    name: 'kmtls_controlplane_pushes_total',
    help: 'ProxyConfig versions pushed to proxies',
    registers: [this.registry],
  });
  private readonly latency = new Histogram({
    name: 'kmtls_controlplane_push_latency_seconds',
    help: 'From noticing a change to every affected proxy applying it',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  private readonly connectedGauge = new Gauge({
    name: 'kmtls_controlplane_connected_proxies',
    help: 'Proxies with an open config stream',
    registers: [this.registry],
  });
  private readonly errorsGauge = new Gauge({
    name: 'kmtls_controlplane_config_errors',
    help: 'Manifest files whose latest version is refused (the last good version keeps serving)',
    registers: [this.registry],
  });
  private readonly issuedCounter = new Counter({
    name: 'kmtls_controlplane_certificates_issued_total',
    help: 'Workload certificates issued',
    labelNames: ['method'],
    registers: [this.registry],
  });
  private readonly refusedCounter = new Counter({
    name: 'kmtls_controlplane_signing_refused_total',
    help: 'Certificate requests refused for lack of a valid credential',
    registers: [this.registry],
  });

  pushed(): void {
    this.pushes.inc();
  }
  applied(_pod: string, _version: string, latencyMs: number | undefined): void {
    if (latencyMs !== undefined) this.latency.observe(latencyMs / 1000);
  }
  issued(_identity: string, method: string): void {
    this.issuedCounter.inc({ method });
  }
  refusedSigning(): void {
    this.refusedCounter.inc();
  }
  configErrors(count: number): void {
    this.errorsGauge.set(count);
  }
  connected(count: number): void {
    this.connectedGauge.set(count);
  }
}

/** What a running control plane reports: every event to the metrics, the notable ones to the log. */
export function meteredObserver(
  metrics: ControlPlaneMetrics,
  log: Pick<Logger, 'info' | 'warn'>,
): ControlPlaneObserver {
  return {
    pushed: () => metrics.pushed(),
    applied: (pod, version, latencyMs) => {
      metrics.applied(pod, version, latencyMs);
      if (latencyMs !== undefined)
        log.info({ version, latencyMs }, 'change applied by every affected sidecar');
    },
    issued: (identity, method) => {
      metrics.issued(identity, method);
      log.info({ identity, method }, 'certificate issued');
    },
    refusedSigning: (reason) => {
      metrics.refusedSigning();
      log.warn({ code: 'KMTLS_PKI_UNAUTHENTICATED', reason }, 'certificate request refused');
    },
    configErrors: (n) => metrics.configErrors(n),
    connected: (n) => metrics.connected(n),
  };
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new KmtlsError('KMTLS_CLI_USAGE', 'request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(body)}\n`);
}

/** The client's chain from the handshake, leaf first, DER; empty without a certificate. */
function peerChainOf(socket: TLSSocket): Buffer[] {
  const out: Buffer[] = [];
  let cert = socket.getPeerCertificate(true);
  const seen = new Set<string>();
  while (cert?.raw && !seen.has(cert.fingerprint256)) {
    seen.add(cert.fingerprint256);
    out.push(cert.raw);
    cert = cert.issuerCertificate;
  }
  return out;
}

/**
 * The control plane's API over mTLS: certificate signing (bootstrap token or current certificate),
 * a stream of ProxyConfig versions per proxy, and acknowledgements. A proxy proves with its
 * certificate that it is the pod's identity before it sees that pod's config.
 *
 * A config stream is newline-delimited JSON: `{version, config, roots}` per version, and, when the
 * client asks with `&heartbeat=1`, `{"heartbeat":true}` every `heartbeatMs` (default 15 s; 0 turns
 * heartbeats off) so a sidecar can tell a dead connection from a quiet one. A stream whose unsent output passes `maxStreamBufferBytes`
 * (default 4 MiB: the sidecar stopped reading) is destroyed and logged; so is a stream whose pod
 * left the placement, which is ended so the sidecar reconnects.
 */
export async function startControlPlaneServer(opts: {
  controlPlane: ControlPlane;
  ca: CertificateAuthority;
  clock: Clock;
  listen: { host: string; port: number };
  serving: { certPem: string; keyPem: string };
  heartbeatMs?: number;
  maxStreamBufferBytes?: number;
  /** Where dropped streams are reported; none: not reported. */
  log?: Pick<Logger, 'warn' | 'info'>;
}): Promise<{
  server: https.Server;
  setServing(serving: { certPem: string; keyPem: string }): void;
  close(): Promise<void>;
}> {
  const { controlPlane: cp } = opts;
  const heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const maxBuffered = opts.maxStreamBufferBytes ?? DEFAULT_MAX_STREAM_BUFFER_BYTES;
  const streams = new Set<http.ServerResponse>();
  const callerIdentities = (req: http.IncomingMessage): string[] => {
    const chain = peerChainOf(req.socket as TLSSocket);
    if (chain.length === 0) return [];
    const v = verifyPeerChain(chain, cp.ca.material.trustBundle, opts.clock.now(), [cp.ca.trustDomain]);
    return v.ok ? v.identities.map((i) => i.uri) : [];
  };
  const authorizePod = (req: http.IncomingMessage, pod: string): void => {
    const want = cp.identityOf(pod);
    if (want === undefined) throw new KmtlsError('KMTLS_CP_UNKNOWN_POD', `no pod ${pod} in the mesh`);
    const have = callerIdentities(req);
    if (!have.includes(want)) {
      throw new KmtlsError(
        'KMTLS_CP_FORBIDDEN',
        `pod ${pod} runs as ${want}; the caller presented ${have.length > 0 ? have.join(', ') : 'no valid mesh certificate'}`,
      );
    }
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = new URL(req.url ?? '/', 'https://control-plane');
    if (req.method === 'POST' && url.pathname === CP_PATHS.sign) {
      const body = JSON.parse(await readBody(req)) as { csr?: unknown };
      if (typeof body.csr !== 'string')
        throw new KmtlsError('KMTLS_PKI_CSR_MALFORMED', 'body needs {"csr": PEM}');
      const auth = req.headers.authorization;
      const bearer = auth?.startsWith('Bearer ') ? auth.slice(7).trim() : undefined;
      const chain = peerChainOf(req.socket as TLSSocket);
      const issued = await cp.sign(
        { ...(bearer ? { bearerToken: bearer } : {}), ...(chain.length > 0 ? { peerChain: chain } : {}) },
        body.csr,
      );
      return sendJson(res, 200, {
        certChain: issued.chainPem,
        roots: cp.ca.trustBundlePem(),
        notAfter: issued.notAfter.toISOString(),
      });
    }
    if (req.method === 'GET' && url.pathname === CP_PATHS.config) {
      const pod = url.searchParams.get('pod') ?? '';
      authorizePod(req, pod);
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
      res.flushHeaders();
      streams.add(res);
      const send = (line: string): void => {
        if (res.destroyed || res.writableEnded) return;
        if (res.writableLength > maxBuffered) {
          opts.log?.warn(
            { pod, bufferedBytes: res.writableLength, limitBytes: maxBuffered },
            'config stream not read: dropped (the sidecar reconnects)',
          );
          res.destroy();
          return;
        }
        res.write(line);
      };
      const stop = cp.watchConfig(
        pod,
        (v) =>
          send(
            `${JSON.stringify({ version: v.version, config: v.config, roots: cp.ca.trustBundlePem() })}\n`,
          ),
        () => {
          opts.log?.info({ pod }, 'pod left the placement: its config stream is ended');
          res.end();
        },
      );
      // Only clients that ask for heartbeats get them: older sidecars would log each as a bad config.
      const heartbeat =
        heartbeatMs > 0 && url.searchParams.get('heartbeat') === '1'
          ? setInterval(() => send(HEARTBEAT_LINE), heartbeatMs).unref()
          : undefined;
      res.on('close', () => {
        if (heartbeat) clearInterval(heartbeat);
        stop();
        streams.delete(res);
      });
      return;
    }
    if (req.method === 'POST' && url.pathname === CP_PATHS.applied) {
      const body = JSON.parse(await readBody(req)) as { pod?: unknown; version?: unknown };
      if (typeof body.pod !== 'string' || typeof body.version !== 'string')
        throw new KmtlsError('KMTLS_CLI_USAGE', 'body needs {"pod": "ns/name", "version": "N"}');
      authorizePod(req, body.pod);
      cp.applied(body.pod, body.version);
      return sendJson(res, 200, { ok: true });
    }
    sendJson(res, 404, { error: 'not found' });
  };

  const server = https.createServer(
    {
      cert: opts.serving.certPem,
      key: opts.serving.keyPem,
      ca: cp.ca.trustBundlePem(),
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        const code =
          err instanceof KmtlsError ? err.code : err instanceof SyntaxError ? 'KMTLS_CLI_USAGE' : 'INTERNAL';
        const status =
          code === 'KMTLS_PKI_UNAUTHENTICATED' || code === 'KMTLS_CP_FORBIDDEN'
            ? 403
            : code === 'KMTLS_CP_UNKNOWN_POD'
              ? 404
              : code === 'INTERNAL'
                ? 500
                : 400;
        if (!res.headersSent) sendJson(res, status, { code, error: (err as Error).message });
        else res.destroy();
      });
    },
  );
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  return {
    server,
    setServing: (s) =>
      server.setSecureContext({ cert: s.certPem, key: s.keyPem, ca: cp.ca.trustBundlePem() }),
    close: async () => {
      for (const s of streams) s.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The request came from this host: a loopback address (IPv4, IPv6, or IPv4-mapped IPv6). */
export function loopbackCaller(req: http.IncomingMessage): boolean {
  let addr = req.socket.remoteAddress ?? '';
  if (addr.startsWith('::ffff:')) addr = addr.slice(7);
  if (isIP(addr) === 4) return addr.startsWith('127.');
  return addr === '::1';
}

/**
 * The control plane's admin endpoint: /ready, /metrics, /status. Plain HTTP on its own port.
 *
 * - `readyWhen`: /ready answers 200 while it returns true, else 503 (cluster mode: until the sources
 *   have synced). Default: always ready.
 * - `statusAllowed`: /status answers 403 to a request for which it returns false (cluster mode passes
 *   `loopbackCaller`, since /status names every pod and workload). Default: every caller, as before.
 * - A failed metrics collection answers 500 and is logged to `log`, if given.
 */
export async function startControlPlaneAdmin(opts: {
  controlPlane: ControlPlane;
  metrics: ControlPlaneMetrics;
  listen: { host: string; port: number };
  extra?: () => Record<string, unknown>;
  readyWhen?: () => boolean;
  statusAllowed?: (req: http.IncomingMessage) => boolean;
  log?: Pick<Logger, 'error'>;
}): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    switch (req.url) {
      case '/ready': {
        const ready = opts.readyWhen?.() ?? true;
        res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' });
        return res.end(ready ? 'ready\n' : 'not ready: the sources have not synced\n');
      }
      case '/metrics':
        opts.metrics.registry.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': opts.metrics.registry.contentType });
            res.end(text);
          },
          (err: unknown) => {
            opts.log?.error({ err: (err as Error)?.message ?? String(err) }, 'metrics collection failed');
            if (!res.headersSent)
              sendJson(res, 500, {
                error: `metrics collection failed: ${String((err as Error)?.message ?? err)}`,
              });
            else res.destroy();
          },
        );
        return;
      case '/status':
        if (opts.statusAllowed && !opts.statusAllowed(req))
          return sendJson(res, 403, { error: '/status answers only local callers' });
        return sendJson(res, 200, { ...opts.controlPlane.status(), ...opts.extra?.() });
      default:
        return sendJson(res, 404, { error: 'not found', endpoints: ['/ready', '/metrics', '/status'] });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  return server;
}
