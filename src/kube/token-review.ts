import type { KubeConfig, V1TokenReview } from '@kubernetes/client-node';
import { AuthenticationV1Api } from '@kubernetes/client-node';
import { meshIdentity } from '../identity/index.js';
import type { AuthResult, CallerAuthenticator, CallerCredentials } from '../pki/index.js';

/** The audience sidecars' projected ServiceAccount tokens are minted for. */
export const TOKEN_AUDIENCE = 'kmtls';

const SA_USER = /^system:serviceaccount:([^:]+):([^:]+)$/;

/**
 * A sidecar's first certificate request, authenticated by its pod's projected ServiceAccount token
 * (audience `kmtls`), checked by the API server with a TokenReview — Istio's KubeJWTAuthenticator.
 * The certificate is for that ServiceAccount's identity only. A JWT that is not a ServiceAccount's is
 * not this authenticator's kind; a bootstrap token of the local mesh is left to the next one.
 */
export class TokenReviewAuthenticator implements CallerAuthenticator {
  private readonly api: AuthenticationV1Api;

  constructor(
    kc: KubeConfig,
    private readonly trustDomain: string,
    private readonly audience = TOKEN_AUDIENCE,
  ) {
    this.api = kc.makeApiClient(AuthenticationV1Api);
  }

  async authenticate(credentials: CallerCredentials): Promise<AuthResult> {
    const token = credentials.bearerToken;
    // A JWT has three dot-separated parts; anything else is some other kind of token.
    if (token === undefined || token.split('.').length !== 3) return undefined;
    let review: V1TokenReview;
    try {
      review = await this.api.createTokenReview({
        body: {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenReview',
          spec: { token, audiences: [this.audience] },
        },
      });
    } catch (err) {
      return { ok: false, reason: `TokenReview failed: ${(err as Error).message}` };
    }
    const status = review.status;
    if (!status?.authenticated) {
      return {
        ok: false,
        reason: `the API server did not authenticate the token${status?.error ? `: ${status.error}` : ''}`,
      };
    }
    // The API server names the audiences the token is good for; none named is not "any".
    if (!status.audiences?.includes(this.audience)) {
      return { ok: false, reason: `the token is not for audience ${this.audience}` };
    }
    const m = SA_USER.exec(status.user?.username ?? '');
    if (!m)
      return {
        ok: false,
        reason: `the token is not a ServiceAccount's (user ${status.user?.username ?? '?'})`,
      };
    const id = meshIdentity(this.trustDomain, m[1]!, m[2]!);
    if (!id.ok) return { ok: false, reason: id.message };
    return { ok: true, caller: { identities: [id.id], method: 'token-review' } };
  }
}
