/**
 * The sidecar in transparent mode, without iptables: the original-destination lookup is replaced by
 * a table keyed by the client's source address (each client binds its own 127.0.0.x), so the
 * dispatch by original destination is tested on plain loopback sockets. The real SO_ORIGINAL_DST path
 * runs in test/kube/interception.test.ts.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import tls from 'node:tls';
import { parseProxyConfig } from '../../src/mesh/index.js';
import type { ConnectionRecord } from '../../src/proxy/index.js';
import { Sidecar } from '../../src/proxy/index.js';
import type { OriginalDestination } from '../../src/proxy/original-dst.js';
import type { Exchange, Material } from '../helpers/proxy-harness.js';
import {
  freePort,
  proxyConfig,
  recordingObserver,
  startEchoApp,
  startTlsApp,
  testCa,
  within,
} from '../helpers/proxy-harness.js';

const APP_ID = 'spiffe://cluster.local/ns/default/sa/app';
const CLIENT_ID = 'spiffe://cluster.local/ns/peer/sa/client';
const SERVER_ID = 'spiffe://cluster.local/ns/peer/sa/server';
const LOOPBACK_POD_IP = '127.0.0.1';
const ca = testCa();

/** Sends one line from `from` (a 127.0.0.x source address), over mTLS with `material` if given. */
function send(port: number, from: string, line: string, material?: Material): Promise<Exchange> {
  const s = material
    ? tls.connect({
        // Bound first: the source address is what the fake original-destination table is keyed by.
        socket: net.connect({ host: '127.0.0.1', port, localAddress: from }),
        cert: material.chainPem,
        key: material.keyPem,
        ALPNProtocols: ['istio-peer-exchange', 'istio'],
        rejectUnauthorized: false,
      })
    : net.connect({ host: '127.0.0.1', port, localAddress: from });
  const result = new Promise<Exchange>((resolve) => {
    let data = '';
    s.once(material ? 'secureConnect' : 'connect', () => s.write(`${line}\n`));
    s.on('data', (d: Buffer) => {
      data += d.toString('latin1');
      const i = data.indexOf('\n');
      if (i >= 0) {
        resolve({ answer: data.slice(0, i), closedByPeer: false });
        s.destroy();
      }
    });
    s.on('error', () => {});
    s.on('close', () => resolve({ answer: undefined, closedByPeer: true }));
  });
  return within(result, `an answer or a close on ${port} from ${from}`);
}

interface Transparent {
  readonly proxy: Sidecar;
  readonly inboundPort: number;
  readonly outboundPort: number;
  /** Where connections from each source address "were going" before the redirect. */
  readonly redirected: Map<string, OriginalDestination>;
  readonly observer: ReturnType<typeof recordingObserver>;
  nextClosed(match: (c: ConnectionRecord) => boolean): Promise<ConnectionRecord>;
}

async function startTransparent(t: TestContext, extra: Record<string, unknown>): Promise<Transparent> {
  const [inboundPort, outboundPort] = [await freePort(), await freePort()];
  const redirected = new Map<string, OriginalDestination>();
  const observer = recordingObserver();
  const proxy = new Sidecar(
    proxyConfig({
      workload: { namespace: 'default', name: 'app', identity: APP_ID },
      trustDomains: ['cluster.local'],
      interception: { inbound: `127.0.0.1:${inboundPort}`, outbound: `127.0.0.1:${outboundPort}` },
      ...extra,
    }),
    {
      clock: { now: Date.now },
      observer,
      identity: ca.identity(APP_ID),
      // As the kernel does with conntrack loaded: a connection no rule redirected has its own
      // local address as its original destination (not "none").
      originalDst: (socket) =>
        redirected.get(socket.remoteAddress ?? '') ?? {
          address: socket.localAddress ?? '',
          port: socket.localPort ?? 0,
        },
    },
  );
  await proxy.start();
  t.after(() => proxy.stop());
  return {
    proxy,
    inboundPort,
    outboundPort,
    redirected,
    observer,
    nextClosed: async (match) => {
      for (;;) {
        const c = await observer.nextClosed();
        if (match(c)) return c;
      }
    },
  };
}

