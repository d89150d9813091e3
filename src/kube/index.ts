export type { KindRef } from './client.js';
export { isServed, KubeWatch, loadKubeConfig, statusOf } from './client.js';
export type { KubeControlPlaneOptions } from './controller.js';
export { CACERTS_SECRET, loadOrCreateClusterCa, startKubeControlPlane, tlsWants } from './controller.js';
export { LeaderElector } from './leader.js';
export {
  MANAGED_BY,
  ROOT_CONFIGMAP,
  ROOT_CONFIGMAP_KEY,
  RootPublisher,
  WEBHOOK_CONFIGURATION,
} from './publisher.js';
export type { SecretReader } from './rbac-audit.js';
export { auditSecretReaders } from './rbac-audit.js';
export { KubeSecretStore } from './secret-store.js';
export { KubeSource, SIDECAR_CONTAINER_NAME, WATCHED } from './source.js';
export {
  accessFor,
  defaultTlsSecretName,
  TLS_SECRET_NAME,
  TLS_SECRET_OPT_IN,
  TlsSecretReconciler,
} from './tls-secrets.js';
export { TOKEN_AUDIENCE, TokenReviewAuthenticator } from './token-review.js';
export { clusterSupportsNativeSidecars, INJECT_PATH, startInjectionWebhook } from './webhook.js';
