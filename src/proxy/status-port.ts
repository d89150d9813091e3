import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { en } from 'zod/locales';
import * as z from 'zod/mini';
import { KmtlsError } from '../errors.js';

// zod's small API, as in src/mesh/proxy-config.ts (which says why); English messages.
z.config(en());

/** The sidecar's own readiness, probed by the kubelet (readinessProbe, and startupProbe of a native sidecar). */
export const READY_PATH = '/healthz/ready';
/** Rewritten application probes live under `/app-health/<container>/<livez|readyz|startupz>`. */
export const APP_HEALTH_PREFIX = '/app-health/';
/** The env var that carries the original probes, as JSON of {@link AppProbers}. */
export const APP_PROBERS_ENV = 'KMTLS_APP_PROBERS';
/** kubelet's default `timeoutSeconds`. */
export const DEFAULT_PROBE_TIMEOUT_SECONDS = 1;

const port = z.int().check(z.gte(1), z.lte(65535));
const timeoutSeconds = z.optional(z.int().check(z.positive()));
const appProberSchema = z.union([
  z.strictObject({
    httpGet: z.strictObject({
      port,
      path: z.string(),
      scheme: z.enum(['HTTP', 'HTTPS']),
      httpHeaders: z.optional(z.array(z.strictObject({ name: z.string(), value: z.string() }))),
    }),
    timeoutSeconds,
  }),
  z.strictObject({
    tcpSocket: z.strictObject({ port }),
    timeoutSeconds,
  }),
  z.strictObject({
    grpc: z.strictObject({ port, service: z.optional(z.string()) }),
    timeoutSeconds,
  }),
]);

/**
 * One application probe as the kubelet would have run it, before the injector pointed it at the
 * status port. Named ports are already resolved to numbers; exec probes never appear here (they
 * run inside the app container and need no rewrite).
 */
export type AppProber = z.infer<typeof appProberSchema>;
/** Path under {@link APP_HEALTH_PREFIX} → the original probe. */
export type AppProbers = Readonly<Record<string, AppProber>>;

/**
 * Parses `KMTLS_APP_PROBERS`. Unset or empty means no rewritten probes. Anything else that is not
 * exactly the injector's shape is refused, so a broken pod spec fails at start, not at every probe.
 */
export function parseAppProbers(text: string | undefined): AppProbers {
  if (text === undefined || text.trim() === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_PROXY_CONFIG_INVALID',
      `invalid ${APP_PROBERS_ENV}: not JSON (${(err as Error).message})`,
      { cause: err },
    );
  }
  const parsed = z
    .record(z.string().check(z.startsWith(APP_HEALTH_PREFIX)), appProberSchema)
    .safeParse(value);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new KmtlsError(
      'KMTLS_PROXY_CONFIG_INVALID',
      `invalid ${APP_PROBERS_ENV}: ${first?.path.map(String).join('.') || 'value'} (${first?.message ?? 'bad shape'})`,
    );
  }
  return Object.freeze(parsed.data);
}

export interface StatusServerOptions {
  readonly listen: { readonly host: string; readonly port: number };
  readonly probers: AppProbers;
  /** Whether the sidecar can serve mesh traffic (a certificate and a config are loaded). */
  readonly ready: () => boolean;
  /**
   * Where the probes are run: the pod's IP, as the kubelet would have probed it. Defaults to the
   * POD_IP env var (the injector sets it from status.podIP), else 127.0.0.1.
   */
  readonly appHost?: string;
}

/** The pod's IP from the POD_IP env var, else 127.0.0.1 (outside a pod). */
export function defaultAppHost(env: NodeJS.ProcessEnv = process.env): string {
  const ip = env.POD_IP?.trim();
  return ip && net.isIP(ip) ? ip : '127.0.0.1';
}

/**
 * The source address of a probe: a probe of the pod's IPv4 address leaves from 127.0.0.6 (Istio's
 * prober does the same), which the interception rules never redirect, so a probe of a STRICT port is
 * not refused as plaintext by the sidecar's own inbound side.
 */
function probeSource(appHost: string): { localAddress?: string } {
  return net.isIPv4(appHost) && !appHost.startsWith('127.') ? { localAddress: '127.0.0.6' } : {};
}

