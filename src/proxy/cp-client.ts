import { generateKeyPairSync } from 'node:crypto';
import https from 'node:https';
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { KmtlsError } from '../errors.js';
import type { ProxyConfig } from '../mesh/index.js';
import { CP_PATHS, parseProxyConfig } from '../mesh/index.js';
import type { Clock } from '../pki/index.js';
import { CertificateRenewer, createCsr, formatDuration, retryDelayMs } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import { buildIdentity } from './certs.js';

export interface ControlPlaneClientOptions {
  readonly address: { host: string; port: number };
  /** `namespace/name` of the pod this sidecar serves. */
  readonly pod: string;
  /** The bootstrap token: used only while the sidecar holds no valid certificate. */
  readonly token: () => Promise<string>;
  /** Roots to verify the control plane with (the mesh root bundle). */
  readonly rootsPem: string;
  /** The SPIFFE ID the control plane must present. */
  readonly controlPlaneIdentity: string;
  readonly clock: Clock;
  readonly log: Logger;
  /** Applies a config; a rejection keeps the last good one and is reported. */
  readonly applyConfig: (config: ProxyConfig) => Promise<void>;
  readonly setIdentity: (identity: ProxyIdentity) => void;
  readonly random?: () => number;
  /**
   * A config stream that brings nothing (no config, no heartbeat) for this long is taken for dead
   * (a half-open connection: the control-plane node went away) and dropped; the client reconnects
   * with backoff. Default {@link DEFAULT_STREAM_IDLE_TIMEOUT_MS}, three of the server's heartbeats.
   */
  readonly streamIdleTimeoutMs?: number;
}

/** Three of the control plane's heartbeat intervals (15 s). */
export const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 45_000;
/** TCP keepalive probes on the config stream start after this long without traffic. */
const STREAM_KEEPALIVE_MS = 15_000;

/** The control plane answered, and not with 200: the status and its error code are kept. */
export class ControlPlaneRefusal extends KmtlsError {
  constructor(
    readonly status: number,
    /** The `code` of the control plane's JSON error body, if it had one. */
    readonly serverCode: string | undefined,
    message: string,
  ) {
    super('KMTLS_CP_UNREACHABLE', message);
  }
}

export interface ControlPlaneClientStatus {
  readonly connected: boolean;
  /** Since when the config stream is down (ms since the epoch); undefined while connected. */
  readonly disconnectedSinceMs: number | undefined;
  readonly configVersion: string | undefined;
  readonly lastError: string | undefined;
}

export interface FetchedCert {
  readonly identity: ProxyIdentity;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
}

/** How to reach the control plane and prove who we are to it. */
export interface ControlPlaneLink {
  readonly address: { host: string; port: number };
  readonly rootsPem: string;
  readonly controlPlaneIdentity: string;
  /** The current certificate, presented as the client certificate. */
  readonly identity?: ProxyIdentity | undefined;
  /** Keeps connections for short calls (acknowledgements); none: a connection per call. */
  readonly agent?: https.Agent | undefined;
}

function tlsOptionsFor(link: ControlPlaneLink): https.RequestOptions {
  const expected = link.controlPlaneIdentity;
  return {
    host: link.address.host,
    port: link.address.port,
    ca: link.rootsPem,
    minVersion: 'TLSv1.2',
    agent: link.agent ?? false,
    ...(link.identity ? { cert: link.identity.chainPem, key: link.identity.keyPem } : {}),
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      const uris = (cert.subjectaltname ?? '').split(', ').filter((s) => s.startsWith('URI:'));
      if (uris.includes(`URI:${expected}`)) return undefined;
      return new Error(`the control plane presented ${uris.join(', ') || 'no SPIFFE ID'}, not ${expected}`);
    },
  };
}

