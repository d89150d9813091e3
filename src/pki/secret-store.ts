/**
 * Where certificates that outlive a process are kept: Kubernetes Secrets. In a cluster they are real
 * Secret objects; in local mode (FileSecretStore) the same objects are files under the state directory.
 * This module holds the shape both share and the checks both apply; it does no I/O.
 */

export const SECRET_TYPE_OPAQUE = 'Opaque';
export const SECRET_TYPE_TLS = 'kubernetes.io/tls';

/** `Opaque`, `kubernetes.io/tls`, or any other type string Kubernetes accepts. */
export type SecretType = typeof SECRET_TYPE_OPAQUE | typeof SECRET_TYPE_TLS | (string & {});

/**
 * A Kubernetes Secret, reduced to what kmtls reads and writes. `data` holds the decoded bytes (never
 * base64 text, never strings) so key material stays in Buffers. Server-set metadata (uid,
 * resourceVersion, timestamps, owner references) and `immutable` are not represented.
 */
export interface Secret {
  readonly namespace: string;
  readonly name: string;
  readonly type: SecretType;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly data: Readonly<Record<string, Buffer>>;
}

/**
 * Secret storage, with the semantics of the Kubernetes API: `put` creates or replaces the whole object
 * (no merge), `get` of a missing Secret is `undefined`, `delete` of a missing one is `false`. Every
 * method refuses an invalid namespace or name before it touches storage.
 */
export interface SecretStore {
  get(namespace: string, name: string): Promise<Secret | undefined>;
  /** Creates the Secret or replaces it whole; a reader sees the old or the new object, never a mix. */
  put(secret: Secret): Promise<void>;
  /** `true` if the Secret existed. */
  delete(namespace: string, name: string): Promise<boolean>;
  /** Every Secret of `namespace`, or of all namespaces; sorted by namespace, then name. */
  list(namespace?: string): Promise<Secret[]>;
}

/** The Secret as `kubectl apply` takes it: `data` values are base64. */
export interface SecretManifest {
  apiVersion: 'v1';
  kind: 'Secret';
  metadata: {
    name: string;
    namespace: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  type: string;
  data: Record<string, string>;
}

/** The API server's limit on the data of one Secret (etcd's object size limit). */
export const MAX_SECRET_DATA_BYTES = 1024 * 1024;

const DNS_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/;
const DATA_KEY = /^[-._a-zA-Z0-9]+$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A DNS-1123 label: what a namespace name must be. */
export function isDnsLabel(text: string): boolean {
  return text.length <= 63 && DNS_LABEL.test(text);
}

/** A DNS-1123 subdomain: what a Secret name must be. It never contains `/` and never is `.` or `..`. */
export function isDnsSubdomain(text: string): boolean {
  return text.length <= 253 && text.split('.').every((label) => DNS_LABEL.test(label));
}

/** A key of `data`, as the API server checks it (IsConfigMapKey). */
export function isSecretDataKey(key: string): boolean {
  return key.length <= 253 && DATA_KEY.test(key) && key !== '.' && !key.startsWith('..');
}

/** Why `namespace` cannot be a namespace name, or `undefined` if it can. */
export function namespaceProblem(namespace: string): string | undefined {
  if (typeof namespace === 'string' && isDnsLabel(namespace)) return undefined;
  return `namespace ${show(namespace)} is not a DNS-1123 label (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)`;
}

/** Why `namespace`/`name` cannot name a Secret, or `undefined` if they can. */
export function secretRefProblem(namespace: string, name: string): string | undefined {
  const problem = namespaceProblem(namespace);
  if (problem !== undefined) return problem;
  if (typeof name === 'string' && isDnsSubdomain(name)) return undefined;
  return `name ${show(name)} is not a DNS-1123 subdomain (at most 253 lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`;
}

/** Why the API server would refuse `secret`, or `undefined` if it would take it. Never quotes data. */
export function secretProblem(secret: Secret): string | undefined {
  const ref = secretRefProblem(secret.namespace, secret.name);
  if (ref !== undefined) return ref;
  if (typeof secret.type !== 'string' || secret.type === '') return 'type is empty';
  for (const field of ['labels', 'annotations'] as const) {
    for (const [key, value] of Object.entries(secret[field])) {
      if (key === '' || typeof value !== 'string') return `metadata.${field}.${key} is not a string`;
    }
  }
  let bytes = 0;
  for (const [key, value] of Object.entries(secret.data)) {
    if (!isSecretDataKey(key))
      return `data key ${show(key)} is not made of letters, digits, '-', '_' and '.'`;
    if (!Buffer.isBuffer(value)) return `data.${key} is not a Buffer`;
    bytes += value.length;
  }
  if (bytes > MAX_SECRET_DATA_BYTES) {
    return `data holds ${bytes} bytes, more than the ${MAX_SECRET_DATA_BYTES} a Secret may hold`;
  }
  return undefined;
}

/** The manifest of `secret`, with keys sorted as `kubectl get -o yaml` prints them. */
export function secretToManifest(secret: Secret): SecretManifest {
  const metadata: SecretManifest['metadata'] = { name: secret.name, namespace: secret.namespace };
  if (Object.keys(secret.labels).length > 0) metadata.labels = sorted(secret.labels, (v) => v);
  if (Object.keys(secret.annotations).length > 0) metadata.annotations = sorted(secret.annotations, (v) => v);
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata,
    type: secret.type,
    data: sorted(secret.data, (v) => v.toString('base64')),
  };
}

