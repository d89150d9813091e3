// Shared helpers of the example apps (http-echo, tcp-echo, http-client): ports, addresses,
// service resolution, logging, outgoing calls and clean shutdown. Node.js built-ins only.
//
// The apps run the same way under `kmtls up` (the local mesh) and in a container of a real
// cluster; see examples/apps/README.md for the environment they read.
import http from 'node:http';
import net from 'node:net';
import { hostname } from 'node:os';

const env = process.env;

/** The pod's name: what every log line starts with. */
export const POD = env.POD_NAME || hostname();
/** The pod's namespace: a service name of one label is looked up in it. */
export const NAMESPACE = env.POD_NAMESPACE || 'default';
/** Every outgoing call and connection gives up after this long. */
export const TIMEOUT_MS = 2000;

/** One line per event, prefixed with the pod name. */
export function log(message) {
  process.stdout.write(`${POD} ${message}\n`);
}

/** The address to bind: HOST (127.0.0.1 behind a sidecar), else every interface, as in a container. */
export function bindHost() {
  return env.HOST || '0.0.0.0';
}

/**
 * The ports to listen on, as `{ containerPort, port }`: `containerPort` is the port the manifest
 * declares (what the app reports), `port` the one to actually bind.
 * - The local mesh sets PORT_<N>=<port> for every declared containerPort N: listen on all of them.
 * - Otherwise (a real cluster) the ports given as arguments, else PORT, else 8080.
 */
export function listenPorts(args = []) {
  const mapped = Object.entries(env)
    .filter(([k, v]) => /^PORT_\d+$/.test(k) && validPort(v))
    .map(([k, v]) => ({ containerPort: Number(k.slice(5)), port: Number(v) }))
    .sort((a, b) => a.containerPort - b.containerPort);
  if (mapped.length > 0) return mapped;
  const fromArgs = args.filter(validPort).map(Number);
  if (fromArgs.length > 0) return fromArgs.map((p) => ({ containerPort: p, port: p }));
  const port = validPort(env.PORT) ? Number(env.PORT) : 8080;
  return [{ containerPort: port, port }];
}

function validPort(v) {
  return /^\d+$/.test(String(v ?? '')) && Number(v) > 0 && Number(v) < 65536;
}

let services;
/** KMTLS_SERVICES, parsed once: `name.namespace:port` -> `host:port` to connect to. */
function serviceMap() {
  if (services !== undefined) return services;
  services = {};
  if (env.KMTLS_SERVICES) {
    try {
      const parsed = JSON.parse(env.KMTLS_SERVICES);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) services = parsed;
    } catch {
      log('warning: KMTLS_SERVICES is not a JSON object; using hosts as they are');
    }
  }
  return services;
}

/**
 * Where to connect for `host:port`. A service may be written `name`, `name.ns`, `name.ns.svc` or
 * `name.ns.svc.cluster.local` (one label means the pod's own namespace); the local mesh has no
 * cluster DNS, so it is looked up in KMTLS_SERVICES. Anything not found there (no map, another
 * host, a real cluster) is returned unchanged, for DNS to resolve.
 */
export function resolve(host, port) {
  const asGiven = { host, port: Number(port) };
  const labels = String(host).toLowerCase().replace(/\.$/, '').split('.');
  let key;
  if (labels.length === 1) key = `${labels[0]}.${NAMESPACE}`;
  else if (labels.length === 2) key = labels.join('.');
  else if (labels.length === 3 && labels[2] === 'svc') key = `${labels[0]}.${labels[1]}`;
  else if (labels.length === 5 && labels.slice(2).join('.') === 'svc.cluster.local')
    key = `${labels[0]}.${labels[1]}`;
  else return asGiven;
  const target = serviceMap()[`${key}:${Number(port)}`];
  if (typeof target !== 'string') return asGiven;
  const colon = target.lastIndexOf(':');
  if (colon <= 0 || !validPort(target.slice(colon + 1))) return asGiven;
  return { host: target.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: Number(target.slice(colon + 1)) };
}

/**
 * The caller's SPIFFE ID from an Envoy-style x-forwarded-client-cert header
 * (`By=...;Hash=...;Subject="";URI=spiffe://...`, elements separated by commas; the last one is
 * the hop that reached us), or null when there is none: the caller came in plaintext.
 */
export function callerFromXfcc(header) {
  if (typeof header !== 'string' || header.trim() === '') return null;
  const elements = splitOutsideQuotes(header, ',');
  const last = elements[elements.length - 1] ?? '';
  for (const pair of splitOutsideQuotes(last, ';')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    if (pair.slice(0, eq).trim().toLowerCase() !== 'uri') continue;
    const value = pair.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
    return value === '' ? null : value;
  }
  return null;
}

function splitOutsideQuotes(text, sep) {
  const parts = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\' && quoted && i + 1 < text.length) {
      current += c + text[++i];
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === sep && !quoted) {
      parts.push(current);
      current = '';
    } else {
      current += c;
    }
  }
  parts.push(current);
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

