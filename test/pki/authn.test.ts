/**
 * How callers of the CA prove who they are: bootstrap tokens bound to one identity each, client
 * certificates checked at the injected time, and the chain that tries them in order. The last word
 * is always the CA: a caller's identities, and nothing in its CSR, end up in the certificate.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import type { SpiffeId } from '../../src/identity/index.js';
import { parseSpiffeId } from '../../src/identity/index.js';
import type { AuthResult, CallerAuthenticator, CallerCredentials } from '../../src/pki/authn.js';
import {
  authenticateCaller,
  BootstrapTokenAuthenticator,
  ClientCertificateAuthenticator,
} from '../../src/pki/authn.js';
import type { AuthenticatedCaller } from '../../src/pki/ca.js';
import { CertificateAuthority, createRoot, selfSignedMaterial } from '../../src/pki/ca.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import { createCsr } from '../../src/pki/csr.js';
import { readCertificate } from '../../src/pki/x509-read.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');

function spiffe(uri: string): SpiffeId {
  const r = parseSpiffeId(uri);
  assert.ok(r.ok, uri);
  return r.id;
}

const PAYMENTS = spiffe('spiffe://cluster.local/ns/finance/sa/payments');
const LEDGER = spiffe('spiffe://cluster.local/ns/finance/sa/ledger');

function ecKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

const ROOT = createRoot({ trustDomain: 'cluster.local', now: T0 - DAY_MS, random: randomBytes });
const CA = new CertificateAuthority(selfSignedMaterial('cluster.local', ROOT), {
  clock: { now: () => T0 },
  random: randomBytes,
});
const FOREIGN_ROOT = createRoot({ trustDomain: 'cluster.local', now: T0 - DAY_MS, random: randomBytes });

function leafChain(ca: CertificateAuthority, id: SpiffeId, ttlMs = HOUR_MS): Buffer[] {
  return [...ca.sign(createCsr(ecKey()), { identities: [id], method: 'test' }, { ttlMs }).chain];
}

function accepted(result: AuthResult): AuthenticatedCaller {
  assert.ok(result?.ok, `refused: ${JSON.stringify(result)}`);
  return result.caller;
}

function refusal(result: AuthResult): string {
  assert.ok(result !== undefined, 'no opinion, expected a refusal');
  assert.ok(!result.ok, `accepted: ${JSON.stringify(result)}`);
  return result.reason;
}

// ---------------------------------------------------------------------------------------------
// BootstrapTokenAuthenticator

test('a bootstrap token is 32 bytes from the injected random source, base64url', () => {
  const sizes: number[] = [];
  const drawn: Buffer[] = [];
  const random = (n: number) => {
    sizes.push(n);
    // Bytes that base64 would write with + and /, so base64url is told apart from base64.
    const b = Buffer.alloc(n, 0xfb);
    b[0] = drawn.length;
    drawn.push(b);
    return b;
  };
  const auth = new BootstrapTokenAuthenticator(random);
  const tokens = [auth.mint(PAYMENTS), auth.mint(LEDGER)];
  assert.deepEqual(sizes, [32, 32]);
  for (const [i, token] of tokens.entries()) {
    assert.equal(token, drawn[i]!.toString('base64url'));
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(Buffer.from(token, 'base64url'), drawn[i]);
  }
  assert.notEqual(tokens[0], tokens[1]);
});

test('a minted token authenticates exactly the identity it was minted for, by bootstrap-token', async () => {
  const auth = new BootstrapTokenAuthenticator(randomBytes);
  const forPayments = auth.mint(PAYMENTS);
  const forLedger = auth.mint(LEDGER);
  assert.deepEqual(accepted(await auth.authenticate({ bearerToken: forPayments })), {
    identities: [PAYMENTS],
    method: 'bootstrap-token',
  });
  assert.deepEqual(accepted(await auth.authenticate({ bearerToken: forLedger })).identities, [LEDGER]);
});

test('a token that was never minted, or differs from one in any way, is refused', async () => {
  const auth = new BootstrapTokenAuthenticator(randomBytes);
  const token = auth.mint(PAYMENTS);
  const variants: [string, string][] = [
    ['never minted', randomBytes(32).toString('base64url')],
    ['empty', ''],
    ['one character changed', `${token[0] === 'A' ? 'B' : 'A'}${token.slice(1)}`],
    ['truncated', token.slice(0, -1)],
    ['with a trailing newline', `${token}\n`],
    ['with Bearer prefix', `Bearer ${token}`],
    ['upper-cased', token.toUpperCase() === token ? token.toLowerCase() : token.toUpperCase()],
    ['as standard base64', Buffer.from(token, 'base64url').toString('base64')],
  ];
  for (const [name, bearerToken] of variants) {
    if (bearerToken === token) continue; // a variant that happens to equal the token proves nothing
    assert.equal(refusal(await auth.authenticate({ bearerToken })), 'unknown bootstrap token', name);
  }
  accepted(await auth.authenticate({ bearerToken: token }));
});

test('a revoked token is refused; other tokens, even for the same identity, still work', async () => {
  const auth = new BootstrapTokenAuthenticator(randomBytes);
  const first = auth.mint(PAYMENTS);
  const second = auth.mint(PAYMENTS);
  auth.revoke(first);
  assert.equal(refusal(await auth.authenticate({ bearerToken: first })), 'unknown bootstrap token');
  assert.deepEqual(accepted(await auth.authenticate({ bearerToken: second })).identities, [PAYMENTS]);
  auth.revoke('never minted'); // revoking an unknown token is harmless
  accepted(await auth.authenticate({ bearerToken: second }));
});

test('without a bearer token the bootstrap authenticator has no opinion', async () => {
  const auth = new BootstrapTokenAuthenticator(randomBytes);
  auth.mint(PAYMENTS);
  assert.equal(await auth.authenticate({}), undefined);
  assert.equal(await auth.authenticate({ peerChain: leafChain(CA, PAYMENTS) }), undefined);
});

test('a token for payments gets a certificate for payments only, whatever the CSR asks for', async () => {
  const auth = new BootstrapTokenAuthenticator(randomBytes);
  const token = auth.mint(PAYMENTS);
  auth.mint(LEDGER);
  const caller = accepted(await auth.authenticate({ bearerToken: token }));
  for (const asked of [[LEDGER.uri], [PAYMENTS.uri, LEDGER.uri], []]) {
    const issued = CA.sign(createCsr(ecKey(), { uris: asked }), caller);
    assert.deepEqual(readCertificate(issued.certificate).uris, [PAYMENTS.uri], `CSR asked for ${asked}`);
    assert.deepEqual(
      issued.identities.map((i) => i.uri),
      [PAYMENTS.uri],
    );
  }
});

// ---------------------------------------------------------------------------------------------
// ClientCertificateAuthenticator

function clientCertAuth(opts: { roots?: () => readonly Buffer[]; now?: () => number } = {}) {
  return new ClientCertificateAuthenticator(
    () => ({ roots: opts.roots?.() ?? [ROOT.certificate], trustDomains: ['cluster.local'] }),
    { now: opts.now ?? (() => T0) },
  );
}

test('a valid client chain authenticates the identity of its leaf, by client-certificate', async () => {
  const caller = accepted(await clientCertAuth().authenticate({ peerChain: leafChain(CA, PAYMENTS) }));
  assert.deepEqual(caller, { identities: [PAYMENTS], method: 'client-certificate' });
});

test('an expired client chain is refused with the reason and the time it expired', async () => {
  let now = T0;
  const auth = clientCertAuth({ now: () => now });
  const chain = leafChain(CA, PAYMENTS, HOUR_MS);
  accepted(await auth.authenticate({ peerChain: chain }));
  now = T0 + HOUR_MS + 1000;
  assert.match(
    refusal(await auth.authenticate({ peerChain: chain })),
    new RegExp(`^CERT_EXPIRED: certificate expired at ${new Date(T0 + HOUR_MS).toISOString()}$`),
  );
});

test('a chain of a foreign root is refused as UNKNOWN_CA', async () => {
  const foreign = new CertificateAuthority(selfSignedMaterial('cluster.local', FOREIGN_ROOT), {
    clock: { now: () => T0 },
    random: randomBytes,
  });
  assert.match(
    refusal(await clientCertAuth().authenticate({ peerChain: leafChain(foreign, PAYMENTS) })),
    /^UNKNOWN_CA: the certificate chain does not lead to a trusted root/,
  );
});

test('the trust bundle is read at each call: a root removed from it stops authenticating', async () => {
  let roots: readonly Buffer[] = [ROOT.certificate];
  const auth = clientCertAuth({ roots: () => roots });
  const chain = leafChain(CA, PAYMENTS);
  accepted(await auth.authenticate({ peerChain: chain }));
  roots = [FOREIGN_ROOT.certificate];
  assert.match(refusal(await auth.authenticate({ peerChain: chain })), /^UNKNOWN_CA: /);
});

test('without a client chain the certificate authenticator has no opinion', async () => {
  const auth = clientCertAuth();
  assert.equal(await auth.authenticate({}), undefined);
  assert.equal(await auth.authenticate({ peerChain: [] }), undefined);
  assert.equal(await auth.authenticate({ bearerToken: 'x' }), undefined);
});

// ---------------------------------------------------------------------------------------------
// authenticateCaller

/** An authenticator with a fixed answer that records whether it was asked. */
function fixed(result: AuthResult): CallerAuthenticator & { calls: number } {
  const a = {
    calls: 0,
    async authenticate(_: CallerCredentials): Promise<AuthResult> {
      a.calls++;
      return result;
    },
  };
  return a;
}

