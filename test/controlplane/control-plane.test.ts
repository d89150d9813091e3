/**
 * The control plane: manifests from a real directory, a placement the test moves by hand, a real
 * CA. Signing issues for the authenticated caller whatever the CSR asks; a change pushes only to the
 * pods whose config changed; acknowledgements close the change's latency. Then over real mTLS on
 * 127.77.0.x: a sidecar's client bootstraps with a token, gets its certificate and its config, and a
 * caller holding another identity's certificate is refused that pod's config.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { pino } from 'pino';
import { DirectorySource } from '../../src/config/index.js';
import type { ConfigVersion, ControlPlaneObserver, Watched } from '../../src/controlplane/index.js';
import {
  ControlPlane,
  ControlPlaneMetrics,
  loopbackCaller,
  NO_CONTROL_PLANE_OBSERVER,
  startControlPlaneAdmin,
  startControlPlaneServer,
} from '../../src/controlplane/index.js';
import { KmtlsError } from '../../src/errors.js';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { PlacedPodSpec, Placement, ProxyConfig } from '../../src/mesh/index.js';
import { CP_PATHS, controlPlaneIdentity } from '../../src/mesh/index.js';
import type { Clock } from '../../src/pki/index.js';
import {
  BootstrapTokenAuthenticator,
  CertificateAuthority,
  ClientCertificateAuthenticator,
  createCsr,
  createRoot,
  DAY_MS,
  readCertificate,
  selfSignedMaterial,
  toPem,
} from '../../src/pki/index.js';
import type { ProxyIdentity } from '../../src/proxy/index.js';
import {
  buildIdentity,
  ControlPlaneClient,
  callControlPlane,
  requestCertificate,
} from '../../src/proxy/index.js';
import { Signal } from '../helpers/mesh.js';

const TD = 'cluster.local';

function spiffe(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  assert.ok(r.ok, uri);
  return r.id;
}

const ID_A = spiffe(`spiffe://${TD}/ns/alpha/sa/a`);
const ID_B = spiffe(`spiffe://${TD}/ns/beta/sa/b`);

// ---------------------------------------------------------------------------------------------
// The mesh: two namespaces, one pod and one Service in each, a namespace policy in each.

const NAMESPACES = ['alpha', 'beta']
  .map(
    (n) => `apiVersion: v1\nkind: Namespace\nmetadata: {name: ${n}, labels: {kmtls.io/injection: enabled}}\n`,
  )
  .join('---\n');

function app(namespace: string, name: string): string {
  return `apiVersion: v1
kind: Pod
metadata: {name: ${name}, namespace: ${namespace}, labels: {app: ${name}}}
spec:
  serviceAccountName: ${name}
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: ${namespace}}
spec:
  selector: {app: ${name}}
  ports: [{name: http, port: 8080}]
`;
}

function policy(namespace: string, mode: string): string {
  return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: ${namespace}}
spec:
  mtls: {mode: ${mode}}
`;
}

function placedPod(namespace: string, name: string, n: number): PlacedPodSpec {
  return {
    namespace,
    name,
    podIP: `127.74.0.${n}`,
    sidecar: true,
    apps: { 8080: `127.0.0.1:${18_080 + n}` },
    admin: `127.74.0.${n}:15000`,
    outbound: {
      'a.alpha.svc.cluster.local:8080': `127.75.0.${n}:8080`,
      'b.beta.svc.cluster.local:8080': `127.75.0.${n}:8081`,
    },
  };
}

const PLACEMENT: Placement = { pods: [placedPod('alpha', 'a', 1), placedPod('beta', 'b', 2)] };

/** A placement the test changes by hand. */
class PlacementBox implements Watched<Placement> {
  private readonly listeners = new Set<(p: Placement) => void>();
  constructor(private value: Placement) {}
  current(): Placement {
    return this.value;
  }
  subscribe(listener: (p: Placement) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  set(value: Placement): void {
    this.value = value;
    for (const l of this.listeners) l(value);
  }
}

/** What the observer saw, with a signal to wait on. */
class Seen implements ControlPlaneObserver {
  readonly signal = new Signal();
  readonly appliedCalls: { pod: string; version: string; latencyMs: number | undefined }[] = [];
  readonly refused: string[] = [];
  readonly issuedCalls: { identity: string; method: string }[] = [];
  pushed = NO_CONTROL_PLANE_OBSERVER.pushed;
  configErrors = NO_CONTROL_PLANE_OBSERVER.configErrors;
  connected = NO_CONTROL_PLANE_OBSERVER.connected;
  applied(pod: string, version: string, latencyMs: number | undefined): void {
    this.appliedCalls.push({ pod, version, latencyMs });
    this.signal.notify();
  }
  issued(identity: string, method: string): void {
    this.issuedCalls.push({ identity, method });
  }
  refusedSigning(reason: string): void {
    this.refused.push(reason);
  }
}

interface World {
  readonly dir: string;
  readonly write: (name: string, text: string) => Promise<void>;
  readonly source: DirectorySource;
  readonly placement: PlacementBox;
  readonly ca: CertificateAuthority;
  readonly bootstrap: BootstrapTokenAuthenticator;
  readonly cp: ControlPlane;
  readonly seen: Seen;
  /** The time the source stamps changes with, and the control plane's clock. */
  readonly clocks: { source: number; cp: number };
}

async function world(
  t: TestContext,
  opts: { fakeClocks?: boolean; debounceMs?: number; leafTtlMs?: number } = {},
): Promise<World> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-cp-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const write = (name: string, text: string) => writeFile(path.join(dir, name), text);
  await write('namespaces.yaml', NAMESPACES);
  await write('apps.yaml', `${app('alpha', 'a')}---\n${app('beta', 'b')}`);
  await write('policy-alpha.yaml', policy('alpha', 'PERMISSIVE'));
  await write('policy-beta.yaml', policy('beta', 'PERMISSIVE'));
  const clocks = { source: 1_000, cp: 1_000 };
  const fake = opts.fakeClocks ?? false;
  const source = await DirectorySource.open(dir, {
    watch: false,
    ...(fake ? { now: () => clocks.source } : {}),
  });
  t.after(() => source.close());
  // TLS checks certificates against the system clock, so the CA always runs on real time.
  const realClock: Clock = { now: Date.now };
  const cpClock: Clock = fake ? { now: () => clocks.cp } : realClock;
  const ca = new CertificateAuthority(
    selfSignedMaterial(TD, createRoot({ trustDomain: TD, now: Date.now(), random: randomBytes })),
    { clock: realClock, random: randomBytes },
  );
  const bootstrap = new BootstrapTokenAuthenticator(randomBytes);
  const placement = new PlacementBox(PLACEMENT);
  const seen = new Seen();
  const cp = new ControlPlane({
    source,
    placement,
    ca,
    authenticators: [
      new ClientCertificateAuthenticator(
        () => ({ roots: ca.material.trustBundle, trustDomains: [ca.trustDomain] }),
        realClock,
      ),
      bootstrap,
    ],
    clock: cpClock,
    mesh: { trustDomain: TD },
    // Unit tests recompute by hand; a long debounce keeps the automatic one out of their way.
    debounceMs: opts.debounceMs ?? 600_000,
    ...(opts.leafTtlMs ? { leafTtlMs: opts.leafTtlMs } : {}),
    observer: seen,
  });
  t.after(() => cp.close());
  return { dir, write, source, placement, ca, bootstrap, cp, seen, clocks };
}

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