/** What a failed connection means, in a few words. */
function describeError(err) {
  const code = err?.code ?? '';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'refused (connection reset)';
  if (code === 'ECONNREFUSED') return 'unreachable (nothing listens there)';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'unknown host (not a service of the mesh, no DNS entry)';
  if (code === 'ETIMEDOUT' || err?.message === 'timeout') return `timeout (no answer in ${TIMEOUT_MS / 1000} s)`;
  return `failed (${err?.message || code || 'unknown error'})`;
}

/** One HTTP GET; resolves `{ ok, text }` and never rejects. */
function callHttp(url) {
  return new Promise((done) => {
    const port = url.port ? Number(url.port) : 80;
    const target = resolve(url.hostname, port);
    let finished = false;
    const finish = (ok, text) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      done({ ok, text });
    };
    const req = http.request(
      {
        host: target.host,
        port: target.port,
        method: 'GET',
        path: `${url.pathname}${url.search}`,
        // The Host a real cluster would send; the local address is only where to connect.
        headers: { host: url.host, 'user-agent': `kmtls-example/${POD}` },
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => {
          if (body.length < 64 * 1024) body += chunk;
        });
        res.on('error', (err) => finish(false, describeError(err)));
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          const reason = res.headers['x-kmtls-reason'];
          if (reason) return finish(false, `${status} refused by the sidecar (${reason})`);
          let detail = '';
          try {
            const json = JSON.parse(body);
            if (json && typeof json === 'object' && 'caller' in json) {
              detail = `${json.pod ? ` from ${json.pod}` : ''} caller=${json.caller ?? 'null'}`;
            }
          } catch {
            // not an echo server: the status says enough
          }
          finish(status >= 200 && status < 300, `${status}${detail}`);
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' }));
    }, TIMEOUT_MS);
    req.on('error', (err) => finish(false, describeError(err)));
    req.end();
  });
}

/** Connects, sends `ping\n` and expects it back; resolves `{ ok, text }` and never rejects. */
function callTcp(url) {
  return new Promise((done) => {
    if (!url.port) return done({ ok: false, text: 'failed (tcp:// needs a port)' });
    const target = resolve(url.hostname, Number(url.port));
    const expected = 'ping\n';
    let received = '';
    let finished = false;
    const socket = net.connect({ host: target.host, port: target.port });
    const finish = (ok, text) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.destroy();
      done({ ok, text });
    };
    const timer = setTimeout(
      () => finish(false, describeError(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' }))),
      TIMEOUT_MS,
    );
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(expected));
    socket.on('data', (chunk) => {
      received += chunk;
      if (received === expected) finish(true, 'echoed');
      else if (!expected.startsWith(received)) finish(false, `unexpected reply ${JSON.stringify(received.slice(0, 40))}`);
    });
    socket.on('end', () =>
      finish(false, received === '' ? 'refused (connection closed)' : 'closed before the whole echo'),
    );
    socket.on('error', (err) => finish(false, describeError(err)));
  });
}

/** Calls one `http://host:port/path` or `tcp://host:port` URL and logs the result. */
export async function call(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    log(`-> ${raw}: failed (not a URL)`);
    return false;
  }
  let result;
  if (url.protocol === 'http:') result = await callHttp(url);
  else if (url.protocol === 'tcp:') result = await callTcp(url);
  else result = { ok: false, text: `failed (${url.protocol} is not supported: use http:// or tcp://)` };
  log(`-> ${raw}: ${result.text}`);
  return result.ok;
}

/** The comma- or space-separated URLs of a string (CALL) or an array (arguments). */
export function urlList(value) {
  const items = Array.isArray(value) ? value : [value ?? ''];
  return items.flatMap((v) => String(v).split(/[,\s]+/)).filter((u) => u !== '');
}

/** INTERVAL_MS, default 5000. */
export function intervalMs() {
  const n = Number(env.INTERVAL_MS);
  return Number.isFinite(n) && n >= 100 ? n : 5000;
}

/**
 * Calls every URL, one round every `interval` ms (a round waits for the previous one), the first
 * after `firstDelay` ms. Returns a function that stops it.
 */
export function callPeriodically(urls, interval = intervalMs(), firstDelay = Math.min(interval, 1000)) {
  let stopped = false;
  let timer;
  const round = async () => {
    for (const u of urls) {
      if (stopped) return;
      await call(u);
    }
    if (!stopped) timer = setTimeout(round, interval);
  };
  timer = setTimeout(round, firstDelay);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * Runs `stop` (which may return a promise) on SIGTERM or SIGINT, then exits with 0. A second signal,
 * or a stop that takes more than 3 s, exits at once.
 */
export function onShutdown(stop) {
  let stopping = false;
  const handler = (signal) => {
    if (stopping) process.exit(0);
    stopping = true;
    log(`stopping (${signal})`);
    setTimeout(() => process.exit(0), 3000).unref();
    Promise.resolve()
      .then(stop)
      .catch((err) => log(`error while stopping: ${err?.message ?? err}`))
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

/** Listens with `server` on `port` of the bind address; logs and exits 1 if it cannot. */
export function listen(server, { containerPort, port }, what) {
  const host = bindHost();
  server.on('error', (err) => {
    log(`cannot listen on ${host}:${port} (containerPort ${containerPort}): ${err.message}`);
    process.exit(1);
  });
  server.listen(port, host, () => {
    log(`${what} listening on ${host}:${port} (containerPort ${containerPort})`);
  });
}