test('inbound: one listener dispatches by original port; declared ports keep their mode, others get the default', async (t) => {
  const strictApp = await startEchoApp(t, 'strict');
  const undeclared = await startEchoApp(t, 'undeclared');
  const s = await startTransparent(t, {
    inbound: [{ port: 8080, forward: strictApp.address, mode: 'STRICT', policy: 'default/strict' }],
  });
  // The "pod IP" here is 127.0.0.1, where the test applications listen.
  s.redirected.set('127.0.0.11', { address: LOOPBACK_POD_IP, port: 8080 });
  s.redirected.set('127.0.0.12', { address: LOOPBACK_POD_IP, port: 8080 });
  s.redirected.set('127.0.0.13', { address: LOOPBACK_POD_IP, port: undeclared.port });

  assert.deepEqual(await send(s.inboundPort, '127.0.0.11', 'plain'), {
    answer: undefined,
    closedByPeer: true,
  });
  const refused = await s.nextClosed((c) => c.port === 8080);
  assert.equal(refused.reason, 'PLAINTEXT_REJECTED');
  assert.equal(refused.policy, 'default/strict');

  const mtls = await send(s.inboundPort, '127.0.0.12', 'mesh', ca.issue(CLIENT_ID));
  assert.equal(mtls.answer, 'strict:mesh');
  const accepted = await s.nextClosed((c) => c.port === 8080);
  assert.equal(accepted.sourcePrincipal, CLIENT_ID);

  // Not declared: PERMISSIVE (no interception.defaultMode), to 127.0.0.1:<the original port>.
  assert.equal((await send(s.inboundPort, '127.0.0.13', 'hello')).answer, 'undeclared:hello');
  const passed = await s.nextClosed((c) => c.port === undeclared.port);
  assert.equal(passed.mode, 'PERMISSIVE');
  assert.equal(passed.policy, 'default');
  assert.equal(passed.destinationAddress, `127.0.0.1:${undeclared.port}`);
  assert.equal(passed.transport, 'plaintext');
});

test('inbound: the workload default mode applies to undeclared ports, and a new one to new connections', async (t) => {
  const app = await startEchoApp(t, 'app');
  const base = {
    workload: { namespace: 'default', name: 'app', identity: APP_ID },
    trustDomains: ['cluster.local'],
  };
  const s = await startTransparent(t, {});
  const interception = s.proxy.config.interception!;
  await s.proxy.applyConfig(
    proxyConfig({
      ...base,
      interception: { ...interception, defaultMode: 'STRICT', defaultPolicy: 'default/mesh' },
    }),
  );
  s.redirected.set('127.0.0.21', { address: LOOPBACK_POD_IP, port: app.port });
  s.redirected.set('127.0.0.22', { address: LOOPBACK_POD_IP, port: app.port });
  assert.deepEqual(await send(s.inboundPort, '127.0.0.21', 'plain'), {
    answer: undefined,
    closedByPeer: true,
  });
  const refused = await s.nextClosed((c) => c.port === app.port);
  assert.equal(refused.reason, 'PLAINTEXT_REJECTED');
  assert.equal(refused.policy, 'default/mesh');
  assert.equal((await send(s.inboundPort, '127.0.0.22', 'mesh', ca.issue(CLIENT_ID))).answer, 'app:mesh');
});

test('a connection that was not redirected (its original destination is the listener itself) is refused, both ways, without a loop', async (t) => {
  const s = await startTransparent(t, {});
  assert.deepEqual(await send(s.inboundPort, '127.0.0.31', 'x'), { answer: undefined, closedByPeer: true });
  const inbound = await s.nextClosed((c) => c.direction === 'inbound');
  assert.equal(inbound.reason, 'NO_ORIGINAL_DST');
  assert.match(inbound.message ?? '', /interception listener itself: it was dialled directly/);
  assert.deepEqual(await send(s.outboundPort, '127.0.0.31', 'x'), { answer: undefined, closedByPeer: true });
  const outbound = await s.nextClosed((c) => c.direction === 'outbound');
  assert.equal(outbound.reason, 'NO_ORIGINAL_DST');
  assert.match(outbound.message ?? '', /interception listener itself/);
  // One record each: nothing was dialled back into the sidecar.
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(s.observer.closed.length, 2);
  assert.equal(s.proxy.runtime.connectionCount(), 0);
});

