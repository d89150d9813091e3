/**
 * The one error class of kmtls. `code` is stable (`KMTLS_<AREA>_<WHAT>`) and documented in
 * docs/errors.md; the message reads `what failed: value (reason)`. An expected outcome (a refused
 * connection, an invalid manifest) is a value, never a thrown KmtlsError. This module imports nothing,
 * so every part may use it.
 */
export class KmtlsError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KmtlsError';
    this.code = code;
  }
}

/** Every error code, with the process exit code it maps to at the CLI edge. */
export const ERROR_CODES = {
  KMTLS_CLI_USAGE: 2,
  KMTLS_EXPLAIN_NOT_FOUND: 1,
  KMTLS_EXPLAIN_AMBIGUOUS: 1,
  KMTLS_EXPLAIN_BAD_TARGET: 2,
  KMTLS_PKI_CSR_MALFORMED: 1,
  KMTLS_PKI_CSR_SIGNATURE: 1,
  KMTLS_PKI_CSR_KEY_UNSUPPORTED: 1,
  KMTLS_PKI_TTL_TOO_LONG: 1,
  KMTLS_PKI_TTL_INVALID: 2,
  KMTLS_PKI_UNKNOWN_TRUST_DOMAIN: 1,
  KMTLS_PKI_BAD_IDENTITY: 2,
  KMTLS_PKI_SIGNER_EXPIRED: 1,
  KMTLS_PKI_SIGNER_NOT_YET_VALID: 1,
  KMTLS_PKI_UNAUTHENTICATED: 1,
  KMTLS_PKI_CACERTS_INVALID: 1,
  KMTLS_PKI_ROTATION_STEP: 1,
  KMTLS_PKI_RENEWAL_FAILED: 1,
  KMTLS_PKI_RENEWAL_OPTIONS_INVALID: 2,
  KMTLS_STATE_CORRUPT: 1,
  KMTLS_STATE_INSECURE_PERMISSIONS: 1,
  KMTLS_STATE_IO: 1,
  KMTLS_STATE_NOT_INITIALIZED: 1,
  KMTLS_PROXY_CONFIG_INVALID: 1,
  KMTLS_PROXY_CERTS_INVALID: 1,
  KMTLS_PROXY_LISTEN: 1,
  KMTLS_PROXY_NO_ORIGINAL_DST: 1,
  KMTLS_INJECT_BAD_ANNOTATION: 1,
  KMTLS_IPTABLES_FAILED: 1,
  KMTLS_CP_UNKNOWN_POD: 1,
  KMTLS_CP_UNREACHABLE: 1,
  KMTLS_CP_FORBIDDEN: 1,
  KMTLS_CP_PLACEMENT_INVALID: 1,
  KMTLS_MANIFEST_REFUSED: 1,
  KMTLS_LOCAL_NOT_RUNNING: 1,
  KMTLS_LOCAL_START: 1,
  KMTLS_CHECK_MISMATCH: 1,
  KMTLS_CHECK_FLOWS_INVALID: 2,
  KMTLS_INJECT_BAD_REVIEW: 1,
  KMTLS_KUBE_CONFIG: 1,
  KMTLS_KUBE_API: 1,
  KMTLS_TLS_SECRET_CONFLICT: 1,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export function exitCodeFor(code: ErrorCode): number {
  return ERROR_CODES[code];
}
