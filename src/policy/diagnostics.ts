import type { ObjectRef, SourceLocation } from './model.js';

export type Severity = 'error' | 'warning' | 'info';

/**
 * Every diagnostic kmtls reports about manifests and policies, with its severity. The list is the
 * contract: docs/diagnostics.md documents each code, and a test keeps the two in step.
 */
export const DIAGNOSTICS = {
  // Reading manifests.
  KMTLS_MANIFEST_UNREADABLE: 'error',
  KMTLS_MANIFEST_YAML: 'error',
  KMTLS_MANIFEST_NOT_OBJECT: 'error',
  KMTLS_MANIFEST_MISSING_KIND: 'error',
  KMTLS_MANIFEST_MISSING_NAME: 'error',
  KMTLS_MANIFEST_DUPLICATE: 'warning',
  KMTLS_MANIFEST_SKIPPED_KIND: 'info',
  KMTLS_MANIFEST_NO_FILES: 'error',
  // Schema of the kinds kmtls understands.
  KMTLS_SCHEMA_TYPE: 'error',
  KMTLS_SCHEMA_UNKNOWN_FIELD: 'warning',
  KMTLS_SCHEMA_BAD_TIMESTAMP: 'error',
  KMTLS_SCHEMA_UNSUPPORTED_VERSION: 'warning',
  // PeerAuthentication, as Istio's CRD schema and webhook check it.
  KMTLS_PA_INVALID_MODE: 'error',
  KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR: 'error',
  KMTLS_PA_EMPTY_PORT_LEVEL: 'error',
  KMTLS_PA_PORT_RANGE: 'error',
  KMTLS_PA_PORT_NOT_NUMBER: 'error',
  KMTLS_SELECTOR_EMPTY_KEY: 'error',
  KMTLS_SELECTOR_WILDCARD: 'error',
  KMTLS_SELECTOR_VALUE_TOO_LONG: 'error',
  KMTLS_SELECTOR_TOO_MANY_LABELS: 'error',
  KMTLS_SELECTOR_NO_LABELS: 'warning',
  // DestinationRule TLS, as Istio's CRD schema and webhook check it.
  KMTLS_DR_MISSING_HOST: 'error',
  KMTLS_DR_INVALID_TLS_MODE: 'error',
  KMTLS_DR_ISTIO_MUTUAL_WITH_CERTS: 'warning',
  KMTLS_DR_TLS_FIELDS: 'error',
  KMTLS_DR_EMPTY_TRAFFIC_POLICY: 'error',
  KMTLS_DR_MUTUAL_WITHOUT_CERTS: 'error',
  KMTLS_DR_SUBSET_NAME: 'error',
  KMTLS_DR_DUPLICATE_SUBSET: 'error',
  KMTLS_DR_PORT_SETTING_WITHOUT_PORT: 'error',
  KMTLS_DR_PORT_RANGE: 'error',
  KMTLS_DR_NO_CA_CERTIFICATES: 'warning',
  // Analyzers: findings across resources.
  KMTLS_ANALYZE_SELECTOR_MATCHES_NOTHING: 'warning',
  KMTLS_ANALYZE_NAMESPACE_HAS_NO_WORKLOADS: 'warning',
  KMTLS_ANALYZE_DR_HOST_MATCHES_NOTHING: 'warning',
  KMTLS_ANALYZE_SELECTOR_MATCHES_OTHER_NAMESPACE: 'error',
  KMTLS_ANALYZE_PORT_IS_SERVICE_PORT: 'error',
  KMTLS_ANALYZE_PORT_NOT_DECLARED: 'warning',
  KMTLS_ANALYZE_CONFLICTING_MESH_POLICIES: 'warning',
  KMTLS_ANALYZE_CONFLICTING_NAMESPACE_POLICIES: 'warning',
  KMTLS_ANALYZE_OVERLAPPING_WORKLOAD_POLICIES: 'warning',
  KMTLS_ANALYZE_ROOT_NAMESPACE_SELECTOR: 'warning',
  KMTLS_ANALYZE_DR_TLS_CONFLICT: 'error',
  KMTLS_ANALYZE_AUTO_MTLS_LIMITATION: 'error',
  KMTLS_ANALYZE_STRICT_WITHOUT_SIDECAR: 'error',
  KMTLS_ANALYZE_CALLER_OUTSIDE_MESH_STRICT: 'error',
  KMTLS_ANALYZE_CALLER_OUTSIDE_MESH: 'info',
  KMTLS_ANALYZE_PROBE_ON_STRICT_PORT: 'error',
} as const satisfies Record<string, Severity>;

export type DiagnosticCode = keyof typeof DIAGNOSTICS;

/** A located, coded problem or finding. The message reads `what: value (reason)`. */
export interface Diagnostic {
  readonly code: DiagnosticCode;
  readonly severity: Severity;
  readonly message: string;
  /** Where to look first; for findings about several objects, the first object's place. */
  readonly location: SourceLocation | undefined;
  /** Every object involved, the deciding one first. */
  readonly objects: readonly ObjectRef[];
  /** The field, as a dotted path, for schema and validation problems. */
  readonly field?: string;
  /** What to do about it, when there is something clear to do. */
  readonly hint?: string;
  /** The matching istioctl analyzer message, for users who know those. */
  readonly istioCode?: string;
}

export function diagnostic(
  code: DiagnosticCode,
  message: string,
  extra: {
    location?: SourceLocation | undefined;
    objects?: readonly ObjectRef[];
    field?: string;
    hint?: string;
    istioCode?: string;
  } = {},
): Diagnostic {
  const d: Diagnostic = {
    code,
    severity: DIAGNOSTICS[code],
    message,
    location: extra.location ?? extra.objects?.[0]?.location,
    objects: extra.objects ?? [],
    ...(extra.field !== undefined ? { field: extra.field } : {}),
    ...(extra.hint !== undefined ? { hint: extra.hint } : {}),
    ...(extra.istioCode !== undefined ? { istioCode: extra.istioCode } : {}),
  };
  return d;
}

export function hasErrors(diagnostics: readonly Diagnostic[]): boolean {
  return diagnostics.some((d) => d.severity === 'error');
}

const SEVERITY_RANK: Record<Severity, number> = { error: 0, warning: 1, info: 2 };

/** Errors first, then by file and line, then by code: a stable order for output and golden files. */
export function sortDiagnostics(list: readonly Diagnostic[]): Diagnostic[] {
  return [...list].sort(
    (a, b) =>
      SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity] ||
      (a.location?.file ?? '').localeCompare(b.location?.file ?? '') ||
      (a.location?.line ?? 0) - (b.location?.line ?? 0) ||
      a.code.localeCompare(b.code) ||
      a.message.localeCompare(b.message),
  );
}