/** One request to the control plane's API; resolves with the body of a 200 answer. */
export function callControlPlane(
  link: ControlPlaneLink,
  method: string,
  path: string,
  body: string,
  headers: Record<string, string>,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = https.request({ ...tlsOptionsFor(link), method, path, headers, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode === 200) return resolve(text);
        let message = text;
        let serverCode: string | undefined;
        try {
          const parsed = JSON.parse(text) as { error?: string; code?: unknown };
          message = parsed.error ?? text;
          if (typeof parsed.code === 'string') serverCode = parsed.code;
        } catch {}
        reject(
          new ControlPlaneRefusal(
            res.statusCode ?? 0,
            serverCode,
            `control plane answered ${res.statusCode}: ${message.trim()}`,
          ),
        );
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) =>
      reject(
        err instanceof KmtlsError
          ? err
          : new KmtlsError(
              'KMTLS_CP_UNREACHABLE',
              `control plane ${link.address.host}:${link.address.port}: ${err.message}`,
            ),
      ),
    );
    req.end(body);
  });
}

/** The control plane refused a certificate as unproven (403, or KMTLS_PKI_UNAUTHENTICATED). */
function refusedAsUnauthenticated(err: unknown): boolean {
  if (err instanceof ControlPlaneRefusal)
    return err.status === 403 || err.serverCode === 'KMTLS_PKI_UNAUTHENTICATED';
  return err instanceof KmtlsError && err.code === 'KMTLS_PKI_UNAUTHENTICATED';
}

/**
 * A new key, made here, and a certificate for it: with the bootstrap token when there is no valid
 * current certificate, else with the certificate itself. The CA issues for whoever that proves. A
 * renewal refused as unproven although the certificate is still valid (the control plane no longer
 * trusts its root, after a root change) is tried once more with the bootstrap token, if there is one.
 */
export async function requestCertificate(
  link: ControlPlaneLink,
  token: (() => Promise<string>) | undefined,
  nowMs: number,
): Promise<FetchedCert> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const der = createCsr(privateKey).toString('base64');
  const csrPem = `-----BEGIN CERTIFICATE REQUEST-----\n${der.match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`;
  const current = link.identity && link.identity.notAfter.getTime() > nowMs ? link.identity : undefined;
  const withToken = async (): Promise<string> => {
    if (!token) throw new KmtlsError('KMTLS_PKI_UNAUTHENTICATED', 'no certificate and no bootstrap token');
    return callControlPlane(
      { ...link, identity: undefined },
      'POST',
      CP_PATHS.sign,
      JSON.stringify({ csr: csrPem }),
      {
        'content-type': 'application/json',
        authorization: `Bearer ${await token()}`,
      },
    );
  };
  let body: string;
  if (!current) {
    body = await withToken();
  } else {
    try {
      body = await callControlPlane(
        { ...link, identity: current },
        'POST',
        CP_PATHS.sign,
        JSON.stringify({ csr: csrPem }),
        { 'content-type': 'application/json' },
      );
    } catch (err) {
      if (!token || !refusedAsUnauthenticated(err)) throw err;
      body = await withToken();
    }
  }
  const parsed = JSON.parse(body) as { certChain: string; roots: string };
  const keyPem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const identity = buildIdentity({ chainPem: parsed.certChain, keyPem, bundlePem: parsed.roots });
  return {
    identity,
    notBeforeMs: Date.parse(identity.leaf.validFrom),
    notAfterMs: identity.notAfter.getTime(),
  };
}

/**
 * The sidecar's side of the control plane: gets its first certificate with the bootstrap token (the
 * key is made here and never leaves this process), renews it with the certificate itself at half its
 * lifetime, and follows the stream of ProxyConfig versions, acknowledging each one applied. When the
 * control plane is away the sidecar keeps its last config and certificate, reconnects with backoff,
 * and says how long the certificate has left.
 */
export class ControlPlaneClient {
  private identity: ProxyIdentity | undefined;
  private roots: string;
  private renewer: CertificateRenewer<FetchedCert> | undefined;
  private stopped = false;
  private request: ReturnType<typeof https.request> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private attempts = 0;
  private connected = false;
  private disconnectedSinceMs: number | undefined;
  private version: string | undefined;
  private lastError: string | undefined;
  private firstCert: ((ok: boolean) => void) | undefined;
  private readonly random: () => number;
  private readonly agent = new https.Agent({ keepAlive: true, maxSockets: 1 });

