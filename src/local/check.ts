import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { DirectorySource } from '../config/index.js';
import type { ControlPlaneStatus } from '../controlplane/index.js';
import { KmtlsError } from '../errors.js';
import { parseSpiffeId } from '../identity/index.js';
import type { MeshSnapshot } from '../mesh/index.js';
import {
  buildMeshSnapshot,
  CLIENT_ALPN_HTTP,
  CLIENT_ALPN_TCP,
  controlPlaneIdentity,
  explainEdge,
  findWorkload,
} from '../mesh/index.js';
import { CertificateAuthority, createRoot, selfSignedMaterial } from '../pki/index.js';
import type { ServerMode } from '../policy/index.js';
import { judge } from '../policy/index.js';
import type { ConnectionRecord, ProxyIdentity } from '../proxy/index.js';
import { buildIdentity, parseAddress, requestCertificate } from '../proxy/index.js';
import type { RuntimeInfo } from './mesh.js';
import { httpGet } from './mesh.js';
import { table } from './status.js';

export type ProbeKind = 'plaintext' | 'mtls' | 'foreign-ca';
export type Outcome = 'accepted' | 'refused';

export interface ProbeResult {
  readonly pod: string;
  readonly port: number;
  readonly protocol: string;
  readonly mode: string;
  readonly policy: string;
  readonly sidecar: boolean;
  readonly probe: ProbeKind;
  readonly expected: Outcome;
  /** Why the policy core expects that (a verdict code). */
  readonly expectedCode: string;
  readonly observed: Outcome;
  /** What the wire showed: the sidecar's refusal reason when it recorded one, else what the socket saw. */
  readonly detail: string;
  readonly ok: boolean;
}

export interface FlowResult {
  readonly line: number;
  readonly text: string;
  readonly source: string;
  readonly destination: string;
  readonly declared: FlowOutcome;
  readonly observed: FlowOutcome;
  /** What the policy core predicts for the edge (`explain edge`), `mixed` when endpoints differ. */
  readonly predicted: FlowOutcome | 'mixed' | 'depends' | 'unknown';
  readonly detail: string;
  readonly ok: boolean;
}

export type FlowOutcome = 'mtls' | 'plaintext' | 'refused';

export interface CheckReport {
  readonly probes: readonly ProbeResult[];
  readonly flows: readonly FlowResult[];
  readonly mismatches: number;
}

const PROBE_TIMEOUT_MS = 1_500;

interface WireResult {
  readonly outcome: Outcome;
  readonly detail: string;
  readonly local: string | undefined;
}

/** Bytes a server answers: an HTTP request on HTTP ports, a line on TCP ports. */
function probeBytes(protocol: string): string {
  return protocol === 'http'
    ? 'GET /healthz HTTP/1.1\r\nHost: kmtls-check\r\nConnection: close\r\n\r\n'
    : 'kmtls-check\n';
}

/**
 * One connection: accepted when the far side answers or keeps the connection open for the probe's
 * time; refused when it is closed or reset before a byte of answer.
 */
function exchange(
  socket: net.Socket | tls.TLSSocket,
  protocol: string,
  ready: 'connect' | 'secureConnect',
): Promise<WireResult> {
  return new Promise((resolve) => {
    let done = false;
    let local: string | undefined;
    const finish = (outcome: Outcome, detail: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ outcome, detail, local });
    };
    const timer = setTimeout(() => finish('accepted', 'connection held open'), PROBE_TIMEOUT_MS);
    socket.once(ready, () => {
      local = `${socket.localAddress}:${socket.localPort}`;
      socket.write(probeBytes(protocol));
    });
    socket.on('data', (d: Buffer) =>
      finish('accepted', protocol === 'http' ? d.toString('latin1').split('\r\n')[0]! : 'answered'),
    );
    socket.on('error', (err: NodeJS.ErrnoException) => {
      local ??= socket.localPort ? `${socket.localAddress}:${socket.localPort}` : undefined;
      finish('refused', err.code === 'ECONNRESET' ? 'connection reset' : err.message);
    });
    socket.on('close', () => finish('refused', 'connection closed'));
  });
}

function connectPlain(address: string, from: string | undefined, protocol: string): Promise<WireResult> {
  const a = parseAddress(address);
  return exchange(
    net.connect({ host: a.host, port: a.port, ...(from ? { localAddress: from } : {}) }),
    protocol,
    'connect',
  );
}