function csrPem(key: KeyObject, uris: string[] = []): string {
  return toPem(createCsr(key, { uris }), 'CERTIFICATE REQUEST');
}

function modesOf(config: ProxyConfig): string[] {
  return config.inbound.map((p) => `${p.port}=${p.mode} by ${p.policy}`);
}

// ---------------------------------------------------------------------------------------------
// Signing

test('sign: a bootstrap token minted for A gets a certificate for A, whatever the CSR asks for', async (t) => {
  const w = await world(t);
  const token = w.bootstrap.mint(ID_A);
  const issued = await w.cp.sign({ bearerToken: token }, csrPem(ecKey(), [ID_B.uri]));
  assert.deepEqual(
    issued.identities.map((i) => i.uri),
    [ID_A.uri],
  );
  assert.deepEqual(readCertificate(issued.certificate).uris, [ID_A.uri], 'the certificate itself says A');
  assert.deepEqual(w.seen.issuedCalls, [{ identity: ID_A.uri, method: 'bootstrap-token' }]);
  assert.equal(w.cp.status().certificatesIssued, 1);

  // Renewal: the certificate A holds proves A, again whatever the CSR says.
  const renewed = await w.cp.sign({ peerChain: issued.chain }, csrPem(ecKey(), [ID_B.uri]));
  assert.deepEqual(
    renewed.identities.map((i) => i.uri),
    [ID_A.uri],
  );
  assert.equal(w.seen.issuedCalls[1]?.method, 'client-certificate');
  assert.equal(w.cp.status().certificatesIssued, 2);
});

test('sign: an unknown token, or no credential at all, is refused with KMTLS_PKI_UNAUTHENTICATED', async (t) => {
  const w = await world(t);
  w.bootstrap.mint(ID_A);
  const isUnauthenticated = (pattern: RegExp) => (err: unknown) => {
    assert.ok(err instanceof KmtlsError, String(err));
    assert.equal(err.code, 'KMTLS_PKI_UNAUTHENTICATED');
    assert.match(err.message, pattern);
    return true;
  };
  await assert.rejects(
    w.cp.sign({ bearerToken: 'not-a-token-anyone-minted' }, csrPem(ecKey(), [ID_A.uri])),
    isUnauthenticated(/unknown bootstrap token/),
  );
  await assert.rejects(w.cp.sign({}, csrPem(ecKey())), isUnauthenticated(/no credentials/));
  // A revoked token is as good as unknown.
  const revoked = w.bootstrap.mint(ID_B);
  w.bootstrap.revoke(revoked);
  await assert.rejects(
    w.cp.sign({ bearerToken: revoked }, csrPem(ecKey())),
    isUnauthenticated(/unknown bootstrap token/),
  );
  assert.equal(w.seen.refused.length, 3);
  assert.equal(w.cp.status().certificatesIssued, 0);
  assert.deepEqual(w.seen.issuedCalls, []);
});