  constructor(private readonly options: ControlPlaneClientOptions) {
    this.roots = options.rootsPem;
    this.random = options.random ?? Math.random;
    this.disconnectedSinceMs = options.clock.now();
  }

  status(): ControlPlaneClientStatus {
    return {
      connected: this.connected,
      disconnectedSinceMs: this.connected ? undefined : this.disconnectedSinceMs,
      configVersion: this.version,
      lastError: this.lastError,
    };
  }

  /** Resolves once the first certificate is installed; keeps working in the background after. */
  start(): Promise<void> {
    const first = new Promise<void>((resolve) => {
      this.firstCert = () => resolve();
    });
    this.renewer = new CertificateRenewer<FetchedCert>({
      clock: this.options.clock,
      timer: {
        setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
        clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
      },
      random: this.random,
      fetch: () => this.fetchCertificate(),
      retry: { initialMs: 200, maxMs: 10_000 },
      onRenewed: (r) => {
        this.identity = r.certificate.identity;
        this.options.setIdentity(r.certificate.identity);
        this.options.log.info(
          {
            identity: r.certificate.identity.identity,
            serial: r.certificate.identity.serial.toLowerCase(),
            notAfter: r.certificate.identity.notAfter.toISOString(),
          },
          'certificate installed',
        );
        const done = this.firstCert;
        this.firstCert = undefined;
        done?.(true);
        // A stream that is up stays up; one waiting for its retry is tried now, with the new
        // certificate, instead of alongside the retry (which would leave two streams).
        if (!this.request && !this.stopped) {
          if (this.retryTimer) clearTimeout(this.retryTimer);
          this.retryTimer = undefined;
          this.connect();
        }
      },
      onError: (f) => {
        this.lastError = f.error.message;
        this.options.log.warn(
          { code: f.error.code, err: f.error.message },
          'certificate request failed; retrying',
        );
      },
    });
    this.renewer.start();
    return first;
  }

  stop(): void {
    this.stopped = true;
    this.renewer?.stop();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.request?.destroy();
    this.agent.destroy();
  }

  private link(): ControlPlaneLink {
    return {
      address: this.options.address,
      rootsPem: this.roots,
      controlPlaneIdentity: this.options.controlPlaneIdentity,
      identity: this.identity,
    };
  }

  private async fetchCertificate(): Promise<FetchedCert> {
    const fetched = await requestCertificate(this.link(), this.options.token, this.options.clock.now());
    this.roots = fetched.identity.bundlePem;
    return fetched;
  }

  private call(method: string, path: string, body: string, headers: Record<string, string>): Promise<string> {
    // Acknowledgements reuse a connection: a handshake per ack would cost the control plane more than the push.
    return callControlPlane({ ...this.link(), agent: this.agent }, method, path, body, headers);
  }

