import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ControlPlaneStatus } from '../controlplane/index.js';
import type { PortTally } from '../proxy/index.js';
import type { RuntimeInfo } from './mesh.js';
import { httpGet } from './mesh.js';

export interface PortView {
  readonly port: number;
  readonly mode: string;
  readonly policy: string;
  readonly protocol: string;
  readonly mtls: number;
  readonly plaintext: number;
  readonly refused: number;
  /** Pods (or addresses) seen calling this port in plaintext, with counts. */
  readonly plaintextCallers: Record<string, number>;
  readonly refusedBy: Record<string, number>;
}

export interface PodView {
  readonly namespace: string;
  readonly name: string;
  readonly podIP: string;
  readonly identity: string | undefined;
  readonly sidecar: boolean;
  readonly admin: string | undefined;
  readonly ready: boolean | undefined;
  readonly configVersion: string | undefined;
  readonly appliedVersion: string | undefined;
  readonly certificate:
    | { readonly serial: string; readonly notAfter: string; readonly timeLeftSeconds: number }
    | undefined;
  readonly controlPlaneConnected: boolean | undefined;
  readonly ports: readonly PortView[];
  readonly outbound: { mtls: number; plaintext: number; refused: number } | undefined;
  readonly processes?: readonly {
    name: string;
    state: string;
    restarts: number;
    lastExit: string | undefined;
  }[];
}

export interface ProcessInfo {
  readonly name: string;
  readonly state: string;
  readonly restarts: number;
  readonly lastExit: string | undefined;
}

export interface MeshStatus {
  readonly dir: string;
  readonly stateDir: string;
  readonly controlPlane: {
    readonly api: string;
    readonly admin: string;
    readonly reachable: boolean;
    readonly version: string | undefined;
    readonly connectedProxies: number | undefined;
    readonly certificatesIssued: number | undefined;
  };
  readonly controlPlaneProcess: ProcessInfo | undefined;
  /** Problems of `kmtls up` itself (a reconcile that failed), until the next one succeeds. */
  readonly supervisorErrors?: readonly { message: string; atMs: number }[];
  readonly lastChange: ControlPlaneStatus['lastChange'];
  readonly errors: ControlPlaneStatus['errors'];
  readonly pods: readonly PodView[];
}

async function getJson<T>(address: string | undefined, pathname: string): Promise<T | undefined> {
  if (!address) return undefined;
  const r = await httpGet(address, pathname);
  if (r?.status !== 200) return undefined;
  try {
    return JSON.parse(r.body) as T;
  } catch {
    return undefined;
  }
}

/** The running local mesh as data: the control plane's view joined with each sidecar's own. */
export async function collectStatus(info: RuntimeInfo): Promise<MeshStatus> {
  const cp = await getJson<ControlPlaneStatus>(info.controlPlane.admin, '/status');
  let procs: {
    controlPlane?: ProcessInfo;
    pods?: Record<string, ProcessInfo[]>;
    errors?: { message: string; atMs: number }[];
  } = {};
  try {
    procs = JSON.parse(await readFile(path.join(info.stateDir, 'processes.json'), 'utf8')) as typeof procs;
  } catch {
    // Not written yet.
  }
  const byIp = new Map(info.pods.map((p) => [p.podIP, `${p.namespace}/${p.name}`]));
  const cpPods = new Map((cp?.pods ?? []).map((p) => [`${p.namespace}/${p.name}`, p]));
  const pods = await Promise.all(
    info.pods.map(async (p): Promise<PodView> => {
      const key = `${p.namespace}/${p.name}`;
      const c = cpPods.get(key);
      const [ready, certs, conns, link] = p.sidecar
        ? await Promise.all([
            httpGet(p.admin ?? '', '/ready'),
            getJson<{ serial: string; notAfter: string; timeLeftSeconds: number }>(p.admin, '/certs'),
            getJson<{
              inbound: Record<string, PortTally>;
              outbound: { mtls: number; plaintext: number; refused: number };
            }>(p.admin, '/connections'),
            getJson<{ connected: boolean }>(p.admin, '/control-plane'),
          ])
        : [undefined, undefined, undefined, undefined];
      const ports = (c?.ports ?? []).map((port): PortView => {
        const t = conns?.inbound[String(port.port)];
        const callers: Record<string, number> = {};
        for (const [ip, n] of Object.entries(t?.plaintextSources ?? {})) {
          const who = byIp.get(ip) ?? ip;
          callers[who] = (callers[who] ?? 0) + n;
        }
        return {
          ...port,
          mtls: t?.mtls ?? 0,
          plaintext: t?.plaintext ?? 0,
          refused: t?.refused ?? 0,
          plaintextCallers: callers,
          refusedBy: t?.refusedBy ?? {},
        };
      });
      return {
        namespace: p.namespace,
        name: p.name,
        podIP: p.podIP,
        identity: p.identity,
        sidecar: p.sidecar,
        admin: p.admin,
        ready: p.sidecar ? ready?.status === 200 : undefined,
        configVersion: c?.configVersion,
        appliedVersion: c?.appliedVersion,
        certificate: certs
          ? { serial: certs.serial, notAfter: certs.notAfter, timeLeftSeconds: certs.timeLeftSeconds }
          : undefined,
        controlPlaneConnected: link?.connected,
        ports,
        outbound: conns?.outbound,
        processes: (procs.pods?.[key] ?? []).map((p) => ({
          name: p.name,
          state: p.state,
          restarts: p.restarts,
          lastExit: p.lastExit,
        })),
      };
    }),
  );
  return {
    dir: info.dir,
    stateDir: info.stateDir,
    controlPlane: {
      ...info.controlPlane,
      reachable: cp !== undefined,
      version: cp?.version,
      connectedProxies: cp?.connectedProxies,
      certificatesIssued: cp?.certificatesIssued,
    },
    controlPlaneProcess: procs.controlPlane,
    supervisorErrors: procs.errors ?? [],
    lastChange: cp?.lastChange,
    errors: cp?.errors ?? [],
    pods,
  };
}