// ---------------------------------------------------------------------------------------------
// Config versions

test('a placed pod with a sidecar gets a config; a change pushes only to pods whose config changed', async (t) => {
  const w = await world(t);
  const got: Record<string, ConfigVersion[]> = { 'alpha/a': [], 'beta/b': [] };
  for (const pod of Object.keys(got)) w.cp.watchConfig(pod, (v) => got[pod]!.push(v));
  // The current version at once.
  assert.deepEqual(
    Object.values(got).map((l) => l.map((v) => v.version)),
    [['1'], ['1']],
  );
  const a1 = got['alpha/a']![0]!.config;
  assert.deepEqual(a1.workload, { namespace: 'alpha', name: 'a', identity: ID_A.uri });
  assert.deepEqual(modesOf(a1), ['8080=PERMISSIVE by alpha/default']);
  assert.equal(a1.inbound[0]?.listen, '127.74.0.1:8080');
  assert.equal(a1.inbound[0]?.forward, '127.0.0.1:18081', 'where the placement says the app listens');
  assert.equal(a1.admin, '127.74.0.1:15000');
  assert.deepEqual(
    a1.outbound.map((o) => [o.name, o.listen, o.endpoints.map((e) => e.address).join()]),
    [
      ['a.alpha.svc.cluster.local:8080', '127.75.0.1:8080', '127.74.0.1:8080'],
      ['b.beta.svc.cluster.local:8080', '127.75.0.1:8081', '127.74.0.2:8080'],
    ],
  );

  await w.write('policy-alpha.yaml', policy('alpha', 'STRICT'));
  await w.source.rescan();
  assert.deepEqual(w.cp.recompute(), ['alpha/a']);
  assert.deepEqual(
    got['alpha/a']!.map((v) => v.version),
    ['1', '2'],
  );
  assert.deepEqual(modesOf(got['alpha/a']![1]!.config), ['8080=STRICT by alpha/default']);
  assert.equal(got['alpha/a']![1]!.config.version, '2');
  assert.deepEqual(
    got['beta/b']!.map((v) => v.version),
    ['1'],
    "beta's config did not change: no push",
  );
  assert.equal(w.cp.configOf('beta/b')?.version, '1');
  assert.equal(w.cp.status().version, '2');

  // Nothing changed: nothing pushed, no new version.
  assert.deepEqual(w.cp.recompute(), []);
  assert.equal(w.cp.status().version, '2');
  assert.equal(got['alpha/a']!.length, 2);

  // A file that becomes invalid changes nothing served: no push either.
  await w.write('policy-beta.yaml', policy('beta', 'STRIKT'));
  await w.source.rescan();
  assert.deepEqual(w.cp.recompute(), []);
  assert.equal(got['beta/b']!.length, 1);
  assert.deepEqual(
    w.cp.status().errors.map((e) => [path.basename(e.file), e.servingLastGood]),
    [['policy-beta.yaml', true]],
  );
});

test('placement decides which pods get a config: no sidecar, no config; unknown pods are refused', async (t) => {
  const w = await world(t);
  w.placement.set({
    pods: [
      { ...placedPod('alpha', 'a', 1), sidecar: false },
      placedPod('beta', 'b', 2),
      // Placed, but not in the manifests: ignored.
      placedPod('beta', 'ghost', 3),
    ],
  });
  assert.deepEqual(w.cp.recompute(), [], "b's endpoints and listeners did not change");
  assert.equal(w.cp.configOf('alpha/a'), undefined);
  assert.equal(w.cp.configOf('beta/b')?.version, '1');
  assert.equal(w.cp.identityOf('beta/ghost'), undefined);
  assert.throws(
    () => w.cp.watchConfig('beta/ghost', () => {}),
    (err: unknown) => err instanceof KmtlsError && err.code === 'KMTLS_CP_UNKNOWN_POD',
  );
  const status = w.cp.status();
  assert.deepEqual(
    status.pods.map((p) => [`${p.namespace}/${p.name}`, p.sidecar, p.configVersion]),
    [
      ['alpha/a', false, undefined],
      ['beta/b', true, '1'],
    ],
  );
  // Still told what its ports would be.
  assert.deepEqual(status.pods[0]?.ports, [
    { port: 8080, mode: 'PERMISSIVE', policy: 'alpha/default', protocol: 'http' },
  ]);

  // a gets its sidecar back and b moves to another address: both configs change.
  w.placement.set({
    pods: [placedPod('alpha', 'a', 1), { ...placedPod('beta', 'b', 2), podIP: '127.74.0.9' }],
  });
  assert.deepEqual(w.cp.recompute().sort(), ['alpha/a', 'beta/b']);
  const a = w.cp.configOf('alpha/a')?.config;
  assert.ok(a);
  assert.deepEqual(
    a.outbound.find((o) => o.name.startsWith('b.'))?.endpoints.map((e) => e.address),
    ['127.74.0.9:8080'],
  );
});