/** The outcome of one application probe: the status the kubelet sees, and why. */
export interface ProbeResult {
  readonly status: number;
  readonly detail: string;
}

/**
 * The sidecar's status port (15020): the kubelet's probes land here because the status port is not
 * captured by iptables and speaks plaintext, while the application's ports are STRICT. `GET
 * /healthz/ready` reports the sidecar; `GET /app-health/<container>/<kind>` runs the application's
 * original probe against the pod's IP (`appHost`) and answers what the kubelet would have concluded.
 */
export function startStatusServer(options: StatusServerOptions): Promise<http.Server> {
  const appHost = options.appHost ?? defaultAppHost();
  const server = http.createServer((req, res) => {
    const send = (status: number, text: string) => {
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(`${text}\n`);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed');
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path === READY_PATH) return options.ready() ? send(200, 'ready') : send(503, 'not ready');
    const prober = Object.hasOwn(options.probers, path) ? options.probers[path] : undefined;
    if (!prober) return send(404, `no probe at ${path}`);
    runAppProbe(prober, appHost, req.headers['user-agent']).then(
      (result) => send(result.status, result.detail),
      (err: unknown) => send(503, `probe failed: ${(err as Error).message}`),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) =>
      reject(
        new KmtlsError(
          'KMTLS_PROXY_LISTEN',
          `cannot listen for the status port: ${options.listen.host}:${options.listen.port} (${err.message})`,
          { cause: err },
        ),
      ),
    );
    server.listen(options.listen.port, options.listen.host, () => resolve(server));
  });
}

/** Runs one original probe against the application. Never rejects: a failed probe is a 503. */
export function runAppProbe(prober: AppProber, appHost: string, userAgent?: string): Promise<ProbeResult> {
  const timeoutMs = (prober.timeoutSeconds ?? DEFAULT_PROBE_TIMEOUT_SECONDS) * 1000;
  if ('httpGet' in prober) return probeHttp(prober.httpGet, appHost, timeoutMs, userAgent);
  if ('tcpSocket' in prober) return probeTcp(prober.tcpSocket.port, appHost, timeoutMs);
  return probeGrpc(prober.grpc.port, prober.grpc.service ?? '', appHost, timeoutMs);
}

function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

function probeHttp(
  get: Extract<AppProber, { httpGet: unknown }>['httpGet'],
  appHost: string,
  timeoutMs: number,
  userAgent: string | undefined,
): Promise<ProbeResult> {
  const headers: Record<string, string> = {
    // The kubelet's defaults; an app that tells probes apart by User-Agent still can.
    'user-agent': userAgent ?? 'kube-probe/kmtls',
    accept: '*/*',
    host: hostPort(appHost, get.port),
  };
  for (const h of get.httpHeaders ?? []) headers[h.name.toLowerCase()] = h.value;
  const lib = get.scheme === 'HTTPS' ? https : http;
  return new Promise((resolve) => {
    const req = lib.request({
      host: appHost,
      port: get.port,
      path: get.path,
      method: 'GET',
      headers,
      // The kubelet does not verify the application's certificate either.
      ...(get.scheme === 'HTTPS' ? { rejectUnauthorized: false } : {}),
      agent: false,
      timeout: timeoutMs,
      ...probeSource(appHost),
    });
    req.once('response', (res) => {
      res.resume();
      // The app's status is passed through: the kubelet counts 200–399 as success. Location is
      // not passed on, so the kubelet never follows a redirect to a path on the status port.
      const status = res.statusCode ?? 503;
      resolve({ status, detail: `${get.scheme} GET ${get.path} on port ${get.port}: ${status}` });
    });
    req.once('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
    req.once('error', (err) =>
      resolve({ status: 503, detail: `${get.scheme} GET ${get.path} on port ${get.port}: ${err.message}` }),
    );
    req.end();
  });
}

function probeTcp(port: number, appHost: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: appHost, port, timeout: timeoutMs, ...probeSource(appHost) });
    socket.once('connect', () => {
      socket.destroy();
      resolve({ status: 200, detail: `TCP port ${port}: connected` });
    });
    socket.once('timeout', () => socket.destroy(new Error(`timed out after ${timeoutMs} ms`)));
    socket.once('error', (err) => resolve({ status: 503, detail: `TCP port ${port}: ${err.message}` }));
  });
}

/** grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING */
const GRPC_SERVING = 1;

/** The 5-byte gRPC message prefix and a HealthCheckRequest `{ service }` (field 1, a string). */
export function encodeHealthCheckRequest(service: string): Buffer {
  const name = Buffer.from(service, 'utf8');
  const message =
    name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a]), varint(name.length), name]);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt8(0, 0);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

function varint(n: number): Buffer {
  const bytes: number[] = [];
  let v = n;
  while (v >= 0x80) {
    bytes.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  bytes.push(v);
  return Buffer.from(bytes);
}

/** The `status` (field 1, an enum) of a framed HealthCheckResponse; 0 (UNKNOWN) when absent. */
export function decodeHealthCheckStatus(framed: Buffer): number | undefined {
  if (framed.length < 5 || framed[0] !== 0) return undefined;
  const length = framed.readUInt32BE(1);
  const message = framed.subarray(5, 5 + length);
  if (message.length !== length) return undefined;
  let i = 0;
  let status = 0;
  const readVarint = (): number | undefined => {
    let result = 0;
    for (let shift = 0; shift < 35 && i < message.length; shift += 7) {
      const b = message[i++]!;
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
    }
    return undefined;
  };
  while (i < message.length) {
    const tag = readVarint();
    if (tag === undefined) return undefined;
    const wire = tag & 7;
    if (wire === 0) {
      const v = readVarint();
      if (v === undefined) return undefined;
      if (tag >>> 3 === 1) status = v;
    } else if (wire === 2) {
      const len = readVarint();
      if (len === undefined || i + len > message.length) return undefined;
      i += len;
    } else {
      // Fixed-width fields do not occur in HealthCheckResponse; skip them by size.
      const width = wire === 1 ? 8 : wire === 5 ? 4 : -1;
      if (width < 0 || i + width > message.length) return undefined;
      i += width;
    }
  }
  return status;
}

function probeGrpc(port: number, service: string, appHost: string, timeoutMs: number): Promise<ProbeResult> {
  const what = `gRPC health check${service ? ` of ${JSON.stringify(service)}` : ''} on port ${port}`;
  return new Promise((resolve) => {
    let settled = false;
    const source = probeSource(appHost);
    const session = http2.connect(
      `http://${hostPort(appHost, port)}`,
      source.localAddress ? { createConnection: () => net.connect({ host: appHost, port, ...source }) } : {},
    );
    const finish = (status: number, detail: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      resolve({ status, detail: `${what}: ${detail}` });
    };
    const timer = setTimeout(() => finish(503, `timed out after ${timeoutMs} ms`), timeoutMs);
    session.once('error', (err) => finish(503, err.message));
    const stream = session.request({
      ':method': 'POST',
      ':path': '/grpc.health.v1.Health/Check',
      'content-type': 'application/grpc',
      te: 'trailers',
      'grpc-timeout': `${timeoutMs}m`,
    });
    const chunks: Buffer[] = [];
    let grpcStatus: string | undefined;
    stream.on('response', (headers) => {
      // A trailers-only response carries grpc-status in the headers.
      if (headers['grpc-status'] !== undefined) grpcStatus = String(headers['grpc-status']);
    });
    stream.on('trailers', (trailers) => {
      if (trailers['grpc-status'] !== undefined) grpcStatus = String(trailers['grpc-status']);
    });
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('error', (err) => finish(503, err.message));
    stream.once('end', () => {
      if (grpcStatus !== '0') return finish(503, `grpc-status ${grpcStatus ?? 'missing'}`);
      const status = decodeHealthCheckStatus(Buffer.concat(chunks));
      if (status === undefined) return finish(503, 'malformed HealthCheckResponse');
      if (status !== GRPC_SERVING) return finish(503, `status ${status} (not SERVING)`);
      return finish(200, 'SERVING');
    });
    stream.end(encodeHealthCheckRequest(service));
  });
}
