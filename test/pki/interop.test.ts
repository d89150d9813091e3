/**
 * Interoperability with TLS stacks kmtls did not write: `openssl verify`, `openssl x509`/`req`,
 * `openssl s_client` and Python's `ssl`, run as child processes against certificates, CSRs and a
 * node:tls server made by kmtls. The server does what a STRICT port does: TLS verifies the chain
 * against the trust bundle, then verifyPeerChain judges the SPIFFE identity.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import tls from 'node:tls';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { AuthResult } from '../../src/pki/authn.js';
import { ClientCertificateAuthenticator } from '../../src/pki/authn.js';
import type { CaMaterial, IssuedCertificate } from '../../src/pki/ca.js';
import {
  CertificateAuthority,
  caMaterialFromFiles,
  createRoot,
  selfSignedMaterial,
} from '../../src/pki/ca.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { createCsr, verifyCsr } from '../../src/pki/csr.js';
import type { ChainRefusal, ChainVerdict } from '../../src/pki/verify.js';
import { verifyPeerChain } from '../../src/pki/verify.js';
import { buildCertificate, encodeName, keyIdentifier, toPem } from '../../src/pki/x509.js';
import { readCertificate } from '../../src/pki/x509-read.js';
import type { ClientCredentials, ClientReport } from '../helpers/peers.js';
import {
  opensslClient,
  PEER_TIMEOUT_MS,
  pythonClient,
  runPeer,
  tempDir,
  writeTempFiles,
} from '../helpers/peers.js';

// Real time throughout: the peers check validity against the wall clock, not an injected one.
const NOW = Date.now();
const TRUST_DOMAINS = ['cluster.local'] as const;
/** Per test: several peers at most, each with its own deadline. */
const TEST_TIMEOUT = { timeout: 4 * PEER_TIMEOUT_MS };

function spiffe(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  assert.ok(r.ok, uri);
  return r.id;
}

const CLIENT_ID = spiffe('spiffe://cluster.local/ns/finance/sa/payments');
const SERVER_ID = spiffe('spiffe://cluster.local/ns/shop/sa/frontend');
const OTHER_TD_ID = spiffe('spiffe://other.example/ns/finance/sa/payments');

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

function keyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

function caAt(material: CaMaterial, nowMs: number): CertificateAuthority {
  return new CertificateAuthority(material, { clock: { now: () => nowMs }, random: randomBytes });
}

// The mesh root was made a week ago so that a CA whose clock runs two days behind can still sign with
// it: that CA's one-hour leaves expired in real time while their chain stays trusted.
const ROOT = createRoot({ trustDomain: 'cluster.local', now: NOW - 7 * DAY_MS, random: randomBytes });
const ROOT_MATERIAL = selfSignedMaterial('cluster.local', ROOT);
const MESH_CA = caAt(ROOT_MATERIAL, NOW);
const PAST_CA = caAt(ROOT_MATERIAL, NOW - 2 * DAY_MS);
const FUTURE_CA = caAt(ROOT_MATERIAL, NOW + 2 * DAY_MS);
/** Same trust domain, but a root no one here trusts. */
const FOREIGN_ROOT = createRoot({ trustDomain: 'cluster.local', now: NOW, random: randomBytes });
const FOREIGN_CA = caAt(selfSignedMaterial('cluster.local', FOREIGN_ROOT), NOW);
/** A root the server trusts at the TLS layer, for a trust domain its policy does not. */
const OTHER_TD_ROOT = createRoot({ trustDomain: 'other.example', now: NOW, random: randomBytes });
const OTHER_TD_CA = caAt(selfSignedMaterial('other.example', OTHER_TD_ROOT), NOW);
const SERVER_BUNDLE = [ROOT.certificate, OTHER_TD_ROOT.certificate] as const;

/** A CA certificate signed by `issuer`, as an operator's offline CA would make a plug-in intermediate. */
function intermediateCa(
  issuer: { certificate: Buffer; key: KeyObject },
  name: string,
  pathLength: number | undefined,
): { certificate: Buffer; key: KeyObject } {
  const key = ecKey();
  const issuerFields = readCertificate(issuer.certificate);
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const certificate = buildCertificate(
    {
      serial: randomBytes(8),
      issuerName: issuerFields.subjectName,
      subjectName: encodeName({ organization: 'cluster.local', commonName: name }),
      notBefore: new Date(NOW - DAY_MS),
      notAfter: new Date(NOW + 365 * DAY_MS),
      subjectPublicKeyInfo: spki,
      isCa: true,
      ...(pathLength === undefined ? {} : { pathLength }),
      uris: [],
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: issuerFields.subjectKeyId,
    },
    issuer.key,
  );
  return { certificate, key };
}