test('applied: a change is done when every pod it changed applied its version; latency from when it was noticed', async (t) => {
  const w = await world(t, { fakeClocks: true });
  assert.equal(w.cp.status().lastChange, undefined, 'the first configs at start-up are no change');
  for (const pod of ['alpha/a', 'beta/b']) w.cp.watchConfig(pod, () => {});
  w.clocks.source = 10_000;
  await w.write('policy-alpha.yaml', policy('alpha', 'STRICT'));
  await w.write('policy-beta.yaml', policy('beta', 'STRICT'));
  await w.source.rescan();
  assert.deepEqual(w.cp.recompute().sort(), ['alpha/a', 'beta/b']);
  assert.deepEqual(w.cp.status().lastChange, {
    version: '2',
    noticedAtMs: 10_000,
    pods: 2,
    applied: 0,
    latencyMs: undefined,
  });

  w.clocks.cp = 10_100;
  w.cp.applied('alpha/a', '1'); // an old version: does not count
  w.cp.applied('alpha/a', '2');
  assert.equal(w.cp.status().lastChange?.applied, 1);
  assert.equal(w.cp.status().lastChange?.latencyMs, undefined, 'beta/b has not applied yet');
  w.cp.applied('alpha/a', '2'); // twice: counted once
  assert.equal(w.cp.status().lastChange?.applied, 1);

  w.clocks.cp = 10_250;
  w.cp.applied('beta/b', '2');
  assert.deepEqual(w.cp.status().lastChange, {
    version: '2',
    noticedAtMs: 10_000,
    pods: 2,
    applied: 2,
    latencyMs: 250,
  });
  assert.deepEqual(
    w.seen.appliedCalls.map((c) => [c.pod, c.version, c.latencyMs]),
    [
      ['alpha/a', '1', undefined],
      ['alpha/a', '2', undefined],
      ['alpha/a', '2', undefined],
      ['beta/b', '2', 250],
    ],
  );
  const pods = w.cp.status().pods;
  assert.deepEqual(
    pods.map((p) => [p.name, p.configVersion, p.appliedVersion]),
    [
      ['a', '2', '2'],
      ['b', '2', '2'],
    ],
  );
  // A pod the control plane does not know is ignored.
  w.cp.applied('beta/ghost', '2');
  assert.equal(w.seen.appliedCalls.length, 4);
});

test('applied: a change counts only the pods it was pushed to, those with a connected sidecar', async (t) => {
  const w = await world(t, { fakeClocks: true });
  w.cp.watchConfig('alpha/a', () => {});
  w.clocks.source = 20_000;
  await w.write('policy-alpha.yaml', policy('alpha', 'STRICT'));
  await w.write('policy-beta.yaml', policy('beta', 'STRICT'));
  await w.source.rescan();
  assert.deepEqual(w.cp.recompute().sort(), ['alpha/a', 'beta/b']);
  assert.equal(w.cp.status().lastChange?.pods, 1, 'beta/b has no sidecar connected');
  w.clocks.cp = 20_040;
  w.cp.applied('alpha/a', '2');
  assert.equal(w.cp.status().lastChange?.latencyMs, 40);

  // A change no connected sidecar is affected by leaves the last change as it was.
  await w.write('policy-beta.yaml', policy('beta', 'PERMISSIVE'));
  await w.source.rescan();
  assert.deepEqual(w.cp.recompute(), ['beta/b']);
  assert.equal(w.cp.status().lastChange?.version, '2');
});

test('applied: a change that came from the placement is timed from when the placement changed', {}, async (t) => {
  const w = await world(t, { fakeClocks: true });
  for (const pod of ['alpha/a', 'beta/b']) w.cp.watchConfig(pod, () => {});
  w.clocks.cp = 50_000;
  w.placement.set({
    pods: [placedPod('alpha', 'a', 1), { ...placedPod('beta', 'b', 2), podIP: '127.74.0.9' }],
  });
  assert.deepEqual(w.cp.recompute().sort(), ['alpha/a', 'beta/b']);
  w.clocks.cp = 50_100;
  w.cp.applied('alpha/a', '2');
  w.cp.applied('beta/b', '2');
  const change = w.cp.status().lastChange;
  assert.ok(change);
  assert.ok(change.noticedAtMs >= 50_000, `noticed at ${change.noticedAtMs}, before the placement changed`);
  assert.ok((change.latencyMs ?? Infinity) <= 100, `latency ${change.latencyMs} ms`);
});

