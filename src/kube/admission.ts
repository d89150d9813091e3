import { isDeepStrictEqual } from 'node:util';
import { KmtlsError } from '../errors.js';
import { isRecord } from '../policy/index.js';
import type { InjectOptions } from './inject.js';
import { injectTemplate } from './inject.js';

/** The AdmissionReview versions the webhook answers, each in its own version. */
export const ADMISSION_API_VERSIONS = ['admission.k8s.io/v1', 'admission.k8s.io/v1beta1'] as const;
export type AdmissionApiVersion = (typeof ADMISSION_API_VERSIONS)[number];

export interface AdmissionContext extends InjectOptions {
  /** The labels of a namespace, from the webhook's cache; undefined when the namespace is unknown. */
  readonly namespaceLabels: (namespace: string) => Readonly<Record<string, string>> | undefined;
}

/** One RFC 6902 operation; the injector only ever emits add, replace and remove. */
export type JsonPatchOperation =
  | { readonly op: 'add' | 'replace'; readonly path: string; readonly value: unknown }
  | { readonly op: 'remove'; readonly path: string };

export interface AdmissionResponse {
  readonly uid: string;
  readonly allowed: boolean;
  readonly patchType?: 'JSONPatch';
  /** Base64 of the JSON array of {@link JsonPatchOperation}s. */
  readonly patch?: string;
  readonly status?: {
    readonly status: 'Failure';
    readonly code: number;
    readonly reason: string;
    readonly message: string;
  };
}

export interface AdmissionReviewResponse {
  readonly apiVersion: AdmissionApiVersion;
  readonly kind: 'AdmissionReview';
  readonly response: AdmissionResponse;
}

/** One JSON Pointer segment (RFC 6901): `~` as `~0`, `/` as `~1`. */
export function escapePointerSegment(segment: string | number): string {
  return String(segment).replace(/~/g, '~0').replace(/\//g, '~1');
}

/**
 * The operations that turn `before` into `after`. Objects are diffed key by key, so a missing
 * parent is added whole and a label key with `/` is escaped; arrays of equal length element by
 * element; an array that changed length is replaced whole, which applies cleanly to the object the
 * API server sent.
 */
export function createJsonPatch(before: unknown, after: unknown, path = ''): JsonPatchOperation[] {
  if (isDeepStrictEqual(before, after)) return [];
  if (isRecord(before) && isRecord(after)) {
    const ops: JsonPatchOperation[] = [];
    for (const key of Object.keys(before)) {
      if (!Object.hasOwn(after, key))
        ops.push({ op: 'remove', path: `${path}/${escapePointerSegment(key)}` });
    }
    for (const [key, value] of Object.entries(after)) {
      const child = `${path}/${escapePointerSegment(key)}`;
      if (!Object.hasOwn(before, key)) ops.push({ op: 'add', path: child, value });
      else ops.push(...createJsonPatch(before[key], value, child));
    }
    return ops;
  }
  if (Array.isArray(before) && Array.isArray(after) && before.length === after.length) {
    return before.flatMap((item, i) => createJsonPatch(item, after[i], `${path}/${i}`));
  }
  if (path === '') throw new Error('BUG: the injector replaced a whole object');
  return [{ op: 'replace', path, value: after }];
}

function badReview(reason: string): KmtlsError {
  return new KmtlsError('KMTLS_INJECT_BAD_REVIEW', `not an AdmissionReview request: ${reason}`);
}

function isApiVersion(value: unknown): value is AdmissionApiVersion {
  return typeof value === 'string' && (ADMISSION_API_VERSIONS as readonly string[]).includes(value);
}

/**
 * Answers one AdmissionReview for the sidecar injection webhook. Pure: namespace labels come from
 * the caller's cache. Pods being created are injected as {@link injectTemplate} decides, with a
 * JSONPatch; everything else is allowed unchanged; a bad traffic annotation denies the pod with
 * the coded reason. A body that is not an AdmissionReview request throws KMTLS_INJECT_BAD_REVIEW
 * (the server answers 400: there is no uid to answer to).
 */
export function handleAdmissionReview(body: unknown, ctx: AdmissionContext): AdmissionReviewResponse {
  if (!isRecord(body)) throw badReview('the body is not a JSON object');
  if (body.kind !== 'AdmissionReview') throw badReview(`kind is ${JSON.stringify(body.kind)}`);
  const apiVersion = body.apiVersion;
  if (!isApiVersion(apiVersion)) {
    throw badReview(
      `apiVersion ${JSON.stringify(apiVersion)} (the webhook answers ${ADMISSION_API_VERSIONS.join(' and ')})`,
    );
  }
  const request = body.request;
  if (!isRecord(request)) throw badReview('no request');
  const uid = request.uid;
  if (typeof uid !== 'string' || uid === '') throw badReview('request.uid is missing');
  const answer = (response: Omit<AdmissionResponse, 'uid'>): AdmissionReviewResponse => ({
    apiVersion,
    kind: 'AdmissionReview',
    response: { uid, ...response },
  });

  const kind = isRecord(request.kind) ? request.kind : {};
  const pod = request.object;
  const isPodCreate =
    request.operation === 'CREATE' && kind.kind === 'Pod' && (kind.group ?? '') === '' && isRecord(pod);
  if (!isPodCreate) return answer({ allowed: true });

  const metadata = isRecord(pod.metadata) ? pod.metadata : {};
  const namespace =
    typeof request.namespace === 'string' && request.namespace !== ''
      ? request.namespace
      : typeof metadata.namespace === 'string' && metadata.namespace !== ''
        ? metadata.namespace
        : 'default';
  // Pods made by controllers have only generateName when admitted.
  const name =
    typeof metadata.name === 'string' && metadata.name !== ''
      ? metadata.name
      : `${typeof metadata.generateName === 'string' ? metadata.generateName : ''}<generated>`;
  const result = injectTemplate(
    pod,
    namespace,
    { kind: 'webhook', namespaceLabels: ctx.namespaceLabels(namespace) },
    { image: ctx.image, nativeSidecar: ctx.nativeSidecar, ...optional(ctx.controlPlaneAddress) },
    `Pod ${namespace}/${name}`,
  );
  switch (result.outcome) {
    case 'skipped':
      return answer({ allowed: true });
    case 'refused':
      return answer({
        allowed: false,
        status: {
          status: 'Failure',
          code: 400,
          reason: 'BadRequest',
          message: `${result.error.code}: ${result.error.message}`,
        },
      });
    case 'injected': {
      const patch = createJsonPatch(pod, result.template);
      return answer({
        allowed: true,
        patchType: 'JSONPatch',
        patch: Buffer.from(JSON.stringify(patch), 'utf8').toString('base64'),
      });
    }
    default: {
      const never: never = result;
      throw new Error(`BUG: unhandled injection outcome ${JSON.stringify(never)}`);
    }
  }
}

function optional(controlPlaneAddress: string | undefined): { controlPlaneAddress?: string } {
  return controlPlaneAddress === undefined ? {} : { controlPlaneAddress };
}
