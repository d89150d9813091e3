import { selectorMatches } from './labels.js';
import type { Service, ServicePort, Workload } from './model.js';

/** A workload behind a Service port, and the port it receives on there. */
export interface ServiceEndpoint {
  readonly workload: Workload;
  readonly port: number;
}

/**
 * Resolves `targetPort` for one workload as the endpoints controller does: a number is used as is
 * (defaulting to the Service port); a name must match a declared container port, else the workload
 * is no endpoint for that port.
 */
export function targetPortOf(servicePort: ServicePort, workload: Workload): number | undefined {
  const target = servicePort.targetPort;
  if (typeof target === 'number') return target;
  const asNumber = Number(target);
  if (/^[0-9]+$/.test(target) && asNumber > 0) return asNumber;
  return workload.ports.find((p) => p.name === target)?.port;
}

/** The endpoints of one Service port among `workloads` (same namespace, selector match). */
export function endpointsOf(
  service: Service,
  servicePort: ServicePort,
  workloads: readonly Workload[],
): ServiceEndpoint[] {
  if (service.selector === undefined) return [];
  const out: ServiceEndpoint[] = [];
  for (const w of workloads) {
    if (w.meta.namespace !== service.meta.namespace) continue;
    // A Service with an empty selector selects nothing (Kubernetes treats {} as "no selector" here).
    if (Object.keys(service.selector).length === 0) continue;
    if (!selectorMatches(service.selector, w.meta.labels)) continue;
    const port = targetPortOf(servicePort, w);
    if (port !== undefined) out.push({ workload: w, port });
  }
  return out;
}

/** Services in the workload's namespace whose selector matches it. */
export function servicesOf(workload: Workload, services: readonly Service[]): Service[] {
  return services.filter(
    (s) =>
      s.meta.namespace === workload.meta.namespace &&
      s.selector !== undefined &&
      Object.keys(s.selector).length > 0 &&
      selectorMatches(s.selector, workload.meta.labels),
  );
}
