import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import type { AppProbers } from '../../src/proxy/status-port.js';
import {
  decodeHealthCheckStatus,
  defaultAppHost,
  encodeHealthCheckRequest,
  parseAppProbers,
  startStatusServer,
} from '../../src/proxy/status-port.js';

function portOf(server: net.Server | http2.Http2Server): number {
  return (server.address() as net.AddressInfo).port;
}

async function listen<T extends net.Server | http2.Http2Server>(t: TestContext, server: T): Promise<T> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    (server as net.Server & { closeAllConnections?: () => void }).closeAllConnections?.();
    server.close();
  });
  return server;
}

async function statusServer(t: TestContext, probers: AppProbers, ready: () => boolean = () => true) {
  const server = await startStatusServer({ listen: { host: '127.0.0.1', port: 0 }, probers, ready });
  t.after(() => server.close());
  return portOf(server);
}

async function get(port: number, urlPath: string, headers: Record<string, string> = {}) {
  const res = await fetch(`http://127.0.0.1:${port}${urlPath}`, { headers, redirect: 'manual' });
  return { status: res.status, body: await res.text(), location: res.headers.get('location') };
}

/** A port nothing listens on: bound, then closed. */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = portOf(s);
  s.close();
  await once(s, 'close');
  return port;
}

/** A gRPC health service on node:http2 (h2c), as grpc-go's health server answers. */
function startGrpcHealth(t: TestContext, statuses: Record<string, number>) {
  const seen: string[] = [];
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    if (
      headers[':path'] !== '/grpc.health.v1.Health/Check' ||
      headers['content-type'] !== 'application/grpc'
    ) {
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' },
        { endStream: true },
      );
      return;
    }
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      const framed = Buffer.concat(chunks);
      const message = framed.subarray(5, 5 + framed.readUInt32BE(1));
      // HealthCheckRequest: field 1 (tag 0x0a), a short string.
      const service = message.length === 0 ? '' : message.subarray(2, 2 + message[1]!).toString('utf8');
      seen.push(service);
      const status = statuses[service];
      if (status === undefined) {
        // Trailers-only response: NOT_FOUND, as the reference server answers an unknown service.
        stream.respond(
          {
            ':status': 200,
            'content-type': 'application/grpc',
            'grpc-status': '5',
            'grpc-message': 'unknown service',
          },
          { endStream: true },
        );
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      const body = Buffer.from([0x08, status]);
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(body.length, 1);
      stream.end(Buffer.concat([prefix, body]));
    });
  });
  return listen(t, server).then((s) => ({ port: portOf(s), seen }));
}

