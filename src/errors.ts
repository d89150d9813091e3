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
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export function exitCodeFor(code: ErrorCode): number {
  return ERROR_CODES[code];
}