test('an original destination on one of the proxy’s own ports is refused: inbound always, outbound on a local address', async (t) => {
  const s = await startTransparent(t, { admin: '127.0.0.1:15000' });
  // Inbound to the admin port, and outbound to the other interception listener on this pod.
  s.redirected.set('127.0.0.32', { address: LOOPBACK_POD_IP, port: 15000 });
  s.redirected.set('127.0.0.33', { address: LOOPBACK_POD_IP, port: s.inboundPort });
  s.redirected.set('127.0.0.34', { address: '::ffff:127.0.0.1', port: s.outboundPort });
  assert.deepEqual(await send(s.inboundPort, '127.0.0.32', 'x'), { answer: undefined, closedByPeer: true });
  const admin = await s.nextClosed((c) => c.direction === 'inbound');
  assert.equal(admin.reason, 'NO_ORIGINAL_DST');
  assert.match(admin.message ?? '', /one of the proxy's own ports/);
  for (const from of ['127.0.0.33', '127.0.0.34']) {
    assert.deepEqual(await send(s.outboundPort, from, 'x'), { answer: undefined, closedByPeer: true });
    const c = await s.nextClosed((r) => r.direction === 'outbound');
    assert.equal(c.reason, 'NO_ORIGINAL_DST');
    assert.match(c.message ?? '', /proxy's own ports|listener itself/);
  }
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(s.observer.closed.length, 3, 'no connection looped back into the sidecar');
});

/** A plain server on `host` that answers each line with the caller's address. */
async function startWhoAmI(t: TestContext, host: string): Promise<number> {
  const server = net.createServer((c) => {
    c.on('error', () => {});
    c.once('data', () => c.end(`from=${c.remoteAddress}\n`));
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as net.AddressInfo).port;
}

test('inbound goes to the original destination address (the pod IP) from 127.0.0.6, never to 127.0.0.1', async (t) => {
  // 127.0.0.7 stands for the pod IP: nothing listens on 127.0.0.1 at these ports.
  const declared = await startWhoAmI(t, '127.0.0.7');
  const undeclared = await startWhoAmI(t, '127.0.0.7');
  const s = await startTransparent(t, {
    inbound: [{ port: declared, forward: `127.0.0.1:${declared}`, mode: 'PERMISSIVE', policy: 'default/p' }],
  });
  s.redirected.set('127.0.0.61', { address: '127.0.0.7', port: declared });
  s.redirected.set('127.0.0.62', { address: '127.0.0.7', port: undeclared });
  assert.equal((await send(s.inboundPort, '127.0.0.61', 'a')).answer, 'from=127.0.0.6');
  const a = await s.nextClosed((c) => c.port === declared);
  assert.equal(a.destinationAddress, `127.0.0.7:${declared}`);
  assert.equal((await send(s.inboundPort, '127.0.0.62', 'b')).answer, 'from=127.0.0.6');
  const b = await s.nextClosed((c) => c.port === undeclared);
  assert.equal(b.destinationAddress, `127.0.0.7:${undeclared}`);
});

test('undeclared ports: portLevelMtls (interception.portModes) wins over the workload mode', async (t) => {
  const open = await startEchoApp(t, 'open');
  const s = await startTransparent(t, {});
  const interception = s.proxy.config.interception!;
  await s.proxy.applyConfig(
    proxyConfig({
      workload: { namespace: 'default', name: 'app', identity: APP_ID },
      trustDomains: ['cluster.local'],
      interception: {
        ...interception,
        defaultMode: 'PERMISSIVE',
        defaultPolicy: 'default/app',
        portModes: { '9000': { mode: 'STRICT', policy: 'default/app' } },
      },
    }),
  );
  s.redirected.set('127.0.0.71', { address: LOOPBACK_POD_IP, port: 9000 });
  s.redirected.set('127.0.0.72', { address: LOOPBACK_POD_IP, port: open.port });
  assert.deepEqual(await send(s.inboundPort, '127.0.0.71', 'plain'), {
    answer: undefined,
    closedByPeer: true,
  });
  const refused = await s.nextClosed((c) => c.port === 9000);
  assert.equal(refused.reason, 'PLAINTEXT_REJECTED');
  assert.equal(refused.mode, 'STRICT');
  assert.equal(refused.policy, 'default/app');
  assert.equal((await send(s.inboundPort, '127.0.0.72', 'hi')).answer, 'open:hi');
  const passed = await s.nextClosed((c) => c.port === open.port);
  assert.equal(passed.mode, 'PERMISSIVE');
});

test('outbound: a matched original destination is that service (mTLS, secure naming); others pass through', async (t) => {
  const server = await startTlsApp(t, 'server', ca.issue(SERVER_ID));
  const elsewhere = await startEchoApp(t, 'elsewhere');
  const s = await startTransparent(t, {
    outbound: [
      {
        name: 'server.peer.svc.cluster.local:80',
        match: ['10.96.0.10:80'],
        endpoints: [{ address: server.address, tls: 'ISTIO_MUTUAL' }],
        expectedIdentities: [SERVER_ID],
      },
    ],
  });
  s.redirected.set('127.0.0.41', { address: '10.96.0.10', port: 80 });
  s.redirected.set('127.0.0.42', { address: '127.0.0.1', port: elsewhere.port });

  assert.equal((await send(s.outboundPort, '127.0.0.41', 'hi')).answer, 'server:hi');
  assert.deepEqual((await server.seen.next('the mTLS handshake')).clientUris, [APP_ID]);
  const mesh = await s.nextClosed((c) => c.service === 'server.peer.svc.cluster.local:80');
  assert.equal(mesh.transport, 'mtls');
  assert.equal(mesh.destinationPrincipal, SERVER_ID);

  assert.equal((await send(s.outboundPort, '127.0.0.42', 'raw')).answer, 'elsewhere:raw');
  const passed = await s.nextClosed((c) => c.service === 'PassthroughCluster');
  assert.equal(passed.destinationAddress, `127.0.0.1:${elsewhere.port}`);
  assert.equal(passed.outcome, 'accepted');
  assert.match(passed.message ?? '', /no outbound entry matches/);
});

test('outbound: a passthrough destination that refuses is UPSTREAM_UNREACHABLE', async (t) => {
  const s = await startTransparent(t, {});
  s.redirected.set('127.0.0.51', { address: '127.0.0.1', port: await freePort() });
  assert.deepEqual(await send(s.outboundPort, '127.0.0.51', 'x'), { answer: undefined, closedByPeer: true });
  const c = await s.nextClosed((r) => r.service === 'PassthroughCluster');
  assert.equal(c.reason, 'UPSTREAM_UNREACHABLE');
});

test('config: listen is needed without interception; outbound needs listen or match; matches and ports unique', () => {
  const base = {
    workload: { namespace: 'default', name: 'app', identity: APP_ID },
    trustDomains: ['cluster.local'],
  };
  const ep = [{ address: '10.0.0.3:80', tls: 'ISTIO_MUTUAL' }];
  const r = parseProxyConfig({
    ...base,
    inbound: [{ port: 8080, forward: '127.0.0.1:8080', mode: 'STRICT' }],
    outbound: [{ name: 'a:80', endpoints: ep }],
  });
  assert.deepEqual(r.ok ? [] : r.problems, [
    'inbound[0].listen: required without interception',
    'outbound[0]: needs listen, match, or both',
  ]);
  const t = parseProxyConfig({
    ...base,
    interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' },
    inbound: [
      { port: 8080, forward: '127.0.0.1:8080', mode: 'STRICT' },
      { port: 8080, forward: '127.0.0.1:8081', mode: 'PERMISSIVE' },
    ],
    outbound: [
      { name: 'a:80', match: ['10.96.0.1:80'], endpoints: ep },
      { name: 'b:80', match: ['10.96.0.1:80', 'nope'], endpoints: ep },
    ],
  });
  assert.deepEqual(t.ok ? [] : t.problems, [
    'outbound.1.match.1: an original destination is IP:PORT, e.g. 10.96.0.10:80',
  ]);
  const u = parseProxyConfig({
    ...base,
    interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' },
    inbound: [
      { port: 8080, forward: '127.0.0.1:8080', mode: 'STRICT' },
      { port: 8080, forward: '127.0.0.1:8081', mode: 'PERMISSIVE' },
    ],
    outbound: [
      { name: 'a:80', match: ['10.96.0.1:80'], endpoints: ep },
      { name: 'b:80', match: ['10.96.0.1:80'], endpoints: ep },
    ],
  });
  assert.deepEqual(u.ok ? [] : u.problems, [
    'inbound[1].port: port 8080 is already declared by inbound[0]',
    'outbound[1].match: 10.96.0.1:80 already matches outbound[0]',
  ]);
  const ok = parseProxyConfig({
    ...base,
    interception: { inbound: '0.0.0.0:15006', outbound: '0.0.0.0:15001' },
    inbound: [{ port: 8080, forward: '127.0.0.1:8080', mode: 'STRICT' }],
  });
  assert.ok(ok.ok);
  assert.deepEqual(ok.config.interception, {
    inbound: '0.0.0.0:15006',
    outbound: '0.0.0.0:15001',
    defaultMode: 'PERMISSIVE',
    defaultPolicy: 'default',
  });
});