  private connect(): void {
    // `heartbeat=1`: this client skips heartbeat lines (older sidecars would log them as bad configs).
    const path = `${CP_PATHS.config}?pod=${encodeURIComponent(this.options.pod)}&heartbeat=1`;
    const idleMs = this.options.streamIdleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    const req = https.request({ ...tlsOptionsFor(this.link()), method: 'GET', path }, (res) => {
      if (res.statusCode !== 200) {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          this.lost(
            req,
            `config stream refused (${res.statusCode}): ${Buffer.concat(chunks).toString('utf8').trim()}`,
          ),
        );
        res.on('error', () => {});
        return;
      }
      this.connected = true;
      this.attempts = 0;
      this.lastError = undefined;
      this.options.log.info({ pod: this.options.pod }, 'connected to the control plane');
      let buffered = '';
      let applying = Promise.resolve();
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffered += chunk;
        let nl = buffered.indexOf('\n');
        while (nl !== -1) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line.trim() !== '') applying = applying.then(() => this.receive(line));
          nl = buffered.indexOf('\n');
        }
      });
      res.on('close', () => this.lost(req, 'config stream closed'));
      res.on('error', () => {});
    });
    // The control plane writes a heartbeat line every few seconds: a socket silent for longer than
    // the idle timeout (connecting included) is a dead peer whose FIN never came. Keepalive probes let
    // the kernel notice too.
    req.on('socket', (socket) => socket.setKeepAlive(true, STREAM_KEEPALIVE_MS));
    req.setTimeout(idleMs, () => {
      this.lost(req, `config stream silent for ${formatDuration(idleMs)} (no heartbeat); reconnecting`);
      req.destroy();
    });
    req.on('error', (err) => this.lost(req, err.message));
    req.end();
    this.request = req;
  }

  /**
   * A new trust bundle (a root rotation has begun or ended): the same certificate and key with the new
   * roots, for new connections at once. A bundle that cannot be read is refused and the old one stays.
   */
  private updateTrustBundle(roots: string): void {
    const id = this.identity;
    if (roots === this.roots && (!id || id.bundlePem === roots)) return;
    this.roots = roots;
    if (!id || id.bundlePem === roots) return;
    try {
      const next = buildIdentity({ chainPem: id.chainPem, keyPem: id.keyPem, bundlePem: roots });
      this.identity = next;
      this.options.setIdentity(next);
      this.options.log.info({ roots: next.roots.length }, 'trust bundle updated');
    } catch (err) {
      this.options.log.error(
        { code: (err as KmtlsError).code, err: (err as Error).message },
        'trust bundle refused; keeping the last good one',
      );
    }
  }

  private async receive(line: string): Promise<void> {
    let message: { version?: unknown; config?: unknown; roots?: unknown; heartbeat?: unknown };
    try {
      message = JSON.parse(line) as typeof message;
    } catch {
      this.options.log.error(
        { code: 'KMTLS_PROXY_CONFIG_INVALID' },
        'unreadable config message; keeping the last good config',
      );
      return;
    }
    // Heartbeats, and whatever later control planes add that carries no config, are not configs.
    if (message === null || typeof message !== 'object' || message.config === undefined) return;
    if (typeof message.roots === 'string') this.updateTrustBundle(message.roots);
    const r = parseProxyConfig(message.config);
    if (!r.ok) {
      this.options.log.error(
        { code: 'KMTLS_PROXY_CONFIG_INVALID', problems: r.problems },
        'config refused; keeping the last good one',
      );
      return;
    }
    try {
      await this.options.applyConfig(r.config);
    } catch (err) {
      this.options.log.error(
        { code: (err as KmtlsError).code, err: (err as Error).message, version: r.config.version },
        'config could not be applied; keeping the last good one',
      );
      return;
    }
    this.version = r.config.version;
    this.options.log.info({ version: r.config.version }, 'config applied');
    try {
      await this.call(
        'POST',
        CP_PATHS.applied,
        JSON.stringify({ pod: this.options.pod, version: r.config.version }),
        {
          'content-type': 'application/json',
        },
      );
    } catch {
      // The acknowledgement only feeds the control plane's latency figures.
    }
  }

  /** The stream `req` is gone; a late event from an earlier stream changes nothing. */
  private lost(req: ReturnType<typeof https.request>, why: string): void {
    if (req !== this.request) return;
    this.request = undefined;
    if (this.connected) this.disconnectedSinceMs = this.options.clock.now();
    this.connected = false;
    this.lastError = why;
    if (this.stopped || this.retryTimer) return;
    const delay = retryDelayMs(this.attempts++, { initialMs: 100, maxMs: 5_000, random: this.random });
    const left = this.identity ? this.identity.notAfter.getTime() - this.options.clock.now() : undefined;
    this.options.log.warn(
      {
        err: why,
        retryInMs: delay,
        certificateTimeLeft: left === undefined ? undefined : formatDuration(Math.max(0, left)),
      },
      'control plane unreachable; serving the last config and certificate',
    );
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.stopped) this.connect();
    }, delay);
  }
}