function connectTls(
  address: string,
  from: string | undefined,
  protocol: string,
  id: ProxyIdentity,
  expectedServer: string | undefined,
  verify: boolean,
): Promise<WireResult> {
  const a = parseAddress(address);
  const socket = tls.connect({
    host: a.host,
    port: a.port,
    ...(from ? { localAddress: from } : {}),
    cert: id.chainPem,
    key: id.keyPem,
    ca: id.bundlePem,
    minVersion: 'TLSv1.2',
    ALPNProtocols: [...(protocol === 'http' ? CLIENT_ALPN_HTTP : CLIENT_ALPN_TCP)],
    rejectUnauthorized: verify,
    checkServerIdentity: (_h, cert) => {
      if (!verify || expectedServer === undefined) return undefined;
      const uris = (cert.subjectaltname ?? '').split(', ');
      return uris.includes(`URI:${expectedServer}`)
        ? undefined
        : new Error(`SAN_MISMATCH: the server presented ${uris.join(', ')}, not ${expectedServer}`);
    },
  });
  return exchange(socket, protocol, 'secureConnect');
}

/** A certificate from a CA the mesh has never seen, with a plausible SPIFFE ID. */
function foreignIdentity(trustDomain: string): ProxyIdentity {
  const now = Date.now();
  const root = createRoot({ trustDomain, now, random: randomBytes });
  const ca = new CertificateAuthority(selfSignedMaterial(trustDomain, root, [root.certificate]), {
    clock: { now: () => now },
    random: randomBytes,
  });
  const id = parseSpiffeId(`spiffe://${trustDomain}/ns/kmtls-system/sa/foreign`);
  if (!id.ok) throw new Error(id.message);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const issued = ca.signPublicKey(publicKey.export({ format: 'der', type: 'spki' }), {
    identities: [id.id],
    method: 'operator',
  });
  return buildIdentity({
    chainPem: issued.chainPem,
    keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    bundlePem: ca.trustBundlePem(),
  });
}

/** What the policy core says each probe should meet. */
export function expectedOutcome(
  probe: ProbeKind,
  mode: string,
  sidecar: boolean,
): { outcome: Outcome; code: string } {
  if (probe === 'foreign-ca') return { outcome: 'refused', code: 'UNKNOWN_CA' };
  const server: ServerMode = sidecar ? (mode as ServerMode) : 'NO_SIDECAR';
  const j = judge(probe === 'mtls' ? 'ISTIO_MUTUAL' : 'DISABLE', server);
  return { outcome: j.verdict === 'works' ? 'accepted' : 'refused', code: j.code };
}

/** The recent connections a sidecar recorded, to name why it refused a probe. */
async function recentOf(admin: string | undefined): Promise<ConnectionRecord[]> {
  if (!admin) return [];
  const r = await httpGet(admin, '/connections');
  if (r?.status !== 200) return [];
  return (JSON.parse(r.body) as { recent: ConnectionRecord[] }).recent;
}

/** A flow line: `NS/WORKLOAD -> NS/SERVICE:PORT = mtls|plaintext|refused`, `#` starts a comment. */
export function parseFlows(
  text: string,
  file: string,
): {
  line: number;
  text: string;
  source: string;
  service: string;
  namespace: string;
  port: number;
  declared: FlowOutcome;
}[] {
  const out = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') continue;
    const m =
      /^([a-z0-9-]+\/[a-z0-9.-]+)\s*->\s*([a-z0-9-]+)\/([a-z0-9-]+):([0-9]{1,5})\s*=\s*(mtls|plaintext|refused)$/i.exec(
        line,
      );
    if (!m) {
      throw new KmtlsError(
        'KMTLS_CHECK_FLOWS_INVALID',
        `${file}:${i + 1}: not a flow: ${JSON.stringify(raw.trim())} (write NS/WORKLOAD -> NS/SERVICE:PORT = mtls|plaintext|refused)`,
      );
    }
    out.push({
      line: i + 1,
      text: line,
      source: m[1]!,
      namespace: m[2]!,
      service: m[3]!,
      port: Number(m[4]),
      declared: m[5]!.toLowerCase() as FlowOutcome,
    });
  }
  return out;
}

/**
 * Probes every port of every pod of the running local mesh with plaintext, mesh mTLS (an identity
 * the control plane issues for the probe) and TLS from a foreign CA, and compares each outcome with
 * what the policy core expects for the port's mode. Declared flows are tried from the source pod's
 * own outbound address, so its sidecar decides and originates exactly as it does for the app.
 */
