export {
  checkTrustDomain,
  DEFAULT_TRUST_DOMAIN,
  meshIdentity,
  meshIdentityParts,
  parseSpiffeId,
  type SpiffeId,
  type SpiffeIdResult,
  type SpiffeIdRule,
  spiffeIdEquals,
} from './spiffe-id.js';
