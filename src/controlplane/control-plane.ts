import { isDeepStrictEqual } from 'node:util';
import type { FileError, ResourceSource } from '../config/index.js';
import { KmtlsError } from '../errors.js';
import type {
  MeshOptions,
  MeshSnapshot,
  PlacedPod,
  PlacedPodSpec,
  Placement,
  ProxyConfig,
} from '../mesh/index.js';
import { buildMeshSnapshot, deriveProxyConfig, inboundPorts, podInstances } from '../mesh/index.js';
import type {
  CallerAuthenticator,
  CallerCredentials,
  CertificateAuthority,
  Clock,
  IssuedCertificate,
} from '../pki/index.js';
import { authenticateCaller } from '../pki/index.js';

/** Something that changes over time and says when: the placement of pods, for one. */
export interface Watched<T> {
  current(): T;
  subscribe(listener: (value: T) => void): () => void;
}

/** One config version as pushed to a proxy. */
export interface ConfigVersion {
  readonly version: string;
  readonly config: ProxyConfig;
}

export interface PodStatus {
  readonly namespace: string;
  readonly name: string;
  readonly workload: string;
  readonly podIP: string;
  readonly identity: string | undefined;
  readonly sidecar: boolean;
  readonly meshReason: string;
  readonly admin: string | undefined;
  readonly ports: readonly { port: number; mode: string; policy: string; protocol: string }[];
  readonly configVersion: string | undefined;
  readonly appliedVersion: string | undefined;
  readonly connected: boolean;
}

export interface ChangeStatus {
  readonly version: string;
  /** When the change was noticed (ms since the epoch). */
  readonly noticedAtMs: number;
  /** Pods whose config changed with it. */
  readonly pods: number;
  /** Of those, how many applied it. */
  readonly applied: number;
  /** From noticing the change to the last of those pods applying it; undefined until all have. */
  readonly latencyMs: number | undefined;
}

export interface ControlPlaneStatus {
  readonly version: string;
  readonly trustDomain: string;
  readonly files: readonly string[];
  readonly errors: readonly {
    file: string;
    servingLastGood: boolean;
    sinceMs: number;
    problems: readonly string[];
  }[];
  readonly lastChange: ChangeStatus | undefined;
  readonly pods: readonly PodStatus[];
  readonly connectedProxies: number;
  readonly certificatesIssued: number;
}

/** What the control plane reports to metrics and logs. */
export interface ControlPlaneObserver {
  pushed(pod: string, version: string): void;
  applied(pod: string, version: string, latencyMs: number | undefined): void;
  issued(identity: string, method: string): void;
  refusedSigning(reason: string): void;
  configErrors(count: number): void;
  connected(count: number): void;
}

export const NO_CONTROL_PLANE_OBSERVER: ControlPlaneObserver = {
  pushed: () => {},
  applied: () => {},
  issued: () => {},
  refusedSigning: () => {},
  configErrors: () => {},
  connected: () => {},
};

export interface ControlPlaneOptions {
  readonly source: ResourceSource;
  readonly placement: Watched<Placement>;
  readonly ca: CertificateAuthority;
  readonly authenticators: readonly CallerAuthenticator[];
  readonly clock: Clock;
  readonly mesh?: Partial<MeshOptions>;
  readonly limits?: Partial<ProxyConfig['limits']>;
  /** Sidecars intercept transparently (a cluster with iptables): see DeriveOptions.interception. */
  readonly interception?: { readonly inbound: string; readonly outbound: string };
  readonly leafTtlMs?: number;
  /** Folds bursts of changes into one push. */
  readonly debounceMs?: number;
  readonly observer?: ControlPlaneObserver;
}

interface PodEntry {
  readonly spec: PlacedPodSpec;
  readonly placed: PlacedPod;
  current: ConfigVersion | undefined;
  /** The current config without its version, as text: what "changed" is judged on. */
  fingerprint: string | undefined;
  applied: string | undefined;
  /** The open streams: each listener with what to call when its stream must end. */
  readonly listeners: Map<(v: ConfigVersion) => void, (() => void) | undefined>;
}