// ---------------------------------------------------------------------------------------------
// Over mTLS

interface Served {
  readonly link: { address: { host: string; port: number }; rootsPem: string; controlPlaneIdentity: string };
  readonly close: () => Promise<void>;
}

async function serve(
  t: TestContext,
  w: World,
  host: string,
  opts: { heartbeatMs?: number } = {},
): Promise<Served> {
  const cpId = spiffe(controlPlaneIdentity(TD));
  const key = ecKey();
  const serving = w.ca.sign(createCsr(key), { identities: [cpId], method: 'operator' });
  const api = await startControlPlaneServer({
    controlPlane: w.cp,
    ca: w.ca,
    clock: { now: Date.now },
    listen: { host, port: 0 },
    serving: { certPem: serving.chainPem, keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString() },
    ...opts,
  });
  t.after(() => api.close());
  const { port } = api.server.address() as AddressInfo;
  return {
    link: { address: { host, port }, rootsPem: w.ca.trustBundlePem(), controlPlaneIdentity: cpId.uri },
    close: () => api.close(),
  };
}

/** One request over mTLS, verifying the control plane's SPIFFE ID; the status and the first line of the body. */
function request(
  served: Served,
  opts: {
    method: string;
    path: string;
    body?: string;
    headers?: Record<string, string>;
    as?: ProxyIdentity | { chainPem: string; keyPem: string };
  },
): Promise<{ status: number; firstLine: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: served.link.address.host,
        port: served.link.address.port,
        method: opts.method,
        path: opts.path,
        headers: opts.headers ?? {},
        ca: served.link.rootsPem,
        agent: false,
        ...(opts.as ? { cert: opts.as.chainPem, key: opts.as.keyPem } : {}),
        checkServerIdentity: (_host: string, cert: PeerCertificate) =>
          cert.subjectaltname === `URI:${served.link.controlPlaneIdentity}`
            ? undefined
            : new Error(`the server presented ${cert.subjectaltname}`),
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
          const nl = text.indexOf('\n');
          if (nl !== -1) {
            // Config streams never end: one line is all a test needs.
            resolve({ status: res.statusCode ?? 0, firstLine: text.slice(0, nl) });
            req.destroy();
          }
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, firstLine: text.trim() }));
        res.on('error', () => {});
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

function certFor(w: World, id: SpiffeId): { chainPem: string; keyPem: string } {
  const key = ecKey();
  const issued = w.ca.sign(createCsr(key), { identities: [id], method: 'test' });
  return { chainPem: issued.chainPem, keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString() };
}

test('over mTLS: a sidecar bootstraps with its token, gets its certificate and its config, and acknowledges', async (t) => {
  const w = await world(t, { debounceMs: 5 });
  const served = await serve(t, w, '127.77.0.1');
  const signal = new Signal();
  const applied: ProxyConfig[] = [];
  const identities: ProxyIdentity[] = [];
  let tokensAsked = 0;
  const client = new ControlPlaneClient({
    ...served.link,
    pod: 'alpha/a',
    token: async () => {
      tokensAsked++;
      return w.bootstrap.mint(ID_A);
    },
    clock: { now: Date.now },
    log: pino({ level: 'silent' }),
    applyConfig: async (config) => {
      applied.push(config);
      signal.notify();
    },
    setIdentity: (identity) => {
      identities.push(identity);
      signal.notify();
    },
  });
  t.after(() => client.stop());
  await client.start();
  assert.equal(tokensAsked, 1);
  assert.equal(identities.length, 1);
  assert.equal(identities[0]?.identity, ID_A.uri);
  assert.ok(identities[0]!.notAfter.getTime() > Date.now() + DAY_MS / 2);

  const first = await signal.until(() => applied[0], 'the first config to be applied');
  assert.deepEqual(first, w.cp.configOf('alpha/a')?.config);
  assert.equal(first.version, '1');
  assert.deepEqual(modesOf(first), ['8080=PERMISSIVE by alpha/default']);
  await w.seen.signal.until(
    () => w.seen.appliedCalls.find((c) => c.pod === 'alpha/a' && c.version === '1'),
    'the control plane to hear version 1 was applied',
  );
  const a = w.cp.status().pods.find((p) => p.name === 'a');
  assert.equal(a?.connected, true);
  assert.equal(a?.appliedVersion, '1');
  assert.equal(client.status().connected, true);
  assert.equal(client.status().configVersion, '1');

  // A policy change reaches the connected sidecar on its own: source → control plane → stream.
  await w.write('policy-alpha.yaml', policy('alpha', 'STRICT'));
  await w.source.rescan();
  const second = await signal.until(() => applied[1], 'the changed config to be pushed and applied');
  assert.equal(second.version, '2');
  assert.deepEqual(modesOf(second), ['8080=STRICT by alpha/default']);
  const done = await w.seen.signal.until(
    () => w.seen.appliedCalls.find((c) => c.pod === 'alpha/a' && c.version === '2'),
    'the control plane to hear version 2 was applied',
  );
  assert.ok(done.latencyMs !== undefined && done.latencyMs >= 0, `latency ${done.latencyMs}`);
  const change = w.cp.status().lastChange;
  assert.equal(change?.version, '2');
  assert.equal(change?.pods, 1);
  assert.equal(change?.applied, 1);
  assert.equal(change?.latencyMs, done.latencyMs);
  assert.equal(tokensAsked, 1, 'the token is only for the first certificate');
});