/** Istio's plug-in CA layout: the mesh root signs an intermediate; the intermediate signs workloads. */
const INTERMEDIATE = intermediateCa(ROOT, 'kmtls plug-in intermediate', 0);
const PLUGIN_CA = caAt(
  caMaterialFromFiles({
    trustDomain: 'cluster.local',
    caCertPem: toPem(INTERMEDIATE.certificate),
    caKeyPem: keyPem(INTERMEDIATE.key),
    rootCertPem: toPem(ROOT.certificate),
    certChainPem: toPem(INTERMEDIATE.certificate) + toPem(ROOT.certificate),
  }),
  NOW,
);

interface Workload {
  readonly key: KeyObject;
  readonly issued: IssuedCertificate;
}

function issue(ca: CertificateAuthority, id: SpiffeId, ttlMs?: number): Workload {
  const key = ecKey();
  const issued = ca.sign(
    createCsr(key, { uris: [id.uri] }),
    { identities: [id], method: 'test' },
    ttlMs ? { ttlMs } : {},
  );
  return { key, issued };
}

/** What a client workload presents (its cert-chain.pem) and trusts (the mesh root only). */
function credentials(w: Workload): ClientCredentials {
  return { chainPem: w.issued.chainPem, keyPem: keyPem(w.key), trustPem: toPem(ROOT.certificate) };
}

const pem = (...ders: readonly Buffer[]): string => ders.map((d) => toPem(d)).join('');

// ---------------------------------------------------------------------------------------------
// A STRICT port: node:tls verifies the chain, then verifyPeerChain judges the SPIFFE identity.

/** What the server made of one connection. */
type ServerOutcome =
  | { readonly kind: 'session'; readonly protocol: string | null; readonly verdict: ChainVerdict }
  /** The TLS layer refused before the application saw the connection; `authorizationError` is OpenSSL's verify code. */
  | {
      readonly kind: 'refused';
      readonly code: string | undefined;
      readonly authorizationError: string | undefined;
    };

interface MeshServer {
  readonly port: number;
  /** The outcome of the next connection, in order; rejects if none comes within the peer deadline. */
  nextOutcome(): Promise<ServerOutcome>;
}

/** The chain as the client sent it, leaf first, completed by Node with the trusted root. */
function peerChain(socket: TLSSocket): Buffer[] {
  const chain: Buffer[] = [];
  const seen = new Set<string>();
  let cert: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  while (cert?.raw && !seen.has(cert.fingerprint256)) {
    seen.add(cert.fingerprint256);
    chain.push(cert.raw);
    cert = cert.issuerCertificate;
  }
  return chain;
}