/**
 * The control plane's state: resources and placement in, one immutable snapshot and one ProxyConfig
 * per sidecar out. A change rebuilds the snapshot; only the pods whose config changed get a new
 * version and a push. Signing issues for the authenticated caller, never for what a CSR asks.
 */
export class ControlPlane {
  private snapshot: MeshSnapshot;
  private version = 0;
  private readonly pods = new Map<string, PodEntry>();
  private lastChange:
    | { version: string; noticedAtMs: number; pods: Set<string>; appliedAtMs: Map<string, number> }
    | undefined;
  private issuedCount = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly unsubscribe: (() => void)[] = [];
  private readonly observer: ControlPlaneObserver;

  constructor(private readonly options: ControlPlaneOptions) {
    this.observer = options.observer ?? NO_CONTROL_PLANE_OBSERVER;
    this.snapshot = buildMeshSnapshot(options.source.current().resources, options.mesh, 0);
    this.recompute();
    this.unsubscribe.push(
      options.source.subscribe((state) => this.schedule(state.changedAtMs)),
      options.placement.subscribe(() => this.schedule(options.clock.now())),
    );
  }

  private caNow: CertificateAuthority | undefined;

  get trustDomain(): string {
    return this.ca.trustDomain;
  }

  /** The CA that signs now; `setCa` replaces it (a root rotation, a reloaded Secret). */
  get ca(): CertificateAuthority {
    return this.caNow ?? this.options.ca;
  }

  /**
   * A new CA or trust bundle: new certificates are signed with it, and every connected sidecar gets
   * its current config again with the new roots, so it trusts peers of both roots during a rotation.
   */
  setCa(ca: CertificateAuthority): void {
    this.caNow = ca;
    for (const [key, entry] of this.pods) {
      if (!entry.current) continue;
      for (const l of entry.listeners.keys()) l(entry.current);
      if (entry.listeners.size > 0) this.observer.pushed(key, entry.current.version);
    }
  }

  currentSnapshot(): MeshSnapshot {
    return this.snapshot;
  }

  close(): void {
    for (const u of this.unsubscribe) u();
    if (this.timer) clearTimeout(this.timer);
  }

  /** When the first change not yet recomputed was noticed. */
  private pendingSinceMs: number | undefined;