test("over mTLS: another identity's certificate, or none, cannot read a pod's config; bad tokens get no certificate", async (t) => {
  const w = await world(t);
  const served = await serve(t, w, '127.77.0.2');
  const asB = certFor(w, ID_B);
  const configOf = (pod: string) => `${CP_PATHS.config}?pod=${encodeURIComponent(pod)}`;

  const forbidden = await request(served, { method: 'GET', path: configOf('alpha/a'), as: asB });
  assert.equal(forbidden.status, 403);
  const body = JSON.parse(forbidden.firstLine) as { code: string; error: string };
  assert.equal(body.code, 'KMTLS_CP_FORBIDDEN');
  assert.match(body.error, new RegExp(`runs as ${ID_A.uri}.*presented ${ID_B.uri}`));

  const anonymous = await request(served, { method: 'GET', path: configOf('alpha/a') });
  assert.equal(anonymous.status, 403);
  assert.equal((JSON.parse(anonymous.firstLine) as { code: string }).code, 'KMTLS_CP_FORBIDDEN');

  // Acknowledging for someone else's pod is refused the same way.
  const ack = await request(served, {
    method: 'POST',
    path: CP_PATHS.applied,
    body: JSON.stringify({ pod: 'alpha/a', version: '1' }),
    headers: { 'content-type': 'application/json' },
    as: asB,
  });
  assert.equal(ack.status, 403);
  assert.deepEqual(w.seen.appliedCalls, []);

  // B's own pod: allowed, and the stream starts with its config.
  const own = await request(served, { method: 'GET', path: configOf('beta/b'), as: asB });
  assert.equal(own.status, 200);
  const message = JSON.parse(own.firstLine) as { version: string; config: ProxyConfig; roots: string };
  assert.equal(message.version, '1');
  assert.equal(message.config.workload.identity, ID_B.uri);
  assert.equal(message.roots, w.ca.trustBundlePem());

  // The proxy's own client says the same through its error.
  await assert.rejects(
    callControlPlane({ ...served.link, identity: undefined }, 'GET', configOf('alpha/a'), '', {}),
    (err: unknown) => err instanceof KmtlsError && /answered 403: pod alpha\/a runs as/.test(err.message),
  );

  const unknown = await request(served, { method: 'GET', path: configOf('beta/ghost'), as: asB });
  assert.equal(unknown.status, 404);
  assert.equal((JSON.parse(unknown.firstLine) as { code: string }).code, 'KMTLS_CP_UNKNOWN_POD');

  const badToken = await request(served, {
    method: 'POST',
    path: CP_PATHS.sign,
    body: JSON.stringify({ csr: csrPem(ecKey(), [ID_A.uri]) }),
    headers: { 'content-type': 'application/json', authorization: 'Bearer nobody-minted-this' },
  });
  assert.equal(badToken.status, 403);
  assert.equal((JSON.parse(badToken.firstLine) as { code: string }).code, 'KMTLS_PKI_UNAUTHENTICATED');
  assert.equal(w.cp.status().certificatesIssued, 0);
});

// ---------------------------------------------------------------------------------------------
// Streams that end, stay single, and notice a dead peer

/** Polls `probe` until it gives a value. */
async function eventually<T>(probe: () => T | undefined, what: string, deadlineMs = 8_000): Promise<T> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Counts the config streams the control plane holds open (the server subscribes through watchConfig). */
function countStreams(cp: ControlPlane): { active: number; opened: number } {
  const counts = { active: 0, opened: 0 };
  const watch = cp.watchConfig.bind(cp);
  cp.watchConfig = (pod, listener, onClose) => {
    let open = true;
    const done = () => {
      if (open) counts.active--;
      open = false;
    };
    const stop = watch(pod, listener, () => {
      done();
      onClose?.();
    });
    counts.active++;
    counts.opened++;
    return () => {
      done();
      stop();
    };
  };
  return counts;
}