export type ManifestResult =
  | { readonly ok: true; readonly secret: Secret }
  | { readonly ok: false; readonly reason: string };

/**
 * Reads a parsed manifest (as from YAML or the API) as a Secret: all of it or nothing. `reason` says
 * what is wrong and where, never quoting a data value. Unknown fields are ignored, as they come from
 * the API server; `stringData` is refused because it would silently lose to nothing here.
 */
export function secretFromManifest(value: unknown): ManifestResult {
  const fail = (reason: string): ManifestResult => ({ ok: false, reason });
  if (!isMapping(value)) return fail('not a mapping');
  if (value.apiVersion !== 'v1') return fail(`apiVersion is ${show(value.apiVersion)}, not "v1"`);
  if (value.kind !== 'Secret') return fail(`kind is ${show(value.kind)}, not "Secret"`);
  const metadata = value.metadata;
  if (!isMapping(metadata)) return fail('metadata is missing or not a mapping');
  const { name, namespace } = metadata;
  if (typeof namespace !== 'string') return fail('metadata.namespace is missing');
  if (typeof name !== 'string') return fail('metadata.name is missing');
  const ref = secretRefProblem(namespace, name);
  if (ref !== undefined) return fail(`metadata.${ref}`);
  const labels = stringMap(metadata.labels, 'metadata.labels');
  if (typeof labels === 'string') return fail(labels);
  const annotations = stringMap(metadata.annotations, 'metadata.annotations');
  if (typeof annotations === 'string') return fail(annotations);
  const type = value.type ?? SECRET_TYPE_OPAQUE;
  if (typeof type !== 'string' || type === '') return fail('type is not a non-empty string');
  if (value.stringData !== undefined && value.stringData !== null) {
    return fail('stringData is not supported; write the values base64-encoded under data');
  }
  const encoded = stringMap(value.data, 'data');
  if (typeof encoded === 'string') return fail(encoded);
  const data: [string, Buffer][] = [];
  for (const [key, text] of Object.entries(encoded)) {
    if (!isSecretDataKey(key))
      return fail(`data key ${show(key)} is not made of letters, digits, '-', '_' and '.'`);
    const bytes = decodeBase64Strictly(text);
    if (bytes === undefined) return fail(`data.${key} is not valid base64`);
    data.push([key, bytes]);
  }
  // fromEntries, not assignment: a key such as `__proto__` must stay a key.
  return { ok: true, secret: { namespace, name, type, labels, annotations, data: Object.fromEntries(data) } };
}

/**
 * Standard base64 with padding, as the API server writes it; line breaks are skipped as Go's decoder
 * skips them. Anything else (other characters, missing padding, stray bits in the last character)
 * is `undefined`, where Buffer.from would quietly return some bytes.
 */
export function decodeBase64Strictly(text: string): Buffer | undefined {
  const compact = text.replace(/[\r\n]/g, '');
  if (!BASE64.test(compact)) return undefined;
  const bytes = Buffer.from(compact, 'base64');
  return bytes.toString('base64') === compact ? bytes : undefined;
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}

/** A map of strings (`null` or absent is empty), or the reason it is not one. */
function stringMap(value: unknown, path: string): Record<string, string> | string {
  if (value === undefined || value === null) return {};
  if (!isMapping(value)) return `${path} is not a mapping`;
  const entries = Object.entries(value);
  for (const [key, item] of entries) {
    if (typeof item !== 'string') return `${path}.${key} is not a string`;
  }
  return Object.fromEntries(entries) as Record<string, string>;
}

function sorted<T, U>(record: Readonly<Record<string, T>>, map: (value: T) => U): Record<string, U> {
  return Object.fromEntries(
    Object.entries(record)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, value]) => [key, map(value)]),
  );
}

/** A value for a message: short strings quoted, anything else by its type, so no blob is ever echoed. */
function show(value: unknown): string {
  if (typeof value === 'string')
    return value.length <= 80 ? JSON.stringify(value) : `a string of ${value.length} characters`;
  if (value === undefined || value === null) return 'missing';
  return `a ${Array.isArray(value) ? 'list' : typeof value}`;
}
