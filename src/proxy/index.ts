export { accessLog } from './access-log.js';
export { startAdmin } from './admin.js';
export type { ProxyIdentity } from './certs.js';
export { AEAD_CIPHERS, buildIdentity, peerChain } from './certs.js';
export type {
  ControlPlaneClientOptions,
  ControlPlaneClientStatus,
  ControlPlaneLink,
  FetchedCert,
} from './cp-client.js';
export {
  ControlPlaneClient,
  ControlPlaneRefusal,
  callControlPlane,
  DEFAULT_STREAM_IDLE_TIMEOUT_MS,
  requestCertificate,
} from './cp-client.js';
export type { Detection } from './detect.js';
export { detectTransport } from './detect.js';
export type { ConnectionRecord, ProxyObserver, RefusalReason, RequestRecord, Transport } from './events.js';
export { fanOut, NO_OBSERVER, REFUSAL_REASONS } from './events.js';
export { ProxyMetrics } from './metrics.js';
export { Sidecar } from './proxy.js';
export type { PortTally } from './recent.js';
export { RecentConnections } from './recent.js';
export { parseAddress } from './runtime.js';
export type { AppProber, AppProbers, StatusServerOptions } from './status-port.js';
export {
  APP_HEALTH_PREFIX,
  APP_PROBERS_ENV,
  parseAppProbers,
  READY_PATH,
  runAppProbe,
  startStatusServer,
} from './status-port.js';