export async function runCheck(
  info: RuntimeInfo,
  flowsText?: { text: string; file: string },
): Promise<CheckReport> {
  const flows = flowsText ? parseFlows(flowsText.text, flowsText.file) : [];
  const statusText = await httpGet(info.controlPlane.admin, '/status');
  if (statusText?.status !== 200)
    throw new KmtlsError(
      'KMTLS_LOCAL_NOT_RUNNING',
      `the control plane at ${info.controlPlane.admin} does not answer`,
    );
  const status = JSON.parse(statusText.body) as ControlPlaneStatus;
  const rootsPem = await readFile(info.rootCertFile, 'utf8');
  const token = (await readFile(info.checkTokenFile, 'utf8')).trim();
  const mesh = await requestCertificate(
    {
      address: parseAddress(info.controlPlane.api),
      rootsPem,
      controlPlaneIdentity: controlPlaneIdentity(info.trustDomain),
    },
    async () => token,
    Date.now(),
  );
  const foreign = foreignIdentity(info.trustDomain);
  // Probes leave from an address of their own, so sidecars' records of them can be found.
  const from = info.controlPlane.api.split(':')[0]!.replace(/\.1$/, '.2');

  const probes: ProbeResult[] = [];
  const pending: {
    result: Omit<ProbeResult, 'observed' | 'detail' | 'ok'>;
    wire: Promise<WireResult>;
    admin: string | undefined;
  }[] = [];
  const podsByKey = new Map(info.pods.map((p) => [`${p.namespace}/${p.name}`, p]));
  for (const p of status.pods) {
    const pod = `${p.namespace}/${p.name}`;
    const rt = podsByKey.get(pod);
    for (const port of p.ports) {
      const address = `${p.podIP}:${port.port}`;
      for (const probe of ['plaintext', 'mtls', 'foreign-ca'] as const) {
        const exp = expectedOutcome(probe, port.mode, p.sidecar);
        const wire =
          probe === 'plaintext'
            ? connectPlain(address, from, port.protocol)
            : connectTls(
                address,
                from,
                port.protocol,
                probe === 'mtls' ? mesh.identity : foreign,
                probe === 'mtls' ? p.identity : undefined,
                probe === 'mtls',
              );
        pending.push({
          result: {
            pod,
            port: port.port,
            protocol: port.protocol,
            mode: port.mode,
            policy: port.policy,
            sidecar: p.sidecar,
            probe,
            expected: exp.outcome,
            expectedCode: exp.code,
          },
          wire,
          admin: rt?.admin,
        });
      }
    }
  }
  const wires = await Promise.all(pending.map((p) => p.wire));
  // A sidecar records a connection when it has closed its side too: give that a moment.
  const records = new Map<string, ConnectionRecord[]>();
  const wanted = new Map<string, Set<string>>();
  pending.forEach((p, i) => {
    const local = wires[i]!.local;
    if (p.admin && local) wanted.set(p.admin, (wanted.get(p.admin) ?? new Set()).add(local));
  });
  await Promise.all(
    [...wanted].map(async ([admin, locals]) => {
      const end = Date.now() + 1_000;
      for (;;) {
        const recs = await recentOf(admin);
        records.set(admin, recs);
        const seen = new Set(recs.map((r) => r.sourceAddress));
        if ([...locals].every((l) => seen.has(l)) || Date.now() > end) return;
        await new Promise((r) => setTimeout(r, 50));
      }
    }),
  );
  pending.forEach((p, i) => {
    const w = wires[i]!;
    const rec =
      p.admin && w.local
        ? records.get(p.admin)?.find((r) => r.sourceAddress === w.local && r.direction === 'inbound')
        : undefined;
    const detail =
      rec?.outcome === 'refused' && rec.reason
        ? `${rec.reason}${rec.policy ? ` (${rec.policy})` : ''}`
        : rec?.transport
          ? `${rec.transport}${rec.sourcePrincipal ? ` from ${rec.sourcePrincipal}` : ''}`
          : w.detail;
    probes.push({ ...p.result, observed: w.outcome, detail, ok: w.outcome === p.result.expected });
  });

  const flowResults: FlowResult[] = [];
  const snapshot = flows.length > 0 ? await servedSnapshot(info) : undefined;
  for (const f of flows) {
    const [srcNs, srcName] = f.source.split('/') as [string, string];
    const predicted = snapshot
      ? predictFlow(snapshot, srcNs, srcName, `${f.service}.${f.namespace}:${f.port}`)
      : 'unknown';
    const src =
      info.pods.find((p) => p.namespace === srcNs && p.name === srcName) ??
      info.pods.find((p) => p.namespace === srcNs && p.name.replace(/-[0-9]+$/, '') === srcName);
    const svc = info.services.find((s) => s.namespace === f.namespace && s.name === f.service);
    const sp = svc?.ports.find((p) => p.port === f.port);
    if (!src || !svc || !sp) {
      flowResults.push({
        line: f.line,
        text: f.text,
        source: f.source,
        destination: `${f.namespace}/${f.service}:${f.port}`,
        declared: f.declared,
        observed: 'refused',
        predicted,
        detail: !src
          ? `no pod of ${f.source} runs in the mesh`
          : `no Service port ${f.namespace}/${f.service}:${f.port}`,
        ok: false,
      });
      continue;
    }
    const wire = await connectPlain(
      `${src.outboundIP}:${sp.outboundPort}`,
      undefined,
      sp.name?.startsWith('http') ? 'http' : 'tcp',
    );
    let observed: FlowOutcome = wire.outcome === 'refused' ? 'refused' : 'plaintext';
    let detail = wire.detail;
    if (src.sidecar) {
      let rec: ConnectionRecord | undefined;
      const end = Date.now() + 1_000;
      while (!rec && Date.now() <= end) {
        rec = (await recentOf(src.admin)).find(
          (r) => r.direction === 'outbound' && r.sourceAddress === wire.local,
        );
        if (!rec) await new Promise((r) => setTimeout(r, 50));
      }
      if (rec?.outcome === 'refused') {
        observed = 'refused';
        detail = `${rec.reason ?? 'refused'}${rec.message ? `: ${rec.message}` : ''}`;
      } else if (rec?.transport === 'mtls' && wire.outcome === 'accepted') {
        observed = 'mtls';
        detail = `mtls to ${rec.destinationPrincipal ?? rec.destinationAddress ?? '?'}`;
      } else if (wire.outcome === 'refused' && rec?.transport === 'mtls') {
        detail = `mtls to ${rec.destinationAddress ?? '?'}, then ${wire.detail}`;
      }
    }
    flowResults.push({
      line: f.line,
      text: f.text,
      source: `${src.namespace}/${src.name}`,
      destination: `${f.namespace}/${f.service}:${f.port}`,
      declared: f.declared,
      observed,
      predicted,
      detail,
      ok: observed === f.declared,
    });
  }
  return {
    probes,
    flows: flowResults,
    mismatches: probes.filter((p) => !p.ok).length + flowResults.filter((f) => !f.ok).length,
  };
}

