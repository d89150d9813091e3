/**
 * Names and numbers that the install manifests (install.ts), the controller and the injection webhook
 * must agree on. Changing one is a breaking change for clusters installed with an older version.
 */

/** The namespace `kmtls install` puts the control plane in unless `--namespace` says otherwise. */
export const DEFAULT_KMTLS_NAMESPACE = 'kmtls-system';

/** Deployment, Service, ServiceAccount, ClusterRole(Binding), Role(Binding) and Lease of the control plane. */
export const CONTROL_PLANE_NAME = 'kmtls-controlplane';
export const CONTROL_PLANE_SERVICE_ACCOUNT = CONTROL_PLANE_NAME;
/** The Lease the control plane replicas elect a leader with, in their own namespace. */
export const LEADER_ELECTION_LEASE = CONTROL_PLANE_NAME;
/** The control plane's container in its pod. */
export const CONTROL_PLANE_CONTAINER = 'controlplane';

/** The mesh settings, in the control plane's namespace. */
export const CONFIG_MAP_NAME = 'kmtls-config';
/** Keys of CONFIG_MAP_NAME, named as in Istio's meshConfig where Istio has the setting. */
export const CONFIG_KEYS = {
  trustDomain: 'trustDomain',
  rootNamespace: 'rootNamespace',
  /** Leaf certificate lifetime as kmtls writes durations (`24h`, `90d`). */
  leafTtl: 'leafTtl',
} as const;
export const DEFAULT_ROOT_NAMESPACE = 'istio-system';
export const DEFAULT_LEAF_TTL = '24h';

/** The ConfigMap with the mesh root certificate(s) that the controller publishes in every namespace. */
export const ROOT_CERT_CONFIG_MAP = 'kmtls-ca-root-cert';

/** Ports of the control plane pod, and the names its Service gives them. */
export const CONTROL_PLANE_PORTS = {
  /** The mTLS API: CA signing and ProxyConfig streams. */
  api: { name: 'tls-api', port: 15012 },
  /** Plain HTTP: /ready, /metrics, /status. */
  monitoring: { name: 'http-monitoring', port: 15014 },
  /** HTTPS: the sidecar injection webhook, which the Service exposes on WEBHOOK_SERVICE_PORT. */
  webhook: { name: 'https-webhook', port: 15017 },
} as const;
export const WEBHOOK_SERVICE_PORT = 443;
export const READY_PATH = '/ready';

/** The MutatingWebhookConfiguration whose caBundle the controller keeps filled. */
export const WEBHOOK_CONFIGURATION_NAME = 'kmtls-sidecar-injector';
export const WEBHOOK_PATH = '/inject';
/** Pods in namespaces labelled `kmtls.io/injection=enabled`. */
export const WEBHOOK_NAME = 'sidecar-injector.kmtls.io';
/** Pods in namespaces labelled with Istio's `istio-injection=enabled` (and not with kmtls's label). */
export const NAMESPACE_WEBHOOK_NAME = 'namespace.sidecar-injector.kmtls.io';
/** Pods labelled `sidecar.istio.io/inject: "true"` in namespaces that say nothing either way. */
export const OBJECT_WEBHOOK_NAME = 'object.sidecar-injector.kmtls.io';

/**
 * The image of a kmtls version, for the control plane, the sidecar and its init step alike. No
 * registry host: the name resolves to wherever the cluster pulls unqualified names from; pass
 * `--image` to name a registry.
 */
export function defaultImage(version: string): string {
  // A tag is at most 128 of A-Z a-z 0-9 _ . - : semver's `+build` becomes `_build`.
  return `kmtls/kmtls:${version.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 128)}`;
}

/** The label every object of the installation carries; the CRDs carry it to say kmtls put them there. */
export const PART_OF_LABEL = { 'app.kubernetes.io/part-of': 'kmtls' } as const;

/** The uid the sidecar runs as (Istio's): iptables lets its own traffic out without redirecting it. */
export const SIDECAR_UID = 1337;

/** The Istio CRDs kmtls reads, by their CustomResourceDefinition names. */
export const ISTIO_CRD_NAMES = {
  peerAuthentication: 'peerauthentications.security.istio.io',
  destinationRule: 'destinationrules.networking.istio.io',
} as const;
