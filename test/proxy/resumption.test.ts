/**
 * TLS session resumption between kmtls sidecars under a plug-in CA (root → intermediate → leaf):
 * a resumed session does not carry the client's intermediate, so the server side must verify it
 * with the chain the client showed in its full handshake.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import net, { type AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { parseSpiffeId } from '../../src/identity/index.js';
import { parseProxyConfig } from '../../src/mesh/index.js';
import {
  CertificateAuthority,
  caMaterialFromFiles,
  createCsr,
  createRoot,
  DAY_MS,
  toPem,
} from '../../src/pki/index.js';
import type { ConnectionRecord } from '../../src/proxy/index.js';
import { buildIdentity, Sidecar } from '../../src/proxy/index.js';
import { signIntermediate } from '../helpers/ca.js';

const NOW = Date.now();
const SERVER_ID = 'spiffe://cluster.local/ns/finance/sa/payments';
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/web';

function pluginCa(): CertificateAuthority {
  const root = createRoot({ trustDomain: 'cluster.local', now: NOW - DAY_MS, random: randomBytes });
  const { certificate: inter, key: interKey } = signIntermediate(root, {
    nowMs: NOW,
    commonName: 'intermediate',
  });
  const material = caMaterialFromFiles({
    trustDomain: 'cluster.local',
    caCertPem: toPem(inter),
    caKeyPem: interKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    rootCertPem: toPem(root.certificate),
    certChainPem: toPem(inter) + toPem(root.certificate),
  });
  return new CertificateAuthority(material, { clock: { now: () => NOW }, random: randomBytes });
}

function identityFor(ca: CertificateAuthority, uri: string) {
  const id = parseSpiffeId(uri);
  assert.ok(id.ok);
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const issued = ca.sign(createCsr(key), { identities: [id.id], method: 'test' });
  assert.equal(issued.chain.length, 3, 'leaf, intermediate, root');
  return buildIdentity({
    chainPem: issued.chainPem,
    keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    bundlePem: ca.trustBundlePem(),
  });
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

function closedRecords(): {
  observer: ConstructorParameters<typeof Sidecar>[1]['observer'];
  next: () => Promise<ConnectionRecord>;
} {
  const queue: ConnectionRecord[] = [];
  const waiting: ((r: ConnectionRecord) => void)[] = [];
  return {
    observer: {
      connectionOpened: () => {},
      connectionClosed: (r) => {
        const w = waiting.shift();
        if (w) w(r);
        else queue.push(r);
      },
      request: () => {},
    },
    next: () => {
      const r = queue.shift();
      return r ? Promise.resolve(r) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

async function echo(t: TestContext): Promise<string> {
  const server = net.createServer((s) => s.pipe(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function roundTrip(port: number, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => s.end(line));
    let data = '';
    s.on('data', (d: Buffer) => {
      data += d.toString();
    });
    s.on('close', () => resolve(data));
    s.on('error', reject);
  });
}

test('under a plug-in CA, resumed sessions between sidecars are verified with the full chain and accepted', async (t) => {
  const ca = pluginCa();
  const app = await echo(t);
  const [serverPort, clientPort] = [await freePort(), await freePort()];
  const server = closedRecords();
  const client = closedRecords();
  const config = (v: unknown) => {
    const r = parseProxyConfig(v);
    assert.ok(r.ok, r.ok ? '' : r.problems.join('; '));
    return r.config;
  };
  const serverSide = new Sidecar(
    config({
      workload: { namespace: 'finance', name: 'payments', identity: SERVER_ID },
      trustDomains: ['cluster.local'],
      inbound: [{ port: 8080, listen: `127.0.0.1:${serverPort}`, forward: app, mode: 'STRICT' }],
    }),
    { clock: { now: Date.now }, observer: server.observer, identity: identityFor(ca, SERVER_ID) },
  );
  const clientSide = new Sidecar(
    config({
      workload: { namespace: 'shop', name: 'web', identity: CLIENT_ID },
      trustDomains: ['cluster.local'],
      outbound: [
        {
          name: 'payments.finance.svc.cluster.local:8080',
          listen: `127.0.0.1:${clientPort}`,
          endpoints: [{ address: `127.0.0.1:${serverPort}`, tls: 'ISTIO_MUTUAL' }],
          expectedIdentities: [SERVER_ID],
        },
      ],
    }),
    { clock: { now: Date.now }, observer: client.observer, identity: identityFor(ca, CLIENT_ID) },
  );
  await serverSide.start();
  await clientSide.start();
  t.after(async () => {
    await clientSide.stop();
    await serverSide.stop();
  });
  for (let i = 0; i < 3; i++) {
    assert.equal(await roundTrip(clientPort, `n${i}`), `n${i}`);
    const inbound = await server.next();
    await client.next();
    assert.equal(inbound.outcome, 'accepted', JSON.stringify(inbound));
    assert.equal(inbound.sourcePrincipal, CLIENT_ID);
    assert.equal(inbound.resumed, i > 0, `connection ${i}`);
  }
});
