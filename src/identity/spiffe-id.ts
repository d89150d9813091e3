/**
 * SPIFFE identities (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md).
 *
 * A `SpiffeId` is only ever made by `parseSpiffeId` or `meshIdentity`, so holding one means the
 * string obeys the standard. The mesh form is `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.
 * This module knows nothing of TLS or certificates.
 */

declare const spiffeIdBrand: unique symbol;

/** A SPIFFE ID that passed every rule of the standard. */
export interface SpiffeId {
  readonly [spiffeIdBrand]: true;
  readonly trustDomain: string;
  /** The path, starting with `/`, or `''` for the trust domain's own ID. */
  readonly path: string;
  /** The full URI, `spiffe://<trustDomain><path>`. */
  readonly uri: string;
}

/** The rule of the SPIFFE ID standard a string broke. */
export type SpiffeIdRule =
  | 'EMPTY'
  | 'WRONG_SCHEME'
  | 'MISSING_TRUST_DOMAIN'
  | 'BAD_TRUST_DOMAIN_CHAR'
  | 'TRUST_DOMAIN_TOO_LONG'
  | 'EMPTY_SEGMENT'
  | 'DOT_SEGMENT'
  | 'BAD_PATH_CHAR'
  | 'TRAILING_SLASH'
  | 'QUERY_OR_FRAGMENT'
  | 'USERINFO_OR_PORT'
  | 'TOO_LONG'
  | 'NOT_MESH_FORM';

export type SpiffeIdResult = { ok: true; id: SpiffeId } | { ok: false; rule: SpiffeIdRule; message: string };

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

const SCHEME = 'spiffe://';
/** The standard caps a SPIFFE ID at 2048 bytes and a trust domain at 255 characters. */
const MAX_URI_BYTES = 2048;
const MAX_TRUST_DOMAIN_CHARS = 255;
const TRUST_DOMAIN_CHAR = /^[a-z0-9._-]$/;
const PATH_CHAR = /^[A-Za-z0-9._-]$/;

function fail(rule: SpiffeIdRule, value: string, reason: string): SpiffeIdResult {
  return { ok: false, rule, message: `invalid SPIFFE ID: ${JSON.stringify(value)} (${reason})` };
}

/** Checks a trust domain name alone; returns the broken rule's message or undefined. */
export function checkTrustDomain(td: string): { rule: SpiffeIdRule; reason: string } | undefined {
  if (td.length === 0) return { rule: 'MISSING_TRUST_DOMAIN', reason: 'the trust domain is empty' };
  if (td.length > MAX_TRUST_DOMAIN_CHARS) {
    return {
      rule: 'TRUST_DOMAIN_TOO_LONG',
      reason: `the trust domain is longer than ${MAX_TRUST_DOMAIN_CHARS}`,
    };
  }
  for (const ch of td) {
    if (ch === ':' || ch === '@') {
      return { rule: 'USERINFO_OR_PORT', reason: 'a trust domain carries no port or user info' };
    }
    if (!TRUST_DOMAIN_CHAR.test(ch)) {
      return {
        rule: 'BAD_TRUST_DOMAIN_CHAR',
        reason: `trust domain character ${JSON.stringify(ch)} is not one of a-z 0-9 . - _`,
      };
    }
  }
  return undefined;
}

function checkPath(path: string): { rule: SpiffeIdRule; reason: string } | undefined {
  if (path === '') return undefined;
  if (path.endsWith('/')) return { rule: 'TRAILING_SLASH', reason: 'the path ends with "/"' };
  for (const segment of path.slice(1).split('/')) {
    if (segment === '') return { rule: 'EMPTY_SEGMENT', reason: 'the path has an empty segment ("//")' };
    if (segment === '.' || segment === '..') {
      return { rule: 'DOT_SEGMENT', reason: `path segment ${JSON.stringify(segment)} is not allowed` };
    }
    for (const ch of segment) {
      if (!PATH_CHAR.test(ch)) {
        return {
          rule: 'BAD_PATH_CHAR',
          reason: `path character ${JSON.stringify(ch)} is not one of A-Z a-z 0-9 . - _`,
        };
      }
    }
  }
  return undefined;
}

/** Parses a SPIFFE ID; every rejection names the rule of the standard that failed. */
export function parseSpiffeId(value: string): SpiffeIdResult {
  if (value.length === 0) return fail('EMPTY', value, 'the value is empty');
  if (Buffer.byteLength(value, 'utf8') > MAX_URI_BYTES) {
    return fail('TOO_LONG', value.slice(0, 64), `longer than ${MAX_URI_BYTES} bytes`);
  }
  if (value.slice(0, SCHEME.length).toLowerCase() !== SCHEME) {
    return fail('WRONG_SCHEME', value, 'the scheme must be "spiffe://"');
  }
  if (!value.startsWith(SCHEME)) return fail('WRONG_SCHEME', value, 'the scheme must be lower-case "spiffe"');
  const rest = value.slice(SCHEME.length);
  if (rest.includes('?') || rest.includes('#')) {
    return fail('QUERY_OR_FRAGMENT', value, 'a SPIFFE ID has no query or fragment');
  }
  const slash = rest.indexOf('/');
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  const tdProblem = checkTrustDomain(trustDomain);
  if (tdProblem) return fail(tdProblem.rule, value, tdProblem.reason);
  const pathProblem = checkPath(path);
  if (pathProblem) return fail(pathProblem.rule, value, pathProblem.reason);
  return { ok: true, id: { trustDomain, path, uri: value } as SpiffeId };
}

/** The mesh identity of a workload: `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`. */
export function meshIdentity(trustDomain: string, namespace: string, serviceAccount: string): SpiffeIdResult {
  if (namespace === '' || serviceAccount === '') {
    return fail(
      'NOT_MESH_FORM',
      `${namespace}/${serviceAccount}`,
      'namespace and service account must be set',
    );
  }
  return parseSpiffeId(`${SCHEME}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`);
}

/** The namespace and service account of a mesh-form ID, or undefined when the path is not of that form. */
export function meshIdentityParts(id: SpiffeId): { namespace: string; serviceAccount: string } | undefined {
  const parts = id.path.split('/');
  // '/ns/<ns>/sa/<sa>' splits into ['', 'ns', ns, 'sa', sa], the five segments Istio's ParseIdentity wants.
  if (parts.length !== 5 || parts[1] !== 'ns' || parts[3] !== 'sa') return undefined;
  const [, , namespace, , serviceAccount] = parts;
  if (!namespace || !serviceAccount) return undefined;
  return { namespace, serviceAccount };
}

export function spiffeIdEquals(a: SpiffeId, b: SpiffeId): boolean {
  return a.uri === b.uri;
}