/** The manifests as the control plane serves them (a file that never validated is left out). */
async function servedSnapshot(info: RuntimeInfo): Promise<MeshSnapshot> {
  const source = await DirectorySource.open(info.dir, { watch: false });
  source.close();
  return buildMeshSnapshot(source.current().resources, {
    trustDomain: info.trustDomain,
    rootNamespace: info.rootNamespace ?? 'istio-system',
  });
}

/** What `explain edge` says a flow does: mtls, plaintext or refused when every endpoint agrees. */
export function predictFlow(
  snapshot: MeshSnapshot,
  namespace: string,
  name: string,
  hostPort: string,
): FlowResult['predicted'] {
  let found = findWorkload(snapshot, `${namespace}/${name}`);
  if (!found.ok) found = findWorkload(snapshot, `${namespace}/${name.replace(/-[0-9]+$/, '')}`);
  if (!found.ok) return 'unknown';
  const edge = explainEdge(snapshot, found.workload, hostPort);
  if (!edge.ok) return 'unknown';
  const e = edge.explanation;
  if (e.problem) return 'refused';
  const outcomes = new Set(
    e.endpoints.map((ep): FlowResult['predicted'] =>
      ep.verdict === 'fails'
        ? 'refused'
        : ep.verdict === 'depends'
          ? 'depends'
          : ep.code === 'MTLS'
            ? 'mtls'
            : 'plaintext',
    ),
  );
  if (outcomes.size === 0) return 'unknown';
  return outcomes.size === 1 ? [...outcomes][0]! : 'mixed';
}

/** The report as a table: observed next to expected, mismatches marked. */
export function formatCheck(r: CheckReport): string {
  const rows: string[][] = [['POD', 'PORT', 'MODE', 'PROBE', 'EXPECTED', 'OBSERVED', '', 'DETAIL']];
  for (const p of r.probes) {
    rows.push([
      p.pod,
      `${p.port}/${p.protocol}`,
      p.sidecar ? p.mode : 'no sidecar',
      p.probe,
      p.expected,
      p.observed,
      p.ok ? 'ok' : 'MISMATCH',
      p.detail,
    ]);
  }
  const lines = table(rows);
  if (r.flows.length > 0) {
    lines.push('', 'declared flows:');
    for (const f of r.flows) {
      lines.push(
        `  ${f.ok ? 'ok      ' : 'MISMATCH'}  line ${f.line}: ${f.source} -> ${f.destination}: declared ${f.declared}, observed ${f.observed} (${f.detail}); the policies say ${f.predicted}`,
      );
    }
  }
  lines.push(
    '',
    r.mismatches === 0
      ? `all ${r.probes.length + r.flows.length} checks match the policies`
      : `${r.mismatches} of ${r.probes.length + r.flows.length} checks do not match`,
  );
  return `${lines.join('\n')}\n`;
}
