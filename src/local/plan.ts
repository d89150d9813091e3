import net from 'node:net';
import type { ContainerSpec, MeshSnapshot, Placement, PodInstance } from '../mesh/index.js';
import { podInstances, serviceHosts } from '../mesh/index.js';
import { endpointsOf } from '../policy/index.js';

/**
 * How the local mesh lays a snapshot out on loopback. With subnet S (default 10):
 * pods get 127.S.x.y, each pod's outbound listeners 127.(S+1).x.y, each Service a virtual IP
 * 127.(S+2).x.y (the local kube-proxy), and the control plane 127.(S+3).0.1. Applications listen on
 * 127.0.0.1 at ports the OS hands out. Addresses stay with a pod or Service as long as it exists.
 */

export const SIDECAR_ADMIN_PORT = 15000;
export const CONTROL_PLANE_PORT = 15012;
export const CONTROL_PLANE_ADMIN_PORT = 15014;

export interface LocalPod extends PodInstance {
  readonly key: string;
  readonly podIP: string;
  readonly outboundIP: string;
  readonly sidecar: boolean;
  readonly identity: string | undefined;
  readonly containers: readonly ContainerSpec[];
  /** containerPort → the port the application listens on (127.0.0.1 with a sidecar, the pod IP without). */
  readonly appPorts: ReadonlyMap<number, number>;
  /** Jobs end; everything else is restarted when it exits. */
  readonly restart: 'Always' | 'OnFailure';
  readonly admin: string | undefined;
}

export interface LocalServicePort {
  readonly port: number;
  readonly name: string | undefined;
  /** The pods' addresses behind it: podIP:targetPort. */
  readonly endpoints: readonly string[];
  /** Where each sidecar's outbound listener for this port sits: outboundIP:this. */
  readonly outboundPort: number;
}

export interface LocalService {
  readonly namespace: string;
  readonly name: string;
  readonly fqdn: string;
  readonly vip: string;
  readonly ports: readonly LocalServicePort[];
}

export interface LocalPlan {
  readonly subnet: number;
  readonly pods: readonly LocalPod[];
  readonly services: readonly LocalService[];
  readonly controlPlane: { readonly api: string; readonly admin: string };
}

function ipAt(a: number, index: number): string {
  return `127.${a}.${1 + Math.floor(index / 250)}.${1 + (index % 250)}`;
}

/** A free TCP port on 127.0.0.1, from the OS. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Hands out addresses and keeps them for as long as what holds them exists. */
export class LocalAllocator {
  private readonly pods = new Map<string, number>();
  private readonly services = new Map<string, number>();
  private readonly outboundPorts = new Map<string, number>();
  private readonly appPorts = new Map<string, number>();

  constructor(readonly subnet: number) {
    if (!Number.isInteger(subnet) || subnet < 1 || subnet > 250) {
      throw new RangeError(`subnet must be 1..250 (127.S.x.y), not ${subnet}`);
    }
  }

  private index(map: Map<string, number>, key: string): number {
    let i = map.get(key);
    if (i === undefined) {
      const used = new Set(map.values());
      i = 0;
      while (used.has(i)) i++;
      map.set(key, i);
    }
    return i;
  }

  podIndex(key: string): number {
    return this.index(this.pods, key);
  }

  serviceIndex(key: string): number {
    return this.index(this.services, key);
  }

  /** The Service port itself, unless another Service took it first: then one from 20000 up. */
  outboundPort(serviceKey: string, port: number): number {
    const key = `${serviceKey}:${port}`;
    const have = this.outboundPorts.get(key);
    if (have !== undefined) return have;
    const used = new Set(this.outboundPorts.values());
    let p = port;
    if (used.has(p) || p === SIDECAR_ADMIN_PORT) {
      p = 20000;
      while (used.has(p)) p++;
    }
    this.outboundPorts.set(key, p);
    return p;
  }

  async appPort(podKey: string, container: string, containerPort: number): Promise<number> {
    const key = `${podKey}/${container}/${containerPort}`;
    let p = this.appPorts.get(key);
    if (p === undefined) {
      p = await freePort();
      this.appPorts.set(key, p);
    }
    return p;
  }

