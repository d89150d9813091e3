import type {
  DestinationRule,
  ObjectMeta,
  PeerAuthentication,
  RejectedPolicy,
  Service,
} from '../policy/index.js';

/**
 * What the mesh is made of, as read from manifests or a cluster: the input of `buildMeshSnapshot`.
 * `src/config` fills it; nothing here knows about files or the Kubernetes API.
 */
export interface MeshResources {
  readonly peerAuthentications: readonly PeerAuthentication[];
  /** PeerAuthentications the API server would refuse: shown by explain, never applied. */
  readonly rejectedPeerAuthentications: readonly RejectedPolicy[];
  readonly destinationRules: readonly DestinationRule[];
  readonly namespaces: readonly NamespaceResource[];
  readonly serviceAccounts: readonly ServiceAccountResource[];
  readonly services: readonly Service[];
  readonly podSources: readonly PodSource[];
  readonly workloadEntries: readonly WorkloadEntryResource[];
  /**
   * Endpoints the cluster lists for Services without a selector (EndpointSlices or Endpoints written
   * by hand or by another controller). Services with a selector get theirs from pod labels.
   */
  readonly serviceEndpoints?: readonly ServiceEndpointsResource[];
}

export interface ServiceEndpointsResource {
  readonly namespace: string;
  readonly service: string;
  readonly ports: readonly { readonly name: string | undefined; readonly port: number }[];
  /** Ready addresses; `pod` when the address is a pod's (targetRef). */
  readonly addresses: readonly { readonly ip: string; readonly pod: string | undefined }[];
}

export interface NamespaceResource {
  readonly meta: ObjectMeta;
}

export interface ServiceAccountResource {
  readonly meta: ObjectMeta;
}

export type ProbeKind = 'liveness' | 'readiness' | 'startup';

export interface ProbeSpec {
  readonly kind: ProbeKind;
  readonly handler: 'httpGet' | 'tcpSocket' | 'grpc' | 'exec';
  /** A number or a container port name; undefined for exec probes. */
  readonly port: number | string | undefined;
  readonly scheme: 'HTTP' | 'HTTPS' | undefined;
  readonly path: string | undefined;
}

export interface EnvVar {
  readonly name: string;
  /** Undefined when the value comes from `valueFrom`. */
  readonly value: string | undefined;
}

export interface ContainerSpec {
  readonly name: string;
  readonly image: string | undefined;
  readonly ports: readonly { containerPort: number; name: string | undefined; protocol: string }[];
  readonly env: readonly EnvVar[];
  readonly command: readonly string[];
  readonly args: readonly string[];
  readonly probes: readonly ProbeSpec[];
  /** An init container with `restartPolicy: Always` is a native sidecar. */
  readonly isInit: boolean;
  readonly restartPolicy: string | undefined;
}

export const POD_SOURCE_KINDS = [
  'Pod',
  'Deployment',
  'StatefulSet',
  'DaemonSet',
  'ReplicaSet',
  'Job',
  'CronJob',
  'ReplicationController',
] as const;
export type PodSourceKind = (typeof POD_SOURCE_KINDS)[number];

/** A Pod, or a controller whose pod template makes pods. */
export interface PodSource {
  readonly kind: PodSourceKind;
  /** The object's own metadata (for a controller, not the template's). */
  readonly meta: ObjectMeta;
  /** The pod's labels and annotations (the template's, for a controller). */
  readonly podLabels: Readonly<Record<string, string>>;
  readonly podAnnotations: Readonly<Record<string, string>>;
  readonly serviceAccount: string;
  readonly containers: readonly ContainerSpec[];
  readonly replicas: number;
  /** `metadata.ownerReferences`, to avoid counting a Deployment, its ReplicaSet and its Pods thrice. */
  readonly owners: readonly { kind: string; name: string }[];
  /** For a StatefulSet, the governing headless Service. */
  readonly serviceName: string | undefined;
  readonly hostNetwork: boolean;
}

export interface WorkloadEntryResource {
  readonly meta: ObjectMeta;
  readonly address: string | undefined;
  readonly labels: Readonly<Record<string, string>>;
  /** Port name → target port. */
  readonly ports: Readonly<Record<string, number>>;
  readonly serviceAccount: string;
}

export const EMPTY_RESOURCES: MeshResources = {
  peerAuthentications: [],
  rejectedPeerAuthentications: [],
  destinationRules: [],
  namespaces: [],
  serviceAccounts: [],
  services: [],
  podSources: [],
  workloadEntries: [],
};
