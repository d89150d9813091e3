export type { AnalysisInput, CallerFact, ProbeFact } from './analyze.js';
export { analyze } from './analyze.js';
export type {
  EdgeContext,
  EdgeDecision,
  EdgeEndpoint,
  EdgeQuery,
  EdgeSource,
  EndpointVerdict,
  ServerMode,
  Verdict,
  VerdictCode,
} from './client-tls.js';
export { decideEdge, judge, VERDICT_CODES } from './client-tls.js';
export type {
  DestinationRuleIndex,
  MergedDestinationRule,
  RuleLookup,
  TlsLevel,
} from './destination-rule.js';
export {
  clusterTlsFor,
  DEFAULT_CLUSTER_DOMAIN,
  endpointTlsModeFor,
  findDestinationRule,
  indexDestinationRules,
  resolveRuleHost,
} from './destination-rule.js';
export type { Diagnostic, DiagnosticCode, Severity } from './diagnostics.js';
export { DIAGNOSTICS, diagnostic, hasErrors, sortDiagnostics } from './diagnostics.js';
export type { ServiceEndpoint } from './endpoints.js';
export { endpointsOf, servicesOf, targetPortOf } from './endpoints.js';
export { formatLabels, hasLabels, selectorMatches } from './labels.js';
export type * from './model.js';
export { CLIENT_TLS_MODES, MTLS_MODES, refName, refOf } from './model.js';
export { compareByCreation, describeOlder } from './order.js';
export type {
  ChainStep,
  EffectiveMtls,
  IgnoredPolicy,
  IgnoreReason,
  InboundResolution,
  NonMatchingPolicy,
  PeerAuthenticationIndex,
  PortMode,
  RejectedPolicy,
  WorkloadLabels,
} from './peer-authentication.js';
export {
  chainForPort,
  chainOf,
  DEFAULT_ROOT_NAMESPACE,
  effectiveInboundMtls,
  effectiveModeForPort,
  indexPeerAuthentications,
  isWidePolicy,
  matchingWorkloadPolicies,
  modeForPort,
  namespaceMtlsMode,
  resolveInboundMtls,
} from './peer-authentication.js';
export type { Path, RawResource } from './raw.js';
export { Checker, describeType, formatPath, isRecord } from './raw.js';
export { checkWildcardDomain, validateDestinationRule } from './validate-destination-rule.js';
export type { Validated } from './validate-peer-authentication.js';
export { checkWorkloadSelector, validatePeerAuthentication } from './validate-peer-authentication.js';