  /** Forgets pods and services that are gone, so their addresses can be reused. */
  retain(podKeys: ReadonlySet<string>, serviceKeys: ReadonlySet<string>): void {
    for (const k of [...this.pods.keys()]) if (!podKeys.has(k)) this.pods.delete(k);
    for (const k of [...this.services.keys()]) if (!serviceKeys.has(k)) this.services.delete(k);
    for (const k of [...this.outboundPorts.keys()]) {
      if (!serviceKeys.has(k.slice(0, k.lastIndexOf(':')))) this.outboundPorts.delete(k);
    }
    for (const k of [...this.appPorts.keys()]) {
      const pod = k.split('/').slice(0, 2).join('/');
      if (!podKeys.has(pod)) this.appPorts.delete(k);
    }
  }
}

function appContainers(containers: readonly ContainerSpec[]): ContainerSpec[] {
  return containers.filter((c) => !c.isInit && c.name !== 'kmtls-proxy' && c.name !== 'istio-proxy');
}

/** Lays out every pod and Service of the snapshot. */
export async function planMesh(snapshot: MeshSnapshot, alloc: LocalAllocator): Promise<LocalPlan> {
  const S = alloc.subnet;
  const instances = podInstances(snapshot);
  const pods: LocalPod[] = [];
  for (const inst of instances) {
    const key = `${inst.namespace}/${inst.name}`;
    const i = alloc.podIndex(key);
    const w = inst.workload;
    const sidecar = w.membership.inMesh;
    const podIP = ipAt(S, i);
    const appPorts = new Map<number, number>();
    for (const c of appContainers(w.containers)) {
      for (const p of c.ports) {
        if (appPorts.has(p.containerPort)) continue;
        appPorts.set(
          p.containerPort,
          sidecar ? await alloc.appPort(key, c.name, p.containerPort) : p.containerPort,
        );
      }
    }
    pods.push({
      ...inst,
      key,
      podIP,
      outboundIP: ipAt(S + 1, i),
      sidecar,
      identity: w.identity?.uri,
      containers: appContainers(w.containers),
      appPorts,
      restart: w.kind === 'Job' || w.kind === 'CronJob' ? 'OnFailure' : 'Always',
      admin: sidecar ? `${podIP}:${SIDECAR_ADMIN_PORT}` : undefined,
    });
  }
  const byWorkload = new Map<unknown, LocalPod[]>();
  for (const p of pods) byWorkload.set(p.workload, [...(byWorkload.get(p.workload) ?? []), p]);
  const services: LocalService[] = [];
  for (const s of snapshot.services) {
    if (s.externalName !== undefined) continue;
    const key = `${s.meta.namespace}/${s.meta.name}`;
    const vip = ipAt(S + 2, alloc.serviceIndex(key));
    services.push({
      namespace: s.meta.namespace,
      name: s.meta.name,
      fqdn: serviceHosts(s, snapshot.options.clusterDomain)[0]!,
      vip,
      ports: s.ports.map((sp) => ({
        port: sp.port,
        name: sp.name,
        endpoints: endpointsOf(s, sp, snapshot.workloads).flatMap((e) =>
          (byWorkload.get(e.workload) ?? []).map((p) => `${p.podIP}:${e.port}`),
        ),
        outboundPort: alloc.outboundPort(key, sp.port),
      })),
    });
  }
  alloc.retain(new Set(pods.map((p) => p.key)), new Set(services.map((s) => `${s.namespace}/${s.name}`)));
  return {
    subnet: S,
    pods,
    services,
    controlPlane: {
      api: `127.${S + 3}.0.1:${CONTROL_PLANE_PORT}`,
      admin: `127.${S + 3}.0.1:${CONTROL_PLANE_ADMIN_PORT}`,
    },
  };
}