async function startMeshServer(t: TestContext, server: Workload): Promise<MeshServer> {
  const outcomes: ServerOutcome[] = [];
  const waiters: ((o: ServerOutcome) => void)[] = [];
  const record = (o: ServerOutcome): void => {
    const waiter = waiters.shift();
    if (waiter) waiter(o);
    else outcomes.push(o);
  };
  const sockets = new Set<Socket>();
  const srv = tls.createServer(
    {
      cert: server.issued.chainPem,
      key: keyPem(server.key),
      ca: pem(...SERVER_BUNDLE),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    },
    (socket) => {
      const verdict = verifyPeerChain(peerChain(socket), SERVER_BUNDLE, Date.now(), TRUST_DOMAINS);
      record({ kind: 'session', protocol: socket.getProtocol(), verdict });
      socket.on('error', () => undefined);
      let received = '';
      let answered = false;
      // Answer once the client's line is in, so the close never races the client's write.
      socket.setEncoding('utf8').on('data', (d: string) => {
        received += d;
        if (answered || !received.includes('\n')) return;
        answered = true;
        socket.end(
          verdict.ok
            ? `OK ${verdict.identities.map((i) => i.uri).join(' ')}\n`
            : `REFUSED ${verdict.reason}\n`,
        );
      });
    },
  );
  srv.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  // Node destroys a socket whose client certificate fails verification and reports it here, as a
  // hang-up, with the verify error left on the socket.
  srv.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
    // At run time a verify code string, or null when no certificate was judged (typed as Error).
    const authorizationError = socket.authorizationError as unknown as string | Error | null | undefined;
    record({
      kind: 'refused',
      code: err.code,
      authorizationError:
        authorizationError instanceof Error ? authorizationError.message : (authorizationError ?? undefined),
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.after(async () => {
    for (const s of sockets) s.destroy();
    srv.close();
    await once(srv, 'close');
  });
  return {
    port: (srv.address() as AddressInfo).port,
    nextOutcome() {
      const o = outcomes.shift();
      if (o) return Promise.resolve(o);
      return new Promise((resolve, reject) => {
        const deadline = setTimeout(
          () => reject(new Error('the server saw no connection outcome')),
          PEER_TIMEOUT_MS,
        );
        deadline.unref();
        waiters.push((outcome) => {
          clearTimeout(deadline);
          resolve(outcome);
        });
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 1. openssl verify

/** `openssl verify`: exit code and the X509_V_ERR number it reports (undefined when the chain is OK). */
async function opensslVerify(
  t: TestContext,
  chain: { leaf: Buffer; intermediates?: readonly Buffer[]; roots: readonly Buffer[] },
  extraArgs: readonly string[] = [],
): Promise<{ ok: boolean; error: number | undefined; output: string }> {
  const files = await writeTempFiles(t, {
    'root.pem': pem(...chain.roots),
    'untrusted.pem': pem(...(chain.intermediates ?? [])),
    'leaf.pem': pem(chain.leaf),
  });
  const untrusted = chain.intermediates?.length ? ['-untrusted', files['untrusted.pem']] : [];
  const r = await runPeer(t, 'openssl', [
    'verify',
    ...extraArgs,
    '-CAfile',
    files['root.pem'],
    ...untrusted,
    files['leaf.pem'],
  ]);
  const output = r.stdout + r.stderr;
  const ok = r.code === 0 && output.includes(`${files['leaf.pem']}: OK`);
  const error = /^error (\d+) at \d+ depth lookup/m.exec(output)?.[1];
  return { ok, error: error === undefined ? undefined : Number(error), output };
}

/** X509_V_ERR_* numbers as OpenSSL 3 has them (INVALID_CA was 24 in 1.1); the messages vary more. */
const X509_V_ERR = {
  CERT_NOT_YET_VALID: 9,
  CERT_HAS_EXPIRED: 10,
  SELF_SIGNED_CERT_IN_CHAIN: 19,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 20,
  PATH_LENGTH_EXCEEDED: 25,
  INVALID_CA: 79,
} as const;

test('openssl verify accepts a leaf of a self-signed kmtls root, strictly, for TLS client and server use', async (t) => {
  const leaf = issue(MESH_CA, CLIENT_ID).issued.certificate;
  for (const purpose of ['sslclient', 'sslserver']) {
    const r = await opensslVerify(t, { leaf, roots: [ROOT.certificate] }, [
      '-x509_strict',
      '-purpose',
      purpose,
    ]);
    assert.ok(r.ok, `${purpose}: ${r.output}`);
  }
});

test('openssl verify accepts a plug-in CA chain (root, intermediate, leaf) given the intermediate as untrusted', async (t) => {
  const leaf = issue(PLUGIN_CA, CLIENT_ID).issued;
  assert.equal(leaf.chain.length, 3);
  const r = await opensslVerify(
    t,
    { leaf: leaf.certificate, intermediates: [INTERMEDIATE.certificate], roots: [ROOT.certificate] },
    ['-x509_strict', '-purpose', 'sslclient'],
  );
  assert.ok(r.ok, r.output);
  // The intermediate is what links the leaf to the root: without it, no path.
  const without = await opensslVerify(t, { leaf: leaf.certificate, roots: [ROOT.certificate] });
  assert.equal(without.ok, false);
  assert.equal(without.error, X509_V_ERR.UNABLE_TO_GET_ISSUER_CERT_LOCALLY, without.output);
});

test('openssl verify rejects a kmtls leaf against another kmtls root', async (t) => {
  const leaf = issue(FOREIGN_CA, CLIENT_ID).issued.certificate;
  const r = await opensslVerify(t, { leaf, roots: [ROOT.certificate] });
  assert.equal(r.ok, false);
  assert.equal(r.error, X509_V_ERR.UNABLE_TO_GET_ISSUER_CERT_LOCALLY, r.output);
});

/**
 * A non-CA certificate for `id` signed by `signer`'s key, whatever `signer` is: for chains no kmtls
 * CA would make. Its subject is empty, as kmtls leaves have it, unless `commonName` is given.
 */
function craftedLeaf(
  signer: { certificate: Buffer; key: KeyObject },
  id: SpiffeId,
  commonName?: string,
): { certificate: Buffer; key: KeyObject } {
  const key = ecKey();
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const signerFields = readCertificate(signer.certificate);
  const certificate = buildCertificate(
    {
      serial: randomBytes(8),
      issuerName: signerFields.subjectName,
      subjectName: encodeName(commonName === undefined ? {} : { organization: 'cluster.local', commonName }),
      notBefore: new Date(NOW - HOUR_MS),
      notAfter: new Date(NOW + HOUR_MS),
      subjectPublicKeyInfo: spki,
      isCa: false,
      uris: [id.uri],
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: signerFields.subjectKeyId,
    },
    signer.key,
  );
  return { certificate, key };
}

interface ChainCase {
  readonly name: string;
  readonly chain: readonly Buffer[];
  readonly roots: readonly Buffer[];
  /** What openssl verify says: undefined for OK, else the X509_V_ERR number. */
  readonly openssl: number | undefined;
  /** What verifyPeerChain says with trust domain cluster.local. */
  readonly kmtls: 'ok' | ChainRefusal;
}

function chainCases(): ChainCase[] {
  const workload = issue(MESH_CA, CLIENT_ID);
  const plugin = issue(PLUGIN_CA, CLIENT_ID).issued;
  // Not a CA, but with a subject, so that what it signs names an issuer.
  const notCa = craftedLeaf(ROOT, SERVER_ID, 'not a CA');
  // The plug-in intermediate has pathLen 0: it may sign leaves, not further CAs.
  const beyondPathLen = intermediateCa(INTERMEDIATE, 'sub-intermediate beyond pathLen 0', undefined);
  const roots = [ROOT.certificate];
  return [
    {
      name: 'leaf of the root',
      chain: [workload.issued.certificate],
      roots,
      openssl: undefined,
      kmtls: 'ok',
    },
    {
      name: 'plug-in leaf with its intermediate',
      chain: plugin.chain.slice(0, 2),
      roots,
      openssl: undefined,
      kmtls: 'ok',
    },
    {
      name: 'plug-in leaf without its intermediate',
      chain: [plugin.certificate],
      roots,
      openssl: X509_V_ERR.UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
      kmtls: 'UNKNOWN_CA',
    },
    {
      name: 'leaf of another root',
      chain: [issue(FOREIGN_CA, CLIENT_ID).issued.certificate],
      roots,
      openssl: X509_V_ERR.UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
      kmtls: 'UNKNOWN_CA',
    },
    {
      name: 'leaf that expired an hour after a CA two days behind issued it',
      chain: [issue(PAST_CA, CLIENT_ID, HOUR_MS).issued.certificate],
      roots,
      openssl: X509_V_ERR.CERT_HAS_EXPIRED,
      kmtls: 'CERT_EXPIRED',
    },
    {
      name: 'leaf from a CA two days ahead',
      chain: [issue(FUTURE_CA, CLIENT_ID).issued.certificate],
      roots,
      openssl: X509_V_ERR.CERT_NOT_YET_VALID,
      kmtls: 'NOT_YET_VALID',
    },
    {
      // openssl knows nothing of trust domains: the chain is fine, the identity is not.
      name: 'leaf of a trusted root for trust domain other.example',
      chain: [issue(OTHER_TD_CA, OTHER_TD_ID).issued.certificate],
      roots: SERVER_BUNDLE,
      openssl: undefined,
      kmtls: 'UNTRUSTED_TRUST_DOMAIN',
    },
    {
      name: 'leaf signed by a CA:FALSE certificate of the root',
      chain: [craftedLeaf(notCa, CLIENT_ID).certificate, notCa.certificate],
      roots,
      openssl: X509_V_ERR.INVALID_CA,
      kmtls: 'UNKNOWN_CA',
    },
    {
      name: 'leaf under a CA that an intermediate with pathLen 0 signed',
      chain: [
        craftedLeaf(beyondPathLen, CLIENT_ID).certificate,
        beyondPathLen.certificate,
        INTERMEDIATE.certificate,
      ],
      roots,
      openssl: X509_V_ERR.PATH_LENGTH_EXCEEDED,
      kmtls: 'UNKNOWN_CA',
    },
  ];
}

test('openssl verify and verifyPeerChain agree on which chains are good and, when not, why', async (t) => {
  for (const c of chainCases()) {
    const [leaf, ...intermediates] = c.chain;
    const r = await opensslVerify(t, { leaf: leaf!, intermediates, roots: c.roots });
    assert.equal(r.error, c.openssl, `${c.name}: openssl says ${r.output}`);
    assert.equal(r.ok, c.openssl === undefined, `${c.name}: ${r.output}`);
    const verdict = verifyPeerChain(c.chain, c.roots, Date.now(), TRUST_DOMAINS);
    assert.equal(
      verdict.ok ? 'ok' : verdict.reason,
      c.kmtls,
      `${c.name}: verifyPeerChain says ${JSON.stringify(verdict)}`,
    );
  }
});

// ---------------------------------------------------------------------------------------------
// 2. openssl x509 -text and openssl req -verify

interface TextExtension {
  readonly critical: boolean;
  readonly value: string;
}

/** The X509v3 extensions of `openssl x509 -text` output, by name, each with its (joined) value lines. */
function extensionsOf(text: string): Map<string, TextExtension> {
  const exts = new Map<string, TextExtension>();
  const start = text.indexOf('X509v3 extensions:');
  assert.ok(start >= 0, `no extensions in:\n${text}`);
  let current: { name: string; critical: boolean; lines: string[] } | undefined;
  const flush = () => {
    if (current) exts.set(current.name, { critical: current.critical, value: current.lines.join('\n') });
  };
  for (const line of text.slice(start).split('\n').slice(1)) {
    const header = /^ {12}(\S[^:]*):( critical)?\s*$/.exec(line);
    const value = /^ {16}(.*\S)\s*$/.exec(line);
    if (header) {
      flush();
      current = { name: header[1]!, critical: header[2] !== undefined, lines: [] };
    } else if (value && current) {
      current.lines.push(value[1]!);
    } else {
      break;
    }
  }
  flush();
  return exts;
}

async function x509Text(t: TestContext, der: Buffer): Promise<string> {
  const files = await writeTempFiles(t, { 'cert.pem': toPem(der) });
  const r = await runPeer(t, 'openssl', ['x509', '-noout', '-text', '-in', files['cert.pem']]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

/** OpenSSL prints key identifiers as colon-separated upper-case hex (1.1 prefixes the AKI with `keyid:`). */
const colonHex = (b: Buffer | undefined): string =>
  (b?.toString('hex').toUpperCase().match(/../g) ?? []).join(':');

test('openssl reads a kmtls leaf: critical SPIFFE URI SAN, leaf key usages, both TLS EKUs, CA:FALSE, key identifiers', async (t) => {
  const { issued } = issue(MESH_CA, CLIENT_ID);
  const text = await x509Text(t, issued.certificate);
  const exts = extensionsOf(text);
  assert.deepEqual(exts.get('X509v3 Subject Alternative Name'), {
    critical: true,
    value: `URI:${CLIENT_ID.uri}`,
  });
  assert.match(
    exts.get('X509v3 Subject Alternative Name')?.value ?? '',
    /^URI:spiffe:\/\/cluster\.local\/ns\/[^/]+\/sa\/[^/]+$/,
  );
  assert.deepEqual(exts.get('X509v3 Key Usage'), {
    critical: true,
    value: 'Digital Signature, Key Encipherment',
  });
  assert.equal(
    exts.get('X509v3 Extended Key Usage')?.value,
    'TLS Web Server Authentication, TLS Web Client Authentication',
  );
  assert.deepEqual(exts.get('X509v3 Basic Constraints'), { critical: true, value: 'CA:FALSE' });
  const leafFields = readCertificate(issued.certificate);
  assert.equal(
    exts.get('X509v3 Subject Key Identifier')?.value,
    colonHex(keyIdentifier(leafFields.subjectPublicKeyInfo)),
  );
  assert.equal(
    exts.get('X509v3 Authority Key Identifier')?.value.replace(/^keyid:/, ''),
    colonHex(readCertificate(ROOT.certificate).subjectKeyId),
  );
  assert.equal(exts.size, 6, `unexpected extensions: ${[...exts.keys()].join(', ')}`);
  assert.match(text, /^ {8}Subject: ?$/m, 'the identity is in the SAN only; the subject is empty');
  assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
});

test('openssl reads a kmtls root: CA:TRUE, Certificate Sign, O = trust domain, self-issued', async (t) => {
  const text = await x509Text(t, ROOT.certificate);
  const exts = extensionsOf(text);
  assert.deepEqual(exts.get('X509v3 Basic Constraints'), { critical: true, value: 'CA:TRUE' });
  assert.equal(exts.get('X509v3 Key Usage')?.critical, true);
  assert.match(exts.get('X509v3 Key Usage')?.value ?? '', /^Certificate Sign, CRL Sign$/);
  assert.equal(
    exts.get('X509v3 Subject Key Identifier')?.value,
    colonHex(readCertificate(ROOT.certificate).subjectKeyId),
  );
  const subject = /^ {8}Subject: (.*)$/m.exec(text)?.[1];
  assert.match(subject ?? '', /^O = cluster\.local, CN = kmtls root CA /);
  assert.equal(/^ {8}Issuer: (.*)$/m.exec(text)?.[1], subject);
});

test('openssl req -verify accepts a kmtls CSR and reads the SPIFFE URI it asks for; a CSR with a swapped key fails', async (t) => {
  const good = createCsr(ecKey(), { uris: [CLIENT_ID.uri] });
  // Another key's SubjectPublicKeyInfo (same length for P-256) in place of the signer's.
  const swapped = Buffer.from(good);
  swapped.set(
    verifyCsr(createCsr(ecKey())).subjectPublicKeyInfo,
    good.indexOf(verifyCsr(good).subjectPublicKeyInfo),
  );
  const files = await writeTempFiles(t, {
    'good.csr': toPem(good, 'CERTIFICATE REQUEST'),
    'swapped.csr': toPem(swapped, 'CERTIFICATE REQUEST'),
  });
  const ok = await runPeer(t, 'openssl', ['req', '-verify', '-noout', '-text', '-in', files['good.csr']]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout + ok.stderr, /verify OK/);
  assert.match(
    ok.stdout,
    /X509v3 Subject Alternative Name: critical\n\s+URI:spiffe:\/\/cluster\.local\/ns\/finance\/sa\/payments\n/,
  );
  // OpenSSL 3.0 exits 0 even when the self-signature fails, so the verdict is read from the message.
  const bad = await runPeer(t, 'openssl', ['req', '-verify', '-noout', '-in', files['swapped.csr']]);
  assert.match(
    bad.stdout + bad.stderr,
    /verify failure/,
    'openssl accepted a CSR not signed by the key it carries',
  );
  assert.doesNotMatch(bad.stdout + bad.stderr, /verify OK/);
});

test('the kmtls CA signs CSRs made by openssl req (ECDSA P-256 and RSA 2048), for the caller, not for the CSR', async (t) => {
  const dir = await tempDir(t);
  for (const keyArgs of [
    ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'],
    ['-newkey', 'rsa:2048'],
  ]) {
    const r = await runPeer(
      t,
      'openssl',
      [
        'req',
        '-new',
        ...keyArgs,
        '-nodes',
        '-keyout',
        'key.pem',
        '-subj',
        '/CN=admin',
        '-addext',
        'subjectAltName=URI:spiffe://cluster.local/ns/kube-system/sa/admin',
      ],
      { cwd: dir },
    );
    assert.equal(r.code, 0, r.stderr);
    const issued = MESH_CA.sign(r.stdout, { identities: [CLIENT_ID], method: 'test' });
    assert.deepEqual(readCertificate(issued.certificate).uris, [CLIENT_ID.uri], keyArgs.join(' '));
  }
});

// ---------------------------------------------------------------------------------------------
// 3-5. Real clients against the STRICT port

interface Peer {
  readonly name: string;
  connect(t: TestContext, port: number, creds: ClientCredentials): Promise<ClientReport>;
}

const PEERS: readonly Peer[] = [
  { name: 'openssl s_client', connect: (t, port, creds) => opensslClient(t, port, creds) },
  { name: 'Python ssl', connect: (t, port, creds) => pythonClient(t, port, creds) },
];

/** One client connection to a fresh server: what the client reported and what the server made of it. */
async function connect(
  t: TestContext,
  peer: Peer,
  server: Workload,
  client: ClientCredentials,
): Promise<{ report: ClientReport; outcome: ServerOutcome }> {
  const srv = await startMeshServer(t, server);
  const report = await peer.connect(t, srv.port, client);
  const outcome = await srv.nextOutcome();
  return { report, outcome };
}

/** The verify error the server's TLS layer refused the client for; a session if it did not refuse. */
const tlsRefusal = (o: ServerOutcome): string | undefined =>
  o.kind === 'refused'
    ? o.authorizationError
    : `no refusal: a session with verdict ${JSON.stringify(o.verdict)}`;

const describeRun = (report: ClientReport): string =>
  `client exit ${report.raw.code}\nstdout: ${report.raw.stdout}\nstderr: ${report.raw.stderr}`;

const SERVER = issue(MESH_CA, SERVER_ID);

for (const peer of PEERS) {
  test(
    `${peer.name} completes a mutual handshake: the server sees its SPIFFE ID, it verifies the server's`,
    TEST_TIMEOUT,
    async (t) => {
      const { report, outcome } = await connect(t, peer, SERVER, credentials(issue(MESH_CA, CLIENT_ID)));
      assert.equal(report.handshake, true, describeRun(report));
      assert.deepEqual(report.serverUris, [SERVER_ID.uri], 'the client saw the server identity');
      assert.equal(report.answer, `OK ${CLIENT_ID.uri}`, describeRun(report));
      assert.equal(outcome.kind, 'session');
      assert.ok(outcome.kind === 'session' && outcome.verdict.ok);
      assert.deepEqual(
        outcome.verdict.identities.map((i) => i.uri),
        [CLIENT_ID.uri],
      );
    },
  );

  test(
    `${peer.name} negotiates TLSv1.3 by default with a server whose minimum is TLSv1.2`,
    TEST_TIMEOUT,
    async (t) => {
      const { report, outcome } = await connect(t, peer, SERVER, credentials(issue(MESH_CA, CLIENT_ID)));
      assert.equal(report.protocol, 'TLSv1.3', describeRun(report));
      assert.ok(outcome.kind === 'session');
      assert.equal(outcome.protocol, 'TLSv1.3');
    },
  );

  test(
    `${peer.name} presenting a plug-in CA chain (leaf, intermediate) passes a server that trusts only the root`,
    TEST_TIMEOUT,
    async (t) => {
      const { report, outcome } = await connect(t, peer, SERVER, credentials(issue(PLUGIN_CA, CLIENT_ID)));
      assert.equal(report.answer, `OK ${CLIENT_ID.uri}`, describeRun(report));
      assert.ok(outcome.kind === 'session' && outcome.verdict.ok);
    },
  );

  test(
    `${peer.name} presenting a certificate from a CA outside the server's bundle is refused by TLS`,
    TEST_TIMEOUT,
    async (t) => {
      const { report, outcome } = await connect(t, peer, SERVER, credentials(issue(FOREIGN_CA, CLIENT_ID)));
      // In TLS 1.3 the client finishes (and verifies the server) before the server judges its certificate.
      assert.equal(report.handshake, true, describeRun(report));
      assert.equal(report.answer, undefined, describeRun(report));
      // The client sent its chain up to the foreign root, which the server does not trust.
      assert.equal(tlsRefusal(outcome), 'SELF_SIGNED_CERT_IN_CHAIN');
    },
  );

  test(`${peer.name} presenting an expired certificate is refused by TLS`, TEST_TIMEOUT, async (t) => {
    const expired = issue(PAST_CA, CLIENT_ID, HOUR_MS);
    assert.ok(expired.issued.notAfter.getTime() < Date.now(), 'the leaf expired in real time');
    const { report, outcome } = await connect(t, peer, SERVER, credentials(expired));
    assert.equal(report.handshake, true, describeRun(report));
    assert.equal(report.answer, undefined, describeRun(report));
    assert.equal(tlsRefusal(outcome), 'CERT_HAS_EXPIRED');
  });

  test(
    `${peer.name} from an untrusted trust domain passes TLS but verifyPeerChain refuses UNTRUSTED_TRUST_DOMAIN`,
    TEST_TIMEOUT,
    async (t) => {
      const { report, outcome } = await connect(
        t,
        peer,
        SERVER,
        credentials(issue(OTHER_TD_CA, OTHER_TD_ID)),
      );
      assert.equal(report.handshake, true, describeRun(report));
      assert.equal(report.answer, 'REFUSED UNTRUSTED_TRUST_DOMAIN', describeRun(report));
      assert.ok(outcome.kind === 'session' && !outcome.verdict.ok);
      assert.equal(outcome.verdict.reason, 'UNTRUSTED_TRUST_DOMAIN');
      assert.match(outcome.verdict.message, /spiffe:\/\/other\.example\/ns\/finance\/sa\/payments/);
    },
  );

  test(`${peer.name} refuses a server certificate from another CA`, TEST_TIMEOUT, async (t) => {
    const { report, outcome } = await connect(
      t,
      peer,
      issue(FOREIGN_CA, SERVER_ID),
      credentials(issue(MESH_CA, CLIENT_ID)),
    );
    assert.equal(report.handshake, false, describeRun(report));
    // The server sends its chain up to its (foreign) root.
    assert.equal(report.verifyError, X509_V_ERR.SELF_SIGNED_CERT_IN_CHAIN, describeRun(report));
    assert.equal(outcome.kind, 'refused', 'the server never got a session');
  });

  test(`${peer.name} refuses an expired server certificate`, TEST_TIMEOUT, async (t) => {
    const { report, outcome } = await connect(
      t,
      peer,
      issue(PAST_CA, SERVER_ID, HOUR_MS),
      credentials(issue(MESH_CA, CLIENT_ID)),
    );
    assert.equal(report.handshake, false, describeRun(report));
    assert.equal(report.verifyError, X509_V_ERR.CERT_HAS_EXPIRED, describeRun(report));
    assert.equal(outcome.kind, 'refused', 'the server never got a session');
  });
}

test(
  'openssl s_client -tls1_1 is refused by the server minimum of TLSv1.2; -tls1_2 is accepted',
  TEST_TIMEOUT,
  async (t) => {
    const srv = await startMeshServer(t, SERVER);
    const creds = credentials(issue(MESH_CA, CLIENT_ID));
    const v12 = await opensslClient(t, srv.port, creds, { extraArgs: ['-tls1_2'] });
    assert.equal(v12.protocol, 'TLSv1.2', describeRun(v12));
    assert.equal(v12.answer, `OK ${CLIENT_ID.uri}`, describeRun(v12));
    const o12 = await srv.nextOutcome();
    assert.ok(o12.kind === 'session');
    assert.equal(o12.protocol, 'TLSv1.2');
    // Security level 0 so the client really offers TLS 1.1 (OpenSSL 3 disables it at level 1): the refusal is the server's.
    const v11 = await opensslClient(t, srv.port, creds, {
      extraArgs: ['-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0'],
    });
    assert.equal(v11.handshake, false, describeRun(v11));
    assert.notEqual(v11.raw.code, 0);
    assert.match(v11.raw.stderr, /alert protocol version/, describeRun(v11));
    assert.deepEqual(await srv.nextOutcome(), {
      kind: 'refused',
      code: 'ERR_SSL_UNSUPPORTED_PROTOCOL',
      authorizationError: undefined,
    });
  },
);

// Every kmtls leaf has an empty subject, so any workload can sign a certificate with its own key
// whose issuer Name is empty (Node's X509Certificate.issuer is then undefined). Presented to the
// CA's renewal path, that must be a refusal value, not a TypeError out of the authenticator.
test('a certificate signed by a workload leaf (empty issuer name) is refused UNKNOWN_CA, never thrown', async (t) => {
  const workload = issue(MESH_CA, SERVER_ID);
  const forged = craftedLeaf(
    { certificate: workload.issued.certificate, key: workload.key },
    CLIENT_ID,
  ).certificate;
  const chain = [forged, workload.issued.certificate];
  const r = await opensslVerify(t, {
    leaf: forged,
    intermediates: [workload.issued.certificate],
    roots: [ROOT.certificate],
  });
  assert.equal(r.error, X509_V_ERR.INVALID_CA, r.output);
  const authenticator = new ClientCertificateAuthenticator(
    () => ({ roots: [ROOT.certificate], trustDomains: TRUST_DOMAINS }),
    { now: () => Date.now() },
  );
  let result: AuthResult;
  try {
    result = await authenticator.authenticate({ peerChain: chain });
  } catch (err) {
    assert.fail(`the authenticator threw instead of refusing: ${String(err)}`);
  }
  assert.equal(result?.ok, false);
  const verdict = verifyPeerChain(chain, [ROOT.certificate], Date.now(), TRUST_DOMAINS);
  assert.equal(verdict.ok ? 'ok' : verdict.reason, 'UNKNOWN_CA');
});