const ok = (id: SpiffeId, method: string): AuthResult => ({
  ok: true,
  caller: { identities: [id], method },
});

test('authenticateCaller: the first authenticator that succeeds decides; later ones are not asked', async () => {
  const first = fixed(ok(PAYMENTS, 'first'));
  const second = fixed(ok(LEDGER, 'second'));
  assert.deepEqual(accepted(await authenticateCaller([first, second], {})), {
    identities: [PAYMENTS],
    method: 'first',
  });
  assert.equal(second.calls, 0);
});

test('authenticateCaller: refusals and no-opinions before a success do not stop it', async () => {
  const chain = [fixed(undefined), fixed({ ok: false, reason: 'nope' }), fixed(ok(LEDGER, 'third'))];
  assert.equal(accepted(await authenticateCaller(chain, {})).method, 'third');
  assert.deepEqual(
    chain.map((a) => a.calls),
    [1, 1, 1],
  );
});

test('authenticateCaller: when every authenticator refuses, the refusal lists each reason in order', async () => {
  const chain = [
    fixed({ ok: false, reason: 'unknown bootstrap token' }),
    fixed(undefined),
    fixed({ ok: false, reason: 'CERT_EXPIRED: certificate expired at X' }),
  ];
  assert.equal(
    refusal(await authenticateCaller(chain, {})),
    'unknown bootstrap token; CERT_EXPIRED: certificate expired at X',
  );
});