/** What the control plane needs to know of the layout. */
export function placementOf(plan: LocalPlan): Placement {
  return {
    pods: plan.pods.map((p) => ({
      namespace: p.namespace,
      name: p.name,
      podIP: p.podIP,
      sidecar: p.sidecar,
      apps: Object.fromEntries(
        [...p.appPorts].map(([cp, ap]) => [String(cp), `${p.sidecar ? '127.0.0.1' : p.podIP}:${ap}`]),
      ),
      ...(p.admin ? { admin: p.admin } : {}),
      outbound: Object.fromEntries(
        plan.services.flatMap((s) =>
          s.ports.map((sp) => [`${s.fqdn}:${sp.port}`, `${p.outboundIP}:${sp.outboundPort}`]),
        ),
      ),
    })),
  };
}

const envName = (s: string) => s.toUpperCase().replace(/[^A-Z0-9]/g, '_');

/**
 * Where a pod reaches a Service port: its own outbound address, where its sidecar listens, or, for a
 * pod without one, the local kube-proxy (which sends from the pod's IP).
 */
export function serviceAddress(pod: LocalPod, port: LocalServicePort): { host: string; port: number } {
  return { host: pod.outboundIP, port: port.outboundPort };
}

/**
 * The environment of one container: the Kubernetes service variables of the pod's namespace, the
 * pod's own facts, where to listen, `KMTLS_SERVICES` for every Service of the mesh (no cluster DNS
 * here), then the container's own `env` with `$(VAR)` references expanded as the kubelet does.
 */
export function containerEnv(
  plan: LocalPlan,
  pod: LocalPod,
  container: ContainerSpec,
): Record<string, string> {
  const env: Record<string, string> = {};
  const map: Record<string, string> = {};
  for (const s of plan.services) {
    for (const sp of s.ports) {
      const a = serviceAddress(pod, sp);
      map[`${s.name}.${s.namespace}:${sp.port}`] = `${a.host}:${a.port}`;
    }
    if (s.namespace !== pod.namespace || s.ports.length === 0) continue;
    const first = serviceAddress(pod, s.ports[0]!);
    env[`${envName(s.name)}_SERVICE_HOST`] = first.host;
    env[`${envName(s.name)}_SERVICE_PORT`] = String(first.port);
    for (const sp of s.ports) {
      if (sp.name)
        env[`${envName(s.name)}_SERVICE_PORT_${envName(sp.name)}`] = String(serviceAddress(pod, sp).port);
    }
  }
  env.KMTLS_SERVICES = JSON.stringify(map);
  env.POD_IP = pod.podIP;
  env.POD_NAME = pod.name;
  env.POD_NAMESPACE = pod.namespace;
  env.HOST = pod.sidecar ? '127.0.0.1' : pod.podIP;
  const ports = container.ports.map((p) => ({
    ...p,
    local: pod.appPorts.get(p.containerPort) ?? p.containerPort,
  }));
  if (ports[0]) env.PORT = String(ports[0].local);
  for (const p of ports) {
    env[`PORT_${p.containerPort}`] = String(p.local);
    if (p.name) env[`PORT_${envName(p.name)}`] = String(p.local);
  }
  for (const e of container.env) {
    if (e.value !== undefined) env[e.name] = expandVars(e.value, env);
  }
  return env;
}

/** Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$(VAR)` escapes, unknown ones stay. */
export function expandVars(text: string, env: Readonly<Record<string, string>>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => {
    if (m === '$$') return '$';
    return name !== undefined && env[name] !== undefined ? env[name] : m;
  });
}

/**
 * What, if changed, needs a pod's processes restarted: its sidecar flag, its identity, and each
 * container's command, args and environment, without KMTLS_SERVICES. Policies never restart a pod,
 * nor do Services elsewhere: as in Kubernetes, a pod keeps the environment it started with, so a
 * new Service reaches a running application only through its address (its VIP, or its outbound
 * listener); the KMTLS_SERVICES map an application reads at start is refreshed at its next restart.
 * Service variables of the pod's own namespace (`WEB_SERVICE_HOST`...) are part of the environment
 * and do restart it.
 */
export function restartFingerprint(plan: LocalPlan, pod: LocalPod): string {
  return JSON.stringify({
    sidecar: pod.sidecar,
    identity: pod.identity,
    containers: pod.containers.map((c) => {
      const { KMTLS_SERVICES: _all, ...env } = containerEnv(plan, pod, c);
      return { command: c.command, args: c.args, env };
    }),
  });
}
