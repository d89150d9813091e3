export type { AuthResult, CallerAuthenticator, CallerCredentials } from './authn.js';
export { authenticateCaller, BootstrapTokenAuthenticator, ClientCertificateAuthenticator } from './authn.js';
export type { AuthenticatedCaller, CaMaterial, IssuedCertificate, Signer } from './ca.js';
export {
  CertificateAuthority,
  CLOCK_SKEW_GRACE_MS,
  caMaterialFromFiles,
  createRoot,
  DEFAULT_LEAF_TTL_MS,
  DEFAULT_ROOT_TTL_MS,
  MAX_LEAF_TTL_MS,
  selfSignedMaterial,
} from './ca.js';
export type { CacertsFiles, StoredCa } from './ca-store.js';
export {
  CA_SECRET_NAME,
  caFromSecret,
  caToSecret,
  DEFAULT_CONTROL_PLANE_NAMESPACE,
  loadCa,
  materialOf,
  saveCa,
} from './ca-store.js';
export type { Clock, RandomBytes } from './clock.js';
export { DAY_MS, formatDuration, HOUR_MS, parseDuration } from './clock.js';
export type { VerifiedCsr } from './csr.js';
export { checkWorkloadKey, createCsr, importPublicKey, verifyCsr } from './csr.js';
export { FileSecretStore, writeFileAtomic } from './file-secret-store.js';
export type { CertificateReport } from './inspect.js';
export { inspectCertificates } from './inspect.js';
export type {
  CertificateRenewerOptions,
  CertificateStatus,
  Renewal,
  RenewalFailure,
  RenewerStatus,
  Timer,
  TimerHandle,
  Validity,
} from './renewal.js';
export { CertificateRenewer, certificateStatus, renewalDelayMs, retryDelayMs, timeLeft } from './renewal.js';
export type { RootKeyPair, RotationState, RotationStatus, SelfSignedCaState } from './rotation.js';
export {
  abortRotation,
  beginRotation,
  initialCaState,
  recordLeafTtl,
  retireOldRoot,
  rotationStatus,
  switchSigner,
} from './rotation.js';
export type { Secret, SecretStore, SecretType } from './secret-store.js';
export {
  SECRET_TYPE_OPAQUE,
  SECRET_TYPE_TLS,
  secretFromManifest,
  secretProblem,
  secretToManifest,
} from './secret-store.js';
export type { TlsSecretAction, TlsSecretRequest, TlsSecretResult } from './tls-secret.js';
export { ensureTlsSecret, MANAGED_BY_LABEL, TLS_SECRET_ANNOTATION } from './tls-secret.js';
export type { ChainRefusal, ChainVerdict } from './verify.js';
export { verifyPeerChain } from './verify.js';
export { pemBlocks, toPem } from './x509.js';
export type { CertificateFields } from './x509-read.js';
export { readCertificate } from './x509-read.js';