test('authenticateCaller: no credentials of any kind says what to present', async () => {
  const auth = [new BootstrapTokenAuthenticator(randomBytes), clientCertAuth()];
  assert.equal(
    refusal(await authenticateCaller(auth, {})),
    'no credentials: present a bootstrap token or a client certificate',
  );
  assert.equal(
    refusal(await authenticateCaller([], { bearerToken: 't' })),
    'no credentials: present a bootstrap token or a client certificate',
  );
});

test('authenticateCaller with real authenticators: a token for payments wins over a ledger client certificate', async () => {
  const tokens = new BootstrapTokenAuthenticator(randomBytes);
  const token = tokens.mint(PAYMENTS);
  const credentials = { bearerToken: token, peerChain: leafChain(CA, LEDGER) };
  const caller = accepted(await authenticateCaller([tokens, clientCertAuth()], credentials));
  assert.deepEqual(caller, { identities: [PAYMENTS], method: 'bootstrap-token' });
  assert.deepEqual(readCertificate(CA.sign(createCsr(ecKey()), caller).certificate).uris, [PAYMENTS.uri]);
  // A revoked token falls through to the client certificate, which proves ledger and nothing else.
  tokens.revoke(token);
  const fallback = accepted(await authenticateCaller([tokens, clientCertAuth()], credentials));
  assert.deepEqual(fallback, { identities: [LEDGER], method: 'client-certificate' });
});

test('authenticateCaller with real authenticators: a bad token and an expired certificate give both reasons', async () => {
  const tokens = new BootstrapTokenAuthenticator(randomBytes);
  const later = clientCertAuth({ now: () => T0 + 2 * HOUR_MS });
  const reason = refusal(
    await authenticateCaller([tokens, later], {
      bearerToken: 'stolen',
      peerChain: leafChain(CA, PAYMENTS, HOUR_MS),
    }),
  );
  assert.match(reason, /^unknown bootstrap token; CERT_EXPIRED: certificate expired at /);
});