function selfSignedCert(): { key: string; cert: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'kmtls-status-'));
  try {
    const r = spawnSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        path.join(dir, 'key.pem'),
        '-out',
        path.join(dir, 'cert.pem'),
        '-days',
        '1',
        '-subj',
        '/CN=app.local',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    return {
      key: readFileSync(path.join(dir, 'key.pem'), 'utf8'),
      cert: readFileSync(path.join(dir, 'cert.pem'), 'utf8'),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('/healthz/ready follows the sidecar; unknown paths are 404', async (t) => {
  let ready = false;
  const port = await statusServer(t, {}, () => ready);
  assert.equal((await get(port, '/healthz/ready')).status, 503);
  ready = true;
  assert.equal((await get(port, '/healthz/ready')).status, 200);
  assert.equal((await get(port, '/app-health/web/livez')).status, 404);
  assert.equal((await get(port, '/nope')).status, 404);
  const post = await fetch(`http://127.0.0.1:${port}/healthz/ready`, { method: 'POST' });
  await post.text();
  assert.equal(post.status, 405);
});

test('HTTP probes: the application status passes through, with path, query and headers', async (t) => {
  const requests: { url: string | undefined; headers: http.IncomingHttpHeaders }[] = [];
  const app = await listen(
    t,
    http.createServer((req, res) => {
      requests.push({ url: req.url, headers: req.headers });
      if (req.url === '/ok?full=1') return res.writeHead(200).end('ok');
      if (req.url === '/moved') return res.writeHead(302, { location: '/elsewhere' }).end();
      if (req.url === '/hang') return; // never answers
      return res.writeHead(500).end('broken');
    }),
  );
  const appPort = portOf(app);
  const port = await statusServer(t, {
    '/app-health/web/livez': {
      httpGet: {
        port: appPort,
        path: '/ok?full=1',
        scheme: 'HTTP',
        httpHeaders: [{ name: 'X-Probe', value: 'yes' }],
      },
    },
    '/app-health/web/readyz': { httpGet: { port: appPort, path: '/fail', scheme: 'HTTP' } },
    '/app-health/web/startupz': { httpGet: { port: appPort, path: '/moved', scheme: 'HTTP' } },
    '/app-health/slow/livez': {
      httpGet: { port: appPort, path: '/hang', scheme: 'HTTP' },
      timeoutSeconds: 1,
    },
    '/app-health/down/livez': { httpGet: { port: await closedPort(), path: '/', scheme: 'HTTP' } },
  });

  assert.equal((await get(port, '/app-health/web/livez', { 'user-agent': 'kube-probe/1.30' })).status, 200);
  assert.equal(requests[0]?.url, '/ok?full=1');
  assert.equal(requests[0]?.headers['x-probe'], 'yes');
  assert.equal(requests[0]?.headers['user-agent'], 'kube-probe/1.30');
  assert.equal((await get(port, '/app-health/web/readyz')).status, 500);
  const moved = await get(port, '/app-health/web/startupz');
  assert.equal(moved.status, 302, 'the kubelet counts 3xx as success');
  assert.equal(moved.location, null, 'the redirect target is not handed to the kubelet');
  assert.equal((await get(port, '/app-health/slow/livez')).status, 503);
  assert.equal((await get(port, '/app-health/down/livez')).status, 503);
});

test('HTTPS probes do not verify the application certificate, as the kubelet does not', async (t) => {
  const { key, cert } = selfSignedCert();
  const app = await listen(
    t,
    https.createServer({ key, cert }, (req, res) => res.writeHead(req.url === '/secure' ? 204 : 503).end()),
  );
  const port = await statusServer(t, {
    '/app-health/web/readyz': { httpGet: { port: portOf(app), path: '/secure', scheme: 'HTTPS' } },
    '/app-health/web/livez': { httpGet: { port: portOf(app), path: '/secure', scheme: 'HTTP' } },
  });
  assert.equal((await get(port, '/app-health/web/readyz')).status, 204);
  // Plain HTTP to a TLS port gets no HTTP answer.
  assert.equal((await get(port, '/app-health/web/livez')).status, 503);
});

test('TCP probes: connected is 200, refused is 503', async (t) => {
  const app = await listen(
    t,
    net.createServer((s) => s.end()),
  );
  const port = await statusServer(t, {
    '/app-health/db/livez': { tcpSocket: { port: portOf(app) } },
    '/app-health/db/readyz': { tcpSocket: { port: await closedPort() } },
  });
  assert.equal((await get(port, '/app-health/db/livez')).status, 200);
  assert.equal((await get(port, '/app-health/db/readyz')).status, 503);
});

test('gRPC probes run grpc.health.v1.Health/Check: SERVING is 200, anything else 503', async (t) => {
  const grpc = await startGrpcHealth(t, { '': 1, payments: 1, batch: 2 });
  const port = await statusServer(t, {
    '/app-health/rpc/livez': { grpc: { port: grpc.port } },
    '/app-health/rpc/readyz': { grpc: { port: grpc.port, service: 'payments' } },
    '/app-health/rpc/startupz': { grpc: { port: grpc.port, service: 'batch' } },
    '/app-health/other/livez': { grpc: { port: grpc.port, service: 'unknown' } },
    '/app-health/down/livez': { grpc: { port: await closedPort() } },
  });
  assert.equal((await get(port, '/app-health/rpc/livez')).status, 200);
  assert.equal((await get(port, '/app-health/rpc/readyz')).status, 200);
  const notServing = await get(port, '/app-health/rpc/startupz');
  assert.equal(notServing.status, 503);
  assert.match(notServing.body, /status 2/);
  const unknown = await get(port, '/app-health/other/livez');
  assert.equal(unknown.status, 503);
  assert.match(unknown.body, /grpc-status 5/);
  assert.equal((await get(port, '/app-health/down/livez')).status, 503);
  assert.deepEqual(grpc.seen, ['', 'payments', 'batch', 'unknown']);
});

test('health check framing', () => {
  assert.deepEqual(encodeHealthCheckRequest(''), Buffer.from([0, 0, 0, 0, 0]));
  assert.deepEqual(encodeHealthCheckRequest('ab'), Buffer.from([0, 0, 0, 0, 4, 0x0a, 2, 0x61, 0x62]));
  assert.equal(decodeHealthCheckStatus(Buffer.from([0, 0, 0, 0, 2, 0x08, 1])), 1);
  assert.equal(decodeHealthCheckStatus(Buffer.from([0, 0, 0, 0, 0])), 0, 'an empty message is UNKNOWN');
  assert.equal(
    decodeHealthCheckStatus(Buffer.from([0, 0, 0, 0, 5, 0x12, 1, 0x41, 0x08, 1])),
    1,
    'unknown fields skipped',
  );
  assert.equal(decodeHealthCheckStatus(Buffer.from([0, 0, 0, 0, 9, 0x08])), undefined, 'truncated');
  assert.equal(
    decodeHealthCheckStatus(Buffer.from([1, 0, 0, 0, 0])),
    undefined,
    'compressed is not supported',
  );
});

test('KMTLS_APP_PROBERS: parsed strictly', () => {
  assert.deepEqual(parseAppProbers(undefined), {});
  assert.deepEqual(parseAppProbers(''), {});
  const good =
    '{"/app-health/web/livez":{"httpGet":{"port":8080,"path":"/","scheme":"HTTP"},"timeoutSeconds":3}}';
  assert.deepEqual(parseAppProbers(good), {
    '/app-health/web/livez': { httpGet: { port: 8080, path: '/', scheme: 'HTTP' }, timeoutSeconds: 3 },
  });
  for (const bad of [
    '{',
    '[]',
    '{"/other":{"tcpSocket":{"port":1}}}',
    '{"/app-health/a/livez":{"tcpSocket":{"port":"http"}}}',
    '{"/app-health/a/livez":{"exec":{"command":["true"]}}}',
    '{"/app-health/a/livez":{"httpGet":{"port":80,"path":"/","scheme":"http"}}}',
  ]) {
    assert.throws(
      () => parseAppProbers(bad),
      (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_PROXY_CONFIG_INVALID',
      bad,
    );
  }
});

test('probes go to the pod IP (POD_IP), as the kubelet’s would; 127.0.0.1 outside a pod', () => {
  assert.equal(defaultAppHost({ POD_IP: '10.1.0.5' }), '10.1.0.5');
  assert.equal(defaultAppHost({ POD_IP: 'fd00::5' }), 'fd00::5');
  assert.equal(defaultAppHost({}), '127.0.0.1');
  assert.equal(defaultAppHost({ POD_IP: 'not-an-ip' }), '127.0.0.1');
});

test('a probe of the pod IP leaves from 127.0.0.6, which interception never redirects', async (t) => {
  const podIp = Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
  if (!podIp || process.platform !== 'linux') {
    // Binding 127.0.0.6 and reaching the pod IP from it needs Linux and a real interface address;
    // CI (and this project's machines) have both, so it runs there.
    t.skip('needs Linux and a non-loopback IPv4 address');
    return;
  }
  const app = http.createServer((req, res) => res.end(String(req.socket.remoteAddress)));
  app.listen(0, podIp);
  await once(app, 'listening');
  t.after(() => app.close());
  const server = await startStatusServer({
    listen: { host: '127.0.0.1', port: 0 },
    probers: {
      '/app-health/web/readyz': { httpGet: { path: '/', port: portOf(app), scheme: 'HTTP' } },
      '/app-health/web/livez': { tcpSocket: { port: portOf(app) } },
    },
    ready: () => true,
    appHost: podIp,
  });
  t.after(() => server.close());
  const seen: string[] = [];
  app.on('connection', (s: net.Socket) => seen.push(String(s.remoteAddress)));
  assert.equal((await get(portOf(server), '/app-health/web/readyz')).status, 200);
  assert.equal((await get(portOf(server), '/app-health/web/livez')).status, 200);
  assert.deepEqual([...new Set(seen)], ['127.0.0.6']);
});
