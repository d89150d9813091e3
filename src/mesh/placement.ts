import { en } from 'zod/locales';
import * as z from 'zod/mini';

// zod's small API, as in proxy-config.ts (which says why); English messages.
z.config(en());

/**
 * Where the pods of a mesh run and listen: what the kubelet and the network report in a cluster
 * (the pod's IP), and what the local mesh decides for itself (the application's port, the sidecar's
 * outbound listeners). The local mesh writes it; the control plane reads it to derive each pod's
 * ProxyConfig. Shared message type, like ProxyConfig.
 */

const address = z.string().check(z.regex(/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/, 'an address is IP:PORT'));

export const placedPodSchema = z.strictObject({
  namespace: z.string(),
  name: z.string(),
  podIP: z.string(),
  /** Whether a sidecar runs beside the application. */
  sidecar: z.boolean(),
  /** Whether the pod is Ready: only ready pods are endpoints of Services (default true). */
  ready: z.optional(z.boolean()),
  /** containerPort → where the application listens. */
  apps: z.record(z.string().check(z.regex(/^\d+$/)), address),
  /** The sidecar's admin endpoint. */
  admin: z.optional(address),
  /** `<service fqdn>:<port>` → where the sidecar takes the application's calls to it. */
  outbound: z.record(z.string(), address),
});

export const placementSchema = z.strictObject({
  pods: z.array(placedPodSchema),
});

export type PlacedPodSpec = z.infer<typeof placedPodSchema>;
export type Placement = z.infer<typeof placementSchema>;

/** The control plane's API paths over mTLS, shared by the server and the proxy's client. */
export const CP_PATHS = {
  /** POST {csr}: a certificate for the authenticated caller (bootstrap token or current certificate). */
  sign: '/v1/sign',
  /** GET ?pod=NS/NAME: newline-delimited JSON, one {version, config, roots} per ProxyConfig version. */
  config: '/v1/config',
  /** POST {pod, version}: the proxy applied that version. */
  applied: '/v1/applied',
} as const;

/** The identity the control plane serves with, in a trust domain. */
export function controlPlaneIdentity(trustDomain: string, namespace = 'kmtls-system'): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/kmtls-controlplane`;
}
