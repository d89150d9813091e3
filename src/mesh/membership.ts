import type { MeshMembership, ObjectMeta } from '../policy/index.js';
import type { PodSource } from './resources.js';

/** The label Istio's injector puts on every pod with a sidecar; kmtls's injector sets it too. */
export const TLS_MODE_LABEL = 'security.istio.io/tlsMode';
/** The name of kmtls's sidecar container. */
export const SIDECAR_CONTAINER = 'kmtls-proxy';
const ISTIO_SIDECAR_CONTAINER = 'istio-proxy';
export const INJECT_LABEL = 'sidecar.istio.io/inject';
/** kmtls's own per-pod opt-out (label or annotation), honoured like Istio's `"false"`. */
export const KMTLS_INJECT_LABEL = 'kmtls.io/inject';
export const KMTLS_INJECTION_LABEL = 'kmtls.io/injection';
export const ISTIO_INJECTION_LABEL = 'istio-injection';

/** What the membership rules read of a pod: a {@link PodSource}, or a raw pod the injector sees. */
export type MembershipInput = Pick<PodSource, 'podLabels' | 'podAnnotations' | 'hostNetwork'> & {
  readonly meta: Pick<ObjectMeta, 'namespace'>;
  readonly containers: readonly { readonly name: string }[];
};

/**
 * Whether a pod has, or will get, a sidecar — in the order the decision is made:
 * 1. already injected: the `security.istio.io/tlsMode: istio` label or a sidecar container;
 * 2. host-network pods are never injected;
 * 3. the pod opts out: `sidecar.istio.io/inject: "false"` or `kmtls.io/inject: "false"` (label or annotation);
 * 4. the namespace opts in (`kmtls.io/injection=enabled`, or Istio's `istio-injection=enabled`) or out;
 * 5. the pod opts in: `sidecar.istio.io/inject: "true"`.
 * Anything else is outside the mesh, and the reason says what to change.
 */
export function decideMembership(
  source: MembershipInput,
  namespace: { readonly meta: Pick<ObjectMeta, 'labels'> } | undefined,
): MeshMembership {
  const labels = source.podLabels;
  const annotations = source.podAnnotations;
  if (labels[TLS_MODE_LABEL] === 'istio') return { inMesh: true, reason: `labelled ${TLS_MODE_LABEL}=istio` };
  const sidecar = source.containers.find(
    (c) => c.name === SIDECAR_CONTAINER || c.name === ISTIO_SIDECAR_CONTAINER,
  );
  if (sidecar) return { inMesh: true, reason: `has the ${sidecar.name} sidecar container` };
  if (source.hostNetwork) return { inMesh: false, reason: 'uses hostNetwork, where no sidecar is injected' };
  const podChoice = labels[INJECT_LABEL] ?? annotations[INJECT_LABEL];
  if (podChoice === 'false') return { inMesh: false, reason: `opts out with ${INJECT_LABEL}: "false"` };
  if ((labels[KMTLS_INJECT_LABEL] ?? annotations[KMTLS_INJECT_LABEL]) === 'false') {
    return { inMesh: false, reason: `opts out with ${KMTLS_INJECT_LABEL}: "false"` };
  }
  const ns = source.meta.namespace;
  const nsChoice = namespaceInjection(namespace?.meta);
  if (nsChoice === 'enabled') {
    return { inMesh: true, reason: `namespace ${ns} has ${namespaceLabelText(namespace?.meta)}` };
  }
  if (nsChoice === 'disabled') {
    return { inMesh: false, reason: `namespace ${ns} has ${namespaceLabelText(namespace?.meta)}` };
  }
  if (podChoice === 'true') return { inMesh: true, reason: `opts in with ${INJECT_LABEL}: "true"` };
  if (namespace === undefined) {
    return {
      inMesh: false,
      reason: `namespace ${ns} is not among the manifests, so it is not known to be labelled ${KMTLS_INJECTION_LABEL}=enabled`,
    };
  }
  return {
    inMesh: false,
    reason: `namespace ${ns} is not labelled ${KMTLS_INJECTION_LABEL}=enabled (or ${ISTIO_INJECTION_LABEL}=enabled)`,
  };
}

function namespaceInjection(
  meta: Pick<ObjectMeta, 'labels'> | undefined,
): 'enabled' | 'disabled' | undefined {
  if (meta === undefined) return undefined;
  const kmtls = meta.labels[KMTLS_INJECTION_LABEL];
  const istio = meta.labels[ISTIO_INJECTION_LABEL];
  if (kmtls === 'enabled' || istio === 'enabled') return 'enabled';
  if (kmtls === 'disabled' || istio === 'disabled') return 'disabled';
  return undefined;
}

function namespaceLabelText(meta: Pick<ObjectMeta, 'labels'> | undefined): string {
  if (!meta) return '';
  return [KMTLS_INJECTION_LABEL, ISTIO_INJECTION_LABEL]
    .filter((k) => meta.labels[k] !== undefined)
    .map((k) => `${k}=${meta.labels[k]}`)
    .join(', ');
}
