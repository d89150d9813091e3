import type { Diagnostic, DiagnosticCode } from './diagnostics.js';
import { diagnostic } from './diagnostics.js';
import type { Locator, ObjectMeta, ObjectRef } from './model.js';
import { refOf } from './model.js';

/**
 * A manifest object as read, before its spec is checked: metadata already parsed, spec still
 * `unknown`. Validators turn it into a model object plus diagnostics.
 */
export interface RawResource {
  readonly apiVersion: string;
  readonly kind: string;
  readonly meta: ObjectMeta;
  readonly spec: unknown;
  readonly locate: Locator;
}

export type Path = readonly (string | number)[];

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Shared plumbing for the validators: located, coded diagnostics about one object. */
export class Checker {
  readonly diagnostics: Diagnostic[] = [];
  readonly ref: ObjectRef;

  constructor(readonly raw: RawResource) {
    this.ref = refOf(raw.kind, raw.meta);
  }

  report(
    code: DiagnosticCode,
    path: Path,
    message: string,
    extra: { hint?: string; istioCode?: string } = {},
  ): void {
    this.diagnostics.push(
      diagnostic(code, message, {
        location: this.raw.locate(path) ?? this.raw.meta.location,
        objects: [this.ref],
        field: formatPath(path),
        ...extra,
      }),
    );
  }

  hasErrors(): boolean {
    return this.diagnostics.some((d) => d.severity === 'error');
  }

  /** An object, or undefined when absent/null; a wrong type is reported. */
  object(value: unknown, path: Path): Record<string, unknown> | undefined {
    if (value === undefined || value === null) return undefined;
    if (isRecord(value)) return value;
    this.report(
      'KMTLS_SCHEMA_TYPE',
      path,
      `${formatPath(path)} must be an object: got ${describeType(value)}`,
    );
    return undefined;
  }

  array(value: unknown, path: Path): unknown[] | undefined {
    if (value === undefined || value === null) return undefined;
    if (Array.isArray(value)) return value;
    this.report('KMTLS_SCHEMA_TYPE', path, `${formatPath(path)} must be a list: got ${describeType(value)}`);
    return undefined;
  }

  string(value: unknown, path: Path): string | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'string') return value;
    const hint =
      typeof value === 'number' || typeof value === 'boolean' ? `quote it: "${String(value)}"` : undefined;
    this.report(
      'KMTLS_SCHEMA_TYPE',
      path,
      `${formatPath(path)} must be a string: got ${describeType(value)} ${JSON.stringify(value)}`,
      hint ? { hint } : {},
    );
    return undefined;
  }

  integer(value: unknown, path: Path): number | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'number' && Number.isInteger(value)) return value;
    this.report(
      'KMTLS_SCHEMA_TYPE',
      path,
      `${formatPath(path)} must be an integer: got ${describeType(value)} ${JSON.stringify(value)}`,
    );
    return undefined;
  }

  boolean(value: unknown, path: Path): boolean | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'boolean') return value;
    this.report(
      'KMTLS_SCHEMA_TYPE',
      path,
      `${formatPath(path)} must be true or false: got ${describeType(value)} ${JSON.stringify(value)}`,
    );
    return undefined;
  }

  /** A map of string to string, such as labels. */
  stringMap(value: unknown, path: Path): Record<string, string> | undefined {
    const obj = this.object(value, path);
    if (obj === undefined) return undefined;
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(obj)) {
      const s = this.string(v, [...path, k]);
      if (s !== undefined) out[k] = s;
    }
    return out;
  }

  /** Reports fields the schema does not know: the API server prunes them, so a typo silently does nothing. */
  unknownFields(obj: Record<string, unknown>, known: readonly string[], path: Path): void {
    for (const key of Object.keys(obj)) {
      if (known.includes(key)) continue;
      const near = known.find((k) => k.toLowerCase() === key.toLowerCase() || editDistance(k, key) <= 2);
      this.report(
        'KMTLS_SCHEMA_UNKNOWN_FIELD',
        [...path, key],
        `unknown field: ${formatPath([...path, key])} (the API server drops it, so it has no effect)`,
        near ? { hint: `did you mean ${JSON.stringify(near)}?` } : {},
      );
    }
  }
}

export function formatPath(path: Path): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(p)) out += out === '' ? p : `.${p}`;
    else out += `[${JSON.stringify(p)}]`;
  }
  return out;
}

export function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'an object';
  return `a ${typeof value}`;
}

/** Levenshtein distance, for "did you mean" hints on short field names. */
export function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3;
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}