function sidecar(
  t: TestContext,
  w: World,
  served: Served,
  opts: { streamIdleTimeoutMs?: number; log?: Logger } = {},
) {
  const applied: ProxyConfig[] = [];
  const identities: ProxyIdentity[] = [];
  const tokens = { asked: 0 };
  const client = new ControlPlaneClient({
    ...served.link,
    pod: 'alpha/a',
    token: async () => {
      tokens.asked++;
      return w.bootstrap.mint(ID_A);
    },
    clock: { now: Date.now },
    log: opts.log ?? pino({ level: 'silent' }),
    random: () => 0,
    ...(opts.streamIdleTimeoutMs ? { streamIdleTimeoutMs: opts.streamIdleTimeoutMs } : {}),
    applyConfig: async (config) => {
      applied.push(config);
    },
    setIdentity: (identity) => {
      identities.push(identity);
    },
  });
  t.after(() => client.stop());
  return { client, applied, identities, tokens };
}

test('a pod that leaves the placement has its streams ended; when it comes back, new streams get pushes', async (t) => {
  const w = await world(t);
  const got: ConfigVersion[] = [];
  let closed = 0;
  const connectedCounts: number[] = [];
  w.seen.connected = (n) => connectedCounts.push(n);
  w.cp.watchConfig(
    'alpha/a',
    (v) => got.push(v),
    () => closed++,
  );
  assert.equal(got.length, 1);
  w.placement.set({ pods: [placedPod('beta', 'b', 2)] });
  w.cp.recompute();
  assert.equal(closed, 1, 'the stream of the pod that left is ended');
  assert.equal(w.cp.status().connectedProxies, 0);
  assert.equal(connectedCounts.at(-1), 0);
  assert.throws(() => w.cp.watchConfig('alpha/a', () => {}), /no pod alpha\/a/);

  w.placement.set(PLACEMENT);
  w.cp.recompute();
  assert.equal(got.length, 1, 'the ended stream hears nothing more');
  const again: ConfigVersion[] = [];
  w.cp.watchConfig('alpha/a', (v) => again.push(v));
  assert.equal(again.length, 1, 'the new stream gets the current config at once');
  await w.write('policy-alpha.yaml', policy('alpha', 'STRICT'));
  await w.source.rescan();
  assert.deepEqual(w.cp.recompute(), ['alpha/a']);
  assert.equal(again.length, 2, 'and is pushed the next change');
  assert.deepEqual(modesOf(again[1]!.config), ['8080=STRICT by alpha/default']);
  assert.equal(closed, 1);
});

test('over mTLS: a renewal refused while the certificate is still valid falls back to the bootstrap token', async (t) => {
  const w = await world(t);
  const served = await serve(t, w, '127.77.0.3');
  // A certificate from a root the control plane does not trust (as after a root change).
  const foreign = new CertificateAuthority(
    selfSignedMaterial(TD, createRoot({ trustDomain: TD, now: Date.now(), random: randomBytes })),
    { clock: { now: Date.now }, random: randomBytes },
  );
  const key = ecKey();
  const issued = foreign.sign(createCsr(key), { identities: [ID_A], method: 'test' });
  const stale = buildIdentity({
    chainPem: issued.chainPem,
    keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    bundlePem: foreign.trustBundlePem(),
  });
  assert.ok(stale.notAfter.getTime() > Date.now(), 'still valid');

  // No token to fall back to: the refusal stands.
  await assert.rejects(requestCertificate({ ...served.link, identity: stale }, undefined, Date.now()), /403/);

  let tokens = 0;
  const token = async () => {
    tokens++;
    return w.bootstrap.mint(ID_A);
  };
  const fresh = await requestCertificate({ ...served.link, identity: stale }, token, Date.now());
  assert.equal(fresh.identity.identity, ID_A.uri);
  assert.equal(tokens, 1, 'the token was used once, after the certificate was refused');
  assert.deepEqual(
    w.seen.issuedCalls.map((c) => c.method),
    ['bootstrap-token'],
  );

  // A certificate the control plane trusts renews by itself: no token.
  const renewed = await requestCertificate({ ...served.link, identity: fresh.identity }, token, Date.now());
  assert.equal(renewed.identity.identity, ID_A.uri);
  assert.equal(tokens, 1);
  assert.equal(w.seen.issuedCalls[1]?.method, 'client-certificate');
});

