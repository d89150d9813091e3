/**
 * The policy core's view of the mesh: Istio's security resources, and the few facts about workloads
 * and services that mTLS decisions depend on. `src/mesh` builds these from manifests; nothing here
 * knows where they came from. Every value is read-only once built.
 */

export const MTLS_MODES = ['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT'] as const;
/** `PeerAuthentication.mtls.mode` exactly as Istio spells it (case-sensitive). */
export type MtlsMode = (typeof MTLS_MODES)[number];
/** A mode after inheritance: UNSET never survives resolution. */
export type ResolvedMtlsMode = Exclude<MtlsMode, 'UNSET'>;

export const CLIENT_TLS_MODES = ['DISABLE', 'SIMPLE', 'MUTUAL', 'ISTIO_MUTUAL'] as const;
/** `DestinationRule ... tls.mode` exactly as Istio spells it. */
export type ClientTlsMode = (typeof CLIENT_TLS_MODES)[number];

/** Where an object or a field was read from. `line` and `column` are 1-based. */
export interface SourceLocation {
  readonly file: string;
  readonly line: number;
  readonly column?: number;
}

/** Names one Kubernetes object, for findings and decision chains. */
export interface ObjectRef {
  readonly kind: string;
  readonly namespace: string;
  readonly name: string;
  readonly location?: SourceLocation;
}

/** Finds the source location of a field path inside an object; falls back to the object's own location. */
export type Locator = (path: readonly (string | number)[]) => SourceLocation | undefined;

/** Metadata common to every object the policy core reasons about. */
export interface ObjectMeta {
  readonly name: string;
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  /** `metadata.creationTimestamp` in ms since the epoch; undefined when the manifest has none. */
  readonly createdAtMs: number | undefined;
  readonly location: SourceLocation | undefined;
}

export interface WorkloadSelector {
  readonly matchLabels: Readonly<Record<string, string>>;
}

/** A validated PeerAuthentication (`security.istio.io/v1` or `v1beta1`). */
export interface PeerAuthentication {
  readonly kind: 'PeerAuthentication';
  readonly apiVersion: string;
  readonly meta: ObjectMeta;
  /** Absent selector and `selector: {}` differ only for display; both make the policy namespace-wide. */
  readonly selector: WorkloadSelector | undefined;
  /** Undefined when `spec.mtls` is absent; inherits like UNSET. */
  readonly mode: MtlsMode | undefined;
  /** Keyed by the workload's (container) port number, never the Service port. */
  readonly portLevelMtls: ReadonlyMap<number, MtlsMode> | undefined;
  readonly locate: Locator;
}

export interface ClientTlsSettings {
  readonly mode: ClientTlsMode;
  readonly clientCertificate?: string;
  readonly privateKey?: string;
  readonly caCertificates?: string;
  readonly credentialName?: string;
  readonly subjectAltNames?: readonly string[];
  readonly sni?: string;
  readonly insecureSkipVerify?: boolean;
}

export interface PortTrafficPolicy {
  /** The Service port number this entry applies to. */
  readonly port: number;
  /** Undefined means the entry has no `tls`: it still replaces the destination-level policy. */
  readonly tls: ClientTlsSettings | undefined;
}

export interface TrafficPolicy {
  readonly tls: ClientTlsSettings | undefined;
  readonly portLevelSettings: readonly PortTrafficPolicy[];
  /** `loadBalancer.simple: PASSTHROUGH` makes Istio treat the service like a headless one. */
  readonly loadBalancerPassthrough: boolean;
}

export interface Subset {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly trafficPolicy: TrafficPolicy | undefined;
}

/** A validated DestinationRule (`networking.istio.io/v1`, `v1beta1` or `v1alpha3`). */
export interface DestinationRule {
  readonly kind: 'DestinationRule';
  readonly apiVersion: string;
  readonly meta: ObjectMeta;
  readonly host: string;
  readonly trafficPolicy: TrafficPolicy | undefined;
  readonly subsets: readonly Subset[];
  /** `spec.exportTo`; empty means visible everywhere (`*`). */
  readonly exportTo: readonly string[];
  readonly workloadSelector: WorkloadSelector | undefined;
  readonly locate: Locator;
}

/** One port a workload's containers declare. */
export interface WorkloadPort {
  readonly port: number;
  readonly name: string | undefined;
  readonly protocol: string;
  readonly container: string | undefined;
}

/** Why a workload is, or is not, part of the mesh (has a sidecar). */
export interface MeshMembership {
  readonly inMesh: boolean;
  readonly reason: string;
}

/**
 * A thing that receives traffic: a Pod, the pod template of a controller, or a WorkloadEntry.
 * Every replica of a controller shares the same answer, so the template stands for all of them.
 */
export interface Workload {
  readonly kind: string;
  readonly meta: ObjectMeta;
  readonly serviceAccount: string;
  readonly ports: readonly WorkloadPort[];
  readonly membership: MeshMembership;
  /** For controllers, how many pods the template makes (1 for a Pod). */
  readonly replicas: number;
}

export interface ServicePort {
  readonly port: number;
  readonly name: string | undefined;
  readonly protocol: string;
  readonly appProtocol: string | undefined;
  /** A number, or a container port name resolved per endpoint. */
  readonly targetPort: number | string;
}

/** A Kubernetes Service as far as mTLS cares. */
export interface Service {
  readonly kind: 'Service';
  readonly meta: ObjectMeta;
  readonly ports: readonly ServicePort[];
  /** Undefined for a Service without selector (endpoints managed elsewhere). */
  readonly selector: Readonly<Record<string, string>> | undefined;
  readonly headless: boolean;
  /** The virtual IP (`spec.clusterIP`) when the manifest or the API server gave one; never `None`. */
  readonly clusterIP?: string | undefined;
  /** `type: ExternalName` services point outside the cluster. */
  readonly externalName: string | undefined;
}

export function refOf(kind: string, meta: ObjectMeta): ObjectRef {
  return meta.location
    ? { kind, namespace: meta.namespace, name: meta.name, location: meta.location }
    : { kind, namespace: meta.namespace, name: meta.name };
}

/** `namespace/name`, the way kubectl users read an object's identity. */
export function refName(ref: { namespace: string; name: string } | ObjectRef): string {
  return `${ref.namespace}/${ref.name}`;
}
