import { createHash } from 'node:crypto';
import type { SpiffeId } from '../identity/index.js';
import type { AuthenticatedCaller } from './ca.js';
import type { Clock, RandomBytes } from './clock.js';
import { verifyPeerChain } from './verify.js';

/** What a caller of the CA presents: a bearer token, a verified TLS client chain, or both. */
export interface CallerCredentials {
  readonly bearerToken?: string;
  /** The client's certificate chain from the TLS handshake, leaf first, DER. */
  readonly peerChain?: readonly Buffer[];
}

/** `undefined`: these credentials are not this authenticator's kind; let the next one try. */
export type AuthResult =
  | { readonly ok: true; readonly caller: AuthenticatedCaller }
  | { readonly ok: false; readonly reason: string }
  | undefined;

/** One way of proving who is asking. The CA's callers go through a chain of these, in order. */
export interface CallerAuthenticator {
  authenticate(credentials: CallerCredentials): Promise<AuthResult>;
}

const digest = (token: string) => createHash('sha256').update(token, 'utf8').digest('hex');

/**
 * Bootstrap tokens, as the local mesh hands one to each sidecar: each token is bound to exactly one
 * identity when it is minted, so it can never obtain a certificate for another. Only hashes are kept.
 */
export class BootstrapTokenAuthenticator implements CallerAuthenticator {
  private readonly byDigest = new Map<string, SpiffeId>();

  constructor(
    private readonly random: RandomBytes,
    /** Where tokens minted elsewhere are read from, when one is not known yet. */
    private readonly reload?: () => Promise<Record<string, SpiffeId>>,
  ) {}

  /** Mints a token for one identity: 32 random bytes, base64url. */
  mint(identity: SpiffeId): string {
    const token = this.random(32).toString('base64url');
    this.byDigest.set(digest(token), identity);
    return token;
  }

  revoke(token: string): void {
    this.byDigest.delete(digest(token));
  }

  /** The minted tokens as digest → identity, for a control plane in another process to load. */
  digests(): Record<string, string> {
    return Object.fromEntries([...this.byDigest].map(([d, id]) => [d, id.uri]));
  }

  /** Accepts tokens minted elsewhere, known only by their digests. Replaces what was loaded before. */
  load(digests: Readonly<Record<string, SpiffeId>>): void {
    this.byDigest.clear();
    for (const [d, id] of Object.entries(digests)) this.byDigest.set(d, id);
  }

  async authenticate(credentials: CallerCredentials): Promise<AuthResult> {
    if (credentials.bearerToken === undefined) return undefined;
    // Looked up by digest: no comparison of secret bytes that could leak through timing.
    let identity = this.byDigest.get(digest(credentials.bearerToken));
    if (!identity && this.reload) {
      // Tokens minted after this process started: look at the source once more.
      this.load(await this.reload());
      identity = this.byDigest.get(digest(credentials.bearerToken));
    }
    if (!identity) return { ok: false, reason: 'unknown bootstrap token' };
    return { ok: true, caller: { identities: [identity], method: 'bootstrap-token' } };
  }
}

/**
 * Renewals: the caller's current certificate, presented in the TLS handshake, proves its identity
 * (Istio's ClientCertAuthenticator). The chain is checked here against the trust bundle at the
 * injected time, whatever the transport already checked.
 */
export class ClientCertificateAuthenticator implements CallerAuthenticator {
  constructor(
    private readonly trust: () => { roots: readonly Buffer[]; trustDomains: readonly string[] },
    private readonly clock: Clock,
  ) {}

  async authenticate(credentials: CallerCredentials): Promise<AuthResult> {
    if (!credentials.peerChain || credentials.peerChain.length === 0) return undefined;
    const { roots, trustDomains } = this.trust();
    const verdict = verifyPeerChain(credentials.peerChain, roots, this.clock.now(), trustDomains);
    if (!verdict.ok) return { ok: false, reason: `${verdict.reason}: ${verdict.message}` };
    return { ok: true, caller: { identities: verdict.identities, method: 'client-certificate' } };
  }
}

/**
 * Tries each authenticator in order, as Istio's `security.Authenticate` does: the first that
 * succeeds decides; when none does, the refusal lists every reason.
 */
export async function authenticateCaller(
  authenticators: readonly CallerAuthenticator[],
  credentials: CallerCredentials,
): Promise<AuthResult> {
  const reasons: string[] = [];
  for (const a of authenticators) {
    const result = await a.authenticate(credentials);
    if (result?.ok) return result;
    if (result) reasons.push(result.reason);
  }
  return {
    ok: false,
    reason:
      reasons.length > 0
        ? reasons.join('; ')
        : 'no credentials: present a bootstrap token or a client certificate',
  };
}