test('over mTLS: a pod that leaves and comes back gets its sidecar back; renewals during the outage open no second stream', async (t) => {
  // Two-second certificates: the sidecar renews about every second, outage or not.
  const w = await world(t, { debounceMs: 5, leafTtlMs: 2_000 });
  const served = await serve(t, w, '127.77.0.4');
  const streams = countStreams(w.cp);
  const s = sidecar(t, w, served);
  await s.client.start();
  await eventually(() => (s.client.status().connected ? true : undefined), 'the first stream');
  await eventually(() => s.applied[0], 'the first config');
  assert.equal(streams.active, 1);

  // The pod leaves: its stream ends, and the sidecar's reconnects are refused while it is away.
  w.placement.set({ pods: [placedPod('beta', 'b', 2)] });
  await eventually(() => (s.client.status().connected ? undefined : true), 'the stream to end');
  assert.equal(streams.active, 0);
  const renewedBefore = s.identities.length;
  await sleep(2_500);
  assert.ok(
    s.identities.length >= renewedBefore + 2,
    `renewals during the outage: ${s.identities.length - renewedBefore}`,
  );
  assert.match(s.client.status().lastError ?? '', /refused \(404\)/);

  // It comes back: the sidecar reconnects and gets pushes again, on one stream, whatever renews.
  const appliedBefore = s.applied.length;
  w.placement.set(PLACEMENT);
  await eventually(() => (s.client.status().connected ? true : undefined), 'the stream to come back');
  await eventually(() => s.applied[appliedBefore], 'a config after the return');
  await sleep(3_000);
  assert.equal(streams.active, 1, 'one stream, not one per renewal or retry');
  assert.equal(s.client.status().connected, true);
  const a = w.cp.status().pods.find((p) => p.name === 'a');
  assert.equal(a?.connected, true);
  await w.write('policy-alpha.yaml', policy('alpha', 'STRICT'));
  await w.source.rescan();
  const pushed = await eventually(
    () => s.applied.find((c) => modesOf(c).includes('8080=STRICT by alpha/default')),
    'the change to reach the returned pod',
  );
  assert.ok(pushed);
  assert.equal(streams.active, 1);
});

test('over mTLS: heartbeats keep a quiet stream up and are not configs; a silent stream is dropped and reopened', async (t) => {
  const w = await world(t);
  const lines: string[] = [];
  const log: Logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });

  const beating = await serve(t, w, '127.77.0.5', { heartbeatMs: 50 });
  const streams = countStreams(w.cp);
  const s = sidecar(t, w, beating, { streamIdleTimeoutMs: 300, log });
  await s.client.start();
  await eventually(() => s.applied[0], 'the first config');
  await sleep(1_000);
  assert.equal(streams.opened, 1, 'heartbeats every 50 ms: the 300 ms idle timeout never fires');
  assert.equal(s.client.status().connected, true);
  assert.equal(s.applied.length, 1, 'a heartbeat is not a config');
  assert.deepEqual(
    lines.filter((l) => /KMTLS_PROXY_CONFIG_INVALID|refused/.test(l)),
    [],
  );
  s.client.stop();

  // A control plane that goes quiet (a half-open connection looks the same from the sidecar).
  const silent = await serve(t, w, '127.77.0.6', { heartbeatMs: 0 });
  const before = streams.opened;
  const q = sidecar(t, w, silent, { streamIdleTimeoutMs: 300, log });
  await q.client.start();
  await eventually(() => q.applied[0], 'the first config from the silent control plane');
  await eventually(
    () => (streams.opened >= before + 2 ? true : undefined),
    'the silent stream to be dropped and reopened',
  );
  assert.ok(
    lines.some((l) => /no heartbeat/.test(l)),
    'the drop is logged with its reason',
  );
  await eventually(() => (q.client.status().connected ? true : undefined), 'the reopened stream');
});

test('admin: /ready follows readyWhen, /status can be kept to loopback callers, a failed metrics collection is a 500', async (t) => {
  const w = await world(t);
  const metrics = new ControlPlaneMetrics();
  let ready = false;
  let allowed = true;
  const admin = await startControlPlaneAdmin({
    controlPlane: w.cp,
    metrics,
    listen: { host: '127.77.0.7', port: 0 },
    readyWhen: () => ready,
    statusAllowed: () => allowed,
    log: pino({ level: 'silent' }),
  });
  t.after(() => new Promise<void>((r) => admin.close(() => r())));
  const { port } = admin.address() as AddressInfo;
  const get = (p: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      http
        .get({ host: '127.77.0.7', port, path: p, agent: false }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        })
        .on('error', reject);
    });

  assert.equal((await get('/ready')).status, 503);
  ready = true;
  assert.equal((await get('/ready')).status, 200);

  assert.equal((await get('/status')).status, 200);
  allowed = false;
  assert.equal((await get('/status')).status, 403);

  assert.equal((await get('/metrics')).status, 200);
  metrics.registry.registerMetric(
    new (await import('prom-client')).Gauge({
      name: 'kmtls_test_broken',
      help: 'collects by throwing',
      registers: [],
      collect() {
        throw new Error('broken collector');
      },
    }),
  );
  const broken = await get('/metrics');
  assert.equal(broken.status, 500);
  assert.match(broken.body, /broken collector/);
  assert.equal((await get('/ready')).status, 200, 'the admin server is still up');

  const from = (remoteAddress: string) => ({ socket: { remoteAddress } }) as unknown as http.IncomingMessage;
  assert.deepEqual(
    ['127.0.0.1', '127.77.0.7', '::1', '::ffff:127.0.0.1', '10.0.0.1', '::ffff:10.0.0.1', 'fe80::1', ''].map(
      (a) => loopbackCaller(from(a)),
    ),
    [true, true, true, true, false, false, false, false],
  );
});