function duration(seconds: number): string {
  if (seconds < 0) return 'EXPIRED';
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(seconds % 60).padStart(2, '0')}s`;
}

/** Rows as aligned columns; the last column is not padded. */
export function table(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = [];
  for (const r of rows) {
    r.forEach((c, i) => {
      widths[i] = Math.max(widths[i] ?? 0, c.length);
    });
  }
  return rows.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

/** The status as text: one block per pod, ports with modes and what arrived, then errors. */
export function formatStatus(s: MeshStatus): string {
  const lines: string[] = [];
  const cp = s.controlPlane;
  lines.push(
    `control plane ${cp.api}: ${cp.reachable ? `config version ${cp.version}, ${cp.connectedProxies} sidecars connected, ${cp.certificatesIssued} certificates issued` : 'UNREACHABLE (sidecars keep their last config)'}`,
  );
  if (s.lastChange) {
    const c = s.lastChange;
    lines.push(
      `last change: version ${c.version} reached ${c.applied}/${c.pods} sidecars${c.latencyMs !== undefined ? ` in ${c.latencyMs} ms` : ''}`,
    );
  }
  const rows: string[][] = [
    ['POD', 'IP', 'IDENTITY', 'SIDECAR', 'CERT LEFT', 'PORT', 'MODE', 'MTLS', 'PLAIN', 'REFUSED'],
  ];
  for (const p of s.pods) {
    const sidecar = !p.sidecar
      ? 'none'
      : `${p.ready ? 'ready' : 'NOT READY'}${p.controlPlaneConnected === false ? ' (cp lost)' : ''}${p.appliedVersion ? ` v${p.appliedVersion}` : ''}`;
    const cert = p.certificate ? duration(p.certificate.timeLeftSeconds) : '-';
    const head = [
      `${p.namespace}/${p.name}`,
      p.podIP,
      p.identity?.replace(/^spiffe:\/\/[^/]+/, '') ?? '-',
      sidecar,
      cert,
    ];
    if (p.ports.length === 0) rows.push([...head, '-', '-', '', '', '']);
    p.ports.forEach((port, i) => {
      const h = i === 0 ? head : ['', '', '', '', ''];
      const mode = p.sidecar ? port.mode : `${port.mode} (not enforced)`;
      rows.push([
        ...h,
        `${port.port}/${port.protocol}`,
        mode,
        p.sidecar ? String(port.mtls) : '-',
        p.sidecar ? String(port.plaintext) : '-',
        p.sidecar ? String(port.refused) : '-',
      ]);
    });
  }
  lines.push('', ...table(rows));
  const callers: string[] = [];
  for (const p of s.pods) {
    for (const port of p.ports) {
      const who = Object.entries(port.plaintextCallers);
      if (who.length > 0)
        callers.push(
          `  ${p.namespace}/${p.name}:${port.port} (${port.mode}) ← ${who.map(([w, n]) => `${w} ×${n}`).join(', ')}`,
        );
      const refused = Object.entries(port.refusedBy);
      if (refused.length > 0)
        callers.push(
          `  ${p.namespace}/${p.name}:${port.port} refused: ${refused.map(([r, n]) => `${r} ×${n}`).join(', ')}`,
        );
    }
  }
  if (callers.length > 0) lines.push('', 'plaintext callers and refusals:', ...callers);
  const troubled: ProcessInfo[] = [
    ...(s.controlPlaneProcess ? [s.controlPlaneProcess] : []),
    ...s.pods.flatMap((p) => [...(p.processes ?? [])]),
  ].filter((p) => p.state !== 'running' || p.restarts > 0);
  if (troubled.length > 0) {
    lines.push('', 'processes:');
    for (const p of troubled) {
      lines.push(
        `  ${p.name}: ${p.state}${p.restarts > 0 ? `, restarted ${p.restarts}×` : ''}${p.lastExit ? ` (last ${p.lastExit})` : ''}`,
      );
    }
  }
  if ((s.supervisorErrors ?? []).length > 0) {
    lines.push('', 'kmtls up errors (see logs/supervisor.log):');
    for (const e of s.supervisorErrors ?? []) lines.push(`  ${new Date(e.atMs).toISOString()} ${e.message}`);
  }
  if (s.errors.length > 0) {
    lines.push('', 'manifest errors:');
    for (const e of s.errors) {
      lines.push(
        `  ${e.file}: ${e.servingLastGood ? 'refused, the last good version keeps serving' : 'refused, never served'}`,
      );
      for (const m of e.problems) lines.push(`    ${m}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
