export type { DeriveOptions, PlacedPod, PodAddressing, PodInstance } from './derive.js';
export {
  decidingPolicy,
  deriveProxyConfig,
  inboundPorts,
  podInstances,
  portIsHttp2,
  portProtocol,
} from './derive.js';
export type {
  EdgeEndpointExplanation,
  EdgeExplanation,
  LookupFailure,
  PodExplanation,
  PortExplanation,
} from './explain.js';
export { explainEdge, explainPod, findWorkload, orderAssumption, resolveHost } from './explain.js';
export type { MembershipInput } from './membership.js';
export {
  decideMembership,
  INJECT_LABEL,
  ISTIO_INJECTION_LABEL,
  KMTLS_INJECT_LABEL,
  KMTLS_INJECTION_LABEL,
  SIDECAR_CONTAINER,
  TLS_MODE_LABEL,
} from './membership.js';
export type { PlacedPodSpec, Placement } from './placement.js';
export { CP_PATHS, controlPlaneIdentity, placementSchema } from './placement.js';
export type {
  InboundPortConfig,
  InterceptionConfig,
  OutboundConfig,
  OutboundEndpointConfig,
  ProxyConfig,
  ProxyConfigResult,
} from './proxy-config.js';
export {
  CLIENT_ALPN_H2,
  CLIENT_ALPN_HTTP,
  CLIENT_ALPN_TCP,
  interceptionSchema,
  MESH_ALPNS,
  parseProxyConfig,
  proxyConfigSchema,
} from './proxy-config.js';
export type * from './resources.js';
export { EMPTY_RESOURCES, POD_SOURCE_KINDS } from './resources.js';
export type { MeshOptions, MeshSnapshot, MeshWorkload } from './snapshot.js';
export {
  buildMeshSnapshot,
  collectProbes,
  DEFAULT_MESH_OPTIONS,
  discoverCallers,
  REWRITE_PROBES_ANNOTATION,
  serviceHosts,
} from './snapshot.js';