  private schedule(noticedAtMs: number): void {
    this.pendingSinceMs = Math.min(this.pendingSinceMs ?? noticedAtMs, noticedAtMs);
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.recompute();
    }, this.options.debounceMs ?? 10);
  }

  /** Rebuilds from the sources now; returns the names of the pods whose config changed. */
  recompute(): string[] {
    const state = this.options.source.current();
    const noticedAtMs = this.pendingSinceMs ?? state.changedAtMs;
    this.pendingSinceMs = undefined;
    const nextVersion = this.version + 1;
    const snapshot = buildMeshSnapshot(state.resources, this.options.mesh, nextVersion);
    const instances = new Map(podInstances(snapshot).map((p) => [`${p.namespace}/${p.name}`, p]));
    const placed: { spec: PlacedPodSpec; pod: PlacedPod }[] = [];
    for (const spec of this.options.placement.current().pods) {
      const inst = instances.get(`${spec.namespace}/${spec.name}`);
      if (inst)
        placed.push({
          spec,
          pod: { ...inst, podIP: spec.podIP, ...(spec.ready === false ? { ready: false } : {}) },
        });
    }
    const allPlaced = placed.map((p) => p.pod);
    const seen = new Set<string>();
    const changed: string[] = [];
    for (const { spec, pod } of placed) {
      const key = `${pod.namespace}/${pod.name}`;
      seen.add(key);
      let entry = this.pods.get(key);
      if (!entry || !isDeepStrictEqual(entry.spec, spec) || entry.placed.workload !== pod.workload) {
        entry = {
          spec,
          placed: pod,
          current: entry?.current,
          fingerprint: entry?.fingerprint,
          applied: entry?.applied,
          listeners: entry?.listeners ?? new Map(),
        };
        this.pods.set(key, entry);
      }
      if (!spec.sidecar) {
        entry.current = undefined;
        entry.fingerprint = undefined;
        continue;
      }
      const config = deriveProxyConfig(
        snapshot,
        allPlaced,
        pod,
        {
          appAddress: (_p, port) => spec.apps[String(port)] ?? `127.0.0.1:${port}`,
          outboundAddress: (_p, service, port) =>
            spec.outbound[
              `${service.meta.name}.${service.meta.namespace}.svc.${snapshot.options.clusterDomain}:${port}`
            ] ?? '',
          adminAddress: () => spec.admin,
        },
        {
          version: String(nextVersion),
          limits: this.options.limits ?? {},
          ...(this.options.interception ? { interception: this.options.interception } : {}),
        },
      );
      // Listeners the local runner gave no address are left out rather than failing the whole config.
      const usable = {
        ...config,
        outbound: config.outbound.filter((o) => o.listen !== '' || o.match?.length),
      };
      // One string per config is much cheaper than a deep comparison of every config on every change.
      const fingerprint = JSON.stringify({ ...usable, version: '' });
      if (entry.current && entry.fingerprint === fingerprint) continue;
      entry.fingerprint = fingerprint;
      entry.current = { version: String(nextVersion), config: usable };
      changed.push(key);
    }
    let closed = false;
    for (const [key, entry] of [...this.pods]) {
      if (seen.has(key)) continue;
      this.pods.delete(key);
      // Its streams end: the sidecars reconnect, and are refused until the pod is placed again, when
      // they find its new entry (listeners left on this one would never hear of it again).
      const streams = [...entry.listeners.values()];
      entry.listeners.clear();
      closed ||= streams.length > 0;
      for (const onClose of streams) onClose?.();
    }
    if (closed) this.observer.connected(this.connectedCount());
    const resourcesChanged = snapshot.resources !== this.snapshot.resources;
    if (changed.length === 0 && !resourcesChanged && this.version > 0) return [];
    this.version = nextVersion;
    this.snapshot = snapshot;
    this.observer.configErrors(state.errors.length);
    // A change counts once sidecars are listening: the first configs at start-up are not pushes.
    const pushedTo = changed.filter((k) => (this.pods.get(k)?.listeners.size ?? 0) > 0);
    if (pushedTo.length > 0) {
      this.lastChange = {
        version: String(nextVersion),
        noticedAtMs,
        pods: new Set(pushedTo),
        appliedAtMs: new Map(),
      };
    }
    if (changed.length > 0) {
      for (const key of changed) {
        const entry = this.pods.get(key)!;
        for (const l of entry.listeners.keys()) l(entry.current!);
        if (entry.listeners.size > 0) this.observer.pushed(key, entry.current!.version);
      }
    }
    return changed;
  }

  /** The identity a pod's sidecar must prove to receive its config. */
  identityOf(pod: string): string | undefined {
    return this.pods.get(pod)?.placed.workload.identity?.uri;
  }

  configOf(pod: string): ConfigVersion | undefined {
    return this.pods.get(pod)?.current;
  }

  /**
   * Subscribes a proxy's stream: the current version at once, then every new one. `onClose` is called
   * (once, after the listener is detached) when the control plane ends the stream itself: the pod
   * left the placement. The caller ends its stream then, so the sidecar reconnects; the returned
   * function need not be called after that, but may be.
   */
  watchConfig(pod: string, listener: (v: ConfigVersion) => void, onClose?: () => void): () => void {
    const entry = this.pods.get(pod);
    if (!entry) throw new KmtlsError('KMTLS_CP_UNKNOWN_POD', `no pod ${pod} with a sidecar in the mesh`);
    entry.listeners.set(listener, onClose);
    this.observer.connected(this.connectedCount());
    if (entry.current) {
      listener(entry.current);
      this.observer.pushed(pod, entry.current.version);
    }
    return () => {
      // The entry may have been replaced; remove from whichever holds the listener.
      this.pods.get(pod)?.listeners.delete(listener);
      entry.listeners.delete(listener);
      this.observer.connected(this.connectedCount());
    };
  }

  private connectedCount(): number {
    let n = 0;
    for (const e of this.pods.values()) if (e.listeners.size > 0) n++;
    return n;
  }

  /** A proxy says it applied a version. */
  applied(pod: string, version: string): void {
    const entry = this.pods.get(pod);
    if (!entry) return;
    entry.applied = version;
    let latency: number | undefined;
    const change = this.lastChange;
    if (change && change.version === version && change.pods.has(pod) && !change.appliedAtMs.has(pod)) {
      change.appliedAtMs.set(pod, this.options.clock.now());
      if (change.appliedAtMs.size === change.pods.size) latency = this.changeStatus()?.latencyMs;
    }
    this.observer.applied(pod, version, latency);
  }

  private changeStatus(): ChangeStatus | undefined {
    const c = this.lastChange;
    if (!c) return undefined;
    const done = c.appliedAtMs.size === c.pods.size;
    return {
      version: c.version,
      noticedAtMs: c.noticedAtMs,
      pods: c.pods.size,
      applied: c.appliedAtMs.size,
      latencyMs: done ? Math.max(0, ...[...c.appliedAtMs.values()].map((t) => t - c.noticedAtMs)) : undefined,
    };
  }

  /** Signs a CSR for the authenticated caller: the CSR's own identity claims are ignored. */
  async sign(credentials: CallerCredentials, csrPem: string): Promise<IssuedCertificate> {
    const auth = await authenticateCaller(this.options.authenticators, credentials);
    if (!auth?.ok) {
      const reason = auth?.reason ?? 'no credentials';
      this.observer.refusedSigning(reason);
      throw new KmtlsError('KMTLS_PKI_UNAUTHENTICATED', `certificate request refused: ${reason}`);
    }
    const issued = await this.ca.signAsync(csrPem, auth.caller, {
      ...(this.options.leafTtlMs ? { ttlMs: this.options.leafTtlMs } : {}),
    });
    this.issuedCount++;
    this.observer.issued(issued.identities.map((i) => i.uri).join(','), auth.caller.method);
    return issued;
  }

  status(errors: readonly FileError[] = this.options.source.current().errors): ControlPlaneStatus {
    const state = this.options.source.current();
    const pods: PodStatus[] = [];
    for (const [, e] of [...this.pods.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const w = e.placed.workload;
      const ports = e.current
        ? e.current.config.inbound.map((p) => ({
            port: p.port,
            mode: p.mode,
            policy: p.policy,
            protocol: p.protocol,
          }))
        : inboundPorts(this.snapshot, w).map((p) => ({
            port: p.port,
            mode: p.mode,
            policy: p.policy,
            protocol: p.protocol,
          }));
      pods.push({
        namespace: e.placed.namespace,
        name: e.placed.name,
        workload: `${w.kind}/${w.meta.name}`,
        podIP: e.placed.podIP,
        identity: w.identity?.uri,
        sidecar: e.spec.sidecar,
        meshReason: w.membership.reason,
        admin: e.spec.admin,
        ports,
        configVersion: e.current?.version,
        appliedVersion: e.applied,
        connected: e.listeners.size > 0,
      });
    }
    return {
      version: String(this.version),
      trustDomain: this.trustDomain,
      files: state.files,
      errors: errors.map((e) => ({
        file: e.file,
        servingLastGood: e.servingLastGood,
        sinceMs: e.sinceMs,
        problems: e.diagnostics.map(
          (d) => `${d.location ? `${d.location.file}:${d.location.line}: ` : ''}${d.code}: ${d.message}`,
        ),
      })),
      lastChange: this.changeStatus(),
      pods,
      connectedProxies: this.connectedCount(),
      certificatesIssued: this.issuedCount,
    };
  }
}
