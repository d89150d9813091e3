/**
 * The PKI part of `npm run bench`: certificates issued per second by the kmtls CA, side by side with
 * the machine's own signing ceiling (`openssl speed ecdsap256`, spawned in the same run), with Node's
 * raw signing and verification (to show where the gap comes from) and with @peculiar/x509 over
 * WebCrypto, the JavaScript ASN.1 route kmtls does not take on its hot path.
 *
 * Key generation and CSR creation happen before any timer starts: a pool of distinct P-256 keys, each
 * issuing path using each key at most once, as a burst of new pods would. Every certificate issued
 * is checked afterwards (untimed) with node's X509Certificate against the root; a bad certificate
 * stops the bench, a slow one never does.
 */

import { spawnSync } from 'node:child_process';
import type { webcrypto as WebCrypto } from 'node:crypto';
import {
  createHash,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  verify,
  webcrypto,
  X509Certificate,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { SpiffeId } from '../src/identity/index.js';
import { parseSpiffeId } from '../src/identity/index.js';
import type { AuthenticatedCaller } from '../src/pki/index.js';
import {
  CertificateAuthority,
  CLOCK_SKEW_GRACE_MS,
  createCsr,
  createRoot,
  DEFAULT_LEAF_TTL_MS,
  importPublicKey,
  readCertificate,
  selfSignedMaterial,
  verifyCsr,
} from '../src/pki/index.js';
import type { Timing } from './measure.js';
import { collectGarbage, measureInterleaved, median } from './measure.js';

export interface PkiPlan {
  /** Distinct EC P-256 keys (and a CSR for each) made before any timing. */
  readonly poolSize: number;
  /** Rounds of: one `openssl speed` run, then every Node path in alternation. */
  readonly rounds: number;
  readonly runsPerRound: number;
  /** `openssl speed -seconds`, per operation (sign, then verify) and per round. */
  readonly opensslSeconds: number;
  /** Raw `crypto.sign` calls per timed run: far faster than issuance, so a bigger batch than the pool's. */
  readonly rawSignsPerRun: number;
  /** The @peculiar/x509 baseline: a bounded number of certificates, as it is slow. */
  readonly library: { readonly warmup: number; readonly runs: number; readonly perRun: number };
}

/** A throughput measured as timed runs of `perRun` operations each. */
export interface Rate {
  readonly timing: Timing;
  readonly perRun: number;
  /** Operations per second at the median run time. */
  readonly perSecond: number;
  /** At the slowest and fastest runs. */
  readonly minPerSecond: number;
  readonly maxPerSecond: number;
  /** Microseconds per operation at the median. */
  readonly us: number;
}

export interface OpensslSpeed {
  readonly signPerSecond: number;
  readonly verifyPerSecond: number;
}

export interface PkiResult {
  readonly plan: PkiPlan;
  readonly openssl: {
    readonly version: string;
    readonly runs: readonly OpensslSpeed[];
    readonly signPerSecond: number;
    readonly verifyPerSecond: number;
    /** One verify and one sign per certificate: 1 / (1/sign + 1/verify). */
    readonly csrPathPerSecond: number;
  };
  readonly kmtls: {
    readonly sign: Rate;
    /** `ca.signAsync(csr)` with many requests in flight: verify and sign on libuv's thread pool. */
    readonly signAsync: Rate;
    readonly signPublicKey: Rate;
    /** The CSR half of `sign` alone: parse, import the key, check it, verify the signature. */
    readonly verifyCsr: Rate;
  };
  readonly node: {
    readonly sign: Rate;
    readonly verifyPrepared: Rate;
    readonly verifyImportDer: Rate;
    readonly verifyImportJwk: Rate;
  };
  readonly library: { readonly version: string; readonly fromCsr: Rate; readonly fromSpki: Rate };
  /** Certificates checked against the root, per path. */
  readonly validated: Readonly<Record<IssuingPath, number>>;
  readonly certificateBytes: Readonly<Record<IssuingPath, number>>;
  readonly tbsBytes: number;
  readonly seconds: number;
}

export type IssuingPath = 'kmtlsSign' | 'kmtlsSignPublicKey' | 'libraryFromCsr' | 'libraryFromSpki';

const TRUST_DOMAIN = 'cluster.local';
const WORKLOAD_URI = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/burst`;
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

function rateOf(timing: Timing, perRun: number): Rate {
  return {
    timing,
    perRun,
    perSecond: (perRun * 1000) / timing.medianMs,
    minPerSecond: (perRun * 1000) / timing.maxMs,
    maxPerSecond: (perRun * 1000) / timing.minMs,
    us: (timing.medianMs * 1000) / perRun,
  };
}

function timingOf(runsMs: readonly number[]): Timing {
  return { runsMs, medianMs: median(runsMs), minMs: Math.min(...runsMs), maxMs: Math.max(...runsMs) };
}

/** The top-level elements of a DER SEQUENCE: enough to cut a TBS or a CSR's parts out of a buffer. */
function sequenceChildren(der: Buffer): Buffer[] {
  const header = (at: number): { contentStart: number; end: number } => {
    const first = der[at + 1] ?? 0;
    if (first < 0x80) return { contentStart: at + 2, end: at + 2 + first };
    const count = first & 0x7f;
    let length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (der[at + 2 + i] ?? 0);
    return { contentStart: at + 2 + count, end: at + 2 + count + length };
  };
  const root = header(0);
  const out: Buffer[] = [];
  for (let at = root.contentStart; at < root.end; ) {
    const child = header(at);
    out.push(der.subarray(at, child.end));
    at = child.end;
  }
  return out;
}

function runOpensslSpeed(seconds: number): OpensslSpeed {
  const run = spawnSync('openssl', ['speed', '-seconds', String(seconds), 'ecdsap256'], { encoding: 'utf8' });
  if (run.error !== undefined || run.status !== 0) {
    throw new Error(
      `openssl speed failed: exit ${run.status ?? 'none'} (${run.error?.message ?? run.stderr.trim().slice(-200)})`,
    );
  }
  // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  28839.0  10967.3": sign s, verify s, sign/s, verify/s.
  const m = /^\s*256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)\s*$/m.exec(run.stdout);
  if (m === null) {
    throw new Error(`openssl speed output not understood: no nistp256 line in ${JSON.stringify(run.stdout)}`);
  }
  return { signPerSecond: Number(m[1]), verifyPerSecond: Number(m[2]) };
}

function opensslVersion(): string {
  const run = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  if (run.status !== 0) return 'unknown';
  // "OpenSSL 3.0.19 27 Jan 2026 (Library: OpenSSL 3.0.19 27 Jan 2026)": the library part only when it differs.
  const m = /^(.*?) \(Library: (.*)\)$/.exec(run.stdout.trim());
  return m === null || m[1] !== m[2] ? run.stdout.trim() : (m[1] ?? 'unknown');
}

function libraryVersion(): string {
  try {
    const pkg = new URL('../node_modules/@peculiar/x509/package.json', import.meta.url);
    return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** A positive 16-byte serial, as kmtls makes them (top bit clear, never zero). */
function randomSerial(): Buffer {
  const s = randomBytes(16);
  s[0] = ((s[0] ?? 0) & 0x7f) | 0x01;
  return s;
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey BIT STRING's value, the key identifier kmtls writes. */
function keyIdentifierOf(spki: Buffer): Buffer {
  const bits = sequenceChildren(spki)[1];
  if (bits === undefined) throw new Error('BUG: SubjectPublicKeyInfo without a key');
  const headerBytes = bits[1]! < 0x80 ? 2 : 2 + (bits[1]! & 0x7f);
  return createHash('sha1')
    .update(bits.subarray(headerBytes + 1))
    .digest();
}

/** One pooled requester: a key no other issuance on the same path uses. */
interface Requester {
  readonly spki: Buffer;
  readonly csr: Buffer;
  /** The CSR's certificationRequestInfo and signature: what a CA verifies. */
  readonly csrInfo: Buffer;
  readonly csrSignature: Buffer;
}

function makePool(size: number, uri: string): Requester[] {
  const pool: Requester[] = [];
  for (let i = 0; i < size; i++) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const csr = createCsr(privateKey, { uris: [uri] });
    const [csrInfo, , sigBits] = sequenceChildren(csr);
    if (csrInfo === undefined || sigBits === undefined) throw new Error('BUG: createCsr made a short CSR');
    // BIT STRING: tag, one length byte (a P-256 signature is < 128 bytes), unused-bits byte, DER signature.
    pool.push({
      spki: publicKey.export({ format: 'der', type: 'spki' }),
      csr,
      csrInfo,
      csrSignature: sigBits.subarray(3),
    });
  }
  return pool;
}

interface Issued {
  readonly der: Buffer;
  readonly requester: Requester;
}

/**
 * What is wrong with an issued certificate, or undefined: the shape every path must produce (the
 * caller stops the bench on the first problem).
 */
function certificateProblem(issued: Issued, root: X509Certificate, rootKeyId: Buffer): string | undefined {
  let x: X509Certificate;
  try {
    x = new X509Certificate(issued.der);
  } catch (err) {
    return `node's X509Certificate cannot parse it: ${(err as Error).message}`;
  }
  if (!x.checkIssued(root)) return 'not issued by the root (names or key identifiers do not chain)';
  if (!x.verify(root.publicKey)) return "signature does not verify with the root's key";
  if (x.ca) return 'marked as a CA';
  if (x.subjectAltName !== `URI:${WORKLOAD_URI}`) return `subjectAltName is ${x.subjectAltName ?? 'absent'}`;
  if (!x.publicKey.export({ format: 'der', type: 'spki' }).equals(issued.requester.spki)) {
    return "certifies a key other than the requester's";
  }
  const f = readCertificate(issued.der);
  if (!f.sanCritical) return 'SAN extension not critical';
  if (f.keyUsage?.join(',') !== 'digitalSignature,keyEncipherment') return `keyUsage ${f.keyUsage}`;
  if (f.extKeyUsage?.join(',') !== `${SERVER_AUTH},${CLIENT_AUTH}`) return `extKeyUsage ${f.extKeyUsage}`;
  if (!f.subjectKeyId?.equals(keyIdentifierOf(issued.requester.spki))) return 'SKI is not SHA-1 of the key';
  if (!f.authorityKeyId?.equals(rootKeyId)) return "AKI is not the root's SKI";
  const validityMs = f.notAfter.getTime() - f.notBefore.getTime();
  if (validityMs !== DEFAULT_LEAF_TTL_MS + CLOCK_SKEW_GRACE_MS)
    return `validity ${validityMs} ms, not 24 h + 2 min`;
  return undefined;
}

type X509Module = typeof import('@peculiar/x509');

/**
 * The same leaf through @peculiar/x509 over WebCrypto: what the issue measured at under 500 per
 * second. reflect-metadata must be loaded before the library (its DI container needs it), so both
 * are imported here, in that order, and only when this comparison runs.
 */
async function loadLibrary(): Promise<X509Module> {
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto);
  return x509;
}

async function measureLibrary(
  plan: PkiPlan['library'],
  issue: Readonly<Record<'fromCsr' | 'fromSpki', (r: Requester) => Promise<Buffer>>>,
  pool: readonly Requester[],
  issued: Record<'libraryFromCsr' | 'libraryFromSpki', Issued[]>,
): Promise<{ fromCsr: Rate; fromSpki: Rate }> {
  const runs = { fromCsr: [] as number[], fromSpki: [] as number[] };
  const into = { fromCsr: issued.libraryFromCsr, fromSpki: issued.libraryFromSpki };
  let cursor = 0;
  const batch = async (which: 'fromCsr' | 'fromSpki', count: number): Promise<number> => {
    const requesters = Array.from({ length: count }, (_, i) => pool[(cursor + i) % pool.length]!);
    collectGarbage();
    const start = performance.now();
    // One at a time, as a CA loop awaiting each certificate would; WebCrypto's work runs off-thread.
    for (const r of requesters) into[which].push({ der: await issue[which](r), requester: r });
    return performance.now() - start;
  };
  for (const which of ['fromCsr', 'fromSpki'] as const) await batch(which, plan.warmup);
  cursor += plan.warmup;
  for (let i = 0; i < plan.runs; i++) {
    for (const which of ['fromCsr', 'fromSpki'] as const) runs[which].push(await batch(which, plan.perRun));
    cursor += plan.perRun;
  }
  return {
    fromCsr: rateOf(timingOf(runs.fromCsr), plan.perRun),
    fromSpki: rateOf(timingOf(runs.fromSpki), plan.perRun),
  };
}

function spiffeId(uri: string): SpiffeId {
  const parsed = parseSpiffeId(uri);
  if (!parsed.ok) throw new Error(`BUG: bench identity rejected: ${parsed.message}`);
  return parsed.id;
}

export async function runPkiBench(plan: PkiPlan, log: (line: string) => void): Promise<PkiResult> {
  const started = performance.now();
  const clock = { now: () => Date.now() };
  const root = createRoot({ trustDomain: TRUST_DOMAIN, now: clock.now(), random: randomBytes });
  const material = selfSignedMaterial(TRUST_DOMAIN, root);
  const ca = new CertificateAuthority(material, { clock, random: randomBytes });
  const caller: AuthenticatedCaller = { identities: [spiffeId(WORKLOAD_URI)], method: 'bench' };
  const rootX509 = new X509Certificate(root.certificate);
  const rootFields = material.signer.certificate;
  const rootKeyId = rootFields.subjectKeyId;
  if (rootKeyId === undefined) throw new Error('BUG: kmtls root without a subject key identifier');

  log(`pki: making ${plan.poolSize.toLocaleString('en-US')} P-256 keys and CSRs (untimed)`);
  const pool = makePool(plan.poolSize, WORKLOAD_URI);
  // Keys imported ahead, to time verification alone; JWK and DER imports are timed separately below.
  const preparedKeys = pool.map((r) => createPublicKey({ key: r.spki, format: 'der', type: 'spki' }));
  const sample = ca.signPublicKey(pool[0]!.spki, caller).certificate;
  const tbs = sequenceChildren(sample)[0];
  if (tbs === undefined) throw new Error('BUG: issued certificate without a TBSCertificate');

  // Every path walks the pool from the start, `batch` requesters per run, using each at most once.
  const batch = Math.floor(plan.poolSize / (1 + plan.rounds * plan.runsPerRound));
  const cursors = new Map<string, number>();
  const next = (path: string): number => {
    const at = cursors.get(path) ?? 0;
    cursors.set(path, (at + batch) % plan.poolSize);
    return at;
  };
  const issued: Record<IssuingPath, Issued[]> = {
    kmtlsSign: [],
    kmtlsSignPublicKey: [],
    libraryFromCsr: [],
    libraryFromSpki: [],
  };
  const nodeSignature: Buffer[] = [];
  const fns = {
    kmtlsSign: () => {
      const at = next('kmtlsSign');
      for (let i = at; i < at + batch; i++) {
        const r = pool[i]!;
        issued.kmtlsSign.push({ der: ca.sign(r.csr, caller).certificate, requester: r });
      }
    },
    kmtlsSignPublicKey: () => {
      const at = next('kmtlsSignPublicKey');
      for (let i = at; i < at + batch; i++) {
        const r = pool[i]!;
        issued.kmtlsSignPublicKey.push({ der: ca.signPublicKey(r.spki, caller).certificate, requester: r });
      }
    },
    kmtlsVerifyCsr: () => {
      const at = next('kmtlsVerifyCsr');
      for (let i = at; i < at + batch; i++) verifyCsr(pool[i]!.csr);
    },
    nodeSign: () => {
      let last: Buffer | undefined;
      for (let i = 0; i < plan.rawSignsPerRun; i++)
        last = sign('sha256', tbs, { key: root.key, dsaEncoding: 'der' });
      if (last !== undefined) nodeSignature[0] = last;
    },
    verifyPrepared: () => {
      const at = next('verifyPrepared');
      for (let i = at; i < at + batch; i++) {
        const r = pool[i]!;
        if (!verify('sha256', r.csrInfo, { key: preparedKeys[i]!, dsaEncoding: 'der' }, r.csrSignature)) {
          throw new Error(`BUG: CSR #${i} does not verify with its own key`);
        }
      }
    },
    verifyImportDer: () => {
      const at = next('verifyImportDer');
      for (let i = at; i < at + batch; i++) {
        const r = pool[i]!;
        const key = createPublicKey({ key: r.spki, format: 'der', type: 'spki' });
        if (!verify('sha256', r.csrInfo, { key, dsaEncoding: 'der' }, r.csrSignature)) {
          throw new Error(`BUG: CSR #${i} does not verify with its own key`);
        }
      }
    },
    verifyImportJwk: () => {
      const at = next('verifyImportJwk');
      for (let i = at; i < at + batch; i++) {
        const r = pool[i]!;
        const key = importPublicKey(r.spki);
        if (!verify('sha256', r.csrInfo, { key, dsaEncoding: 'der' }, r.csrSignature)) {
          throw new Error(`BUG: CSR #${i} does not verify with its own key`);
        }
      }
    },
  };

  const opensslRuns: OpensslSpeed[] = [];
  const runsMs = new Map<keyof typeof fns, number[]>();
  for (let round = 0; round < plan.rounds; round++) {
    log(`pki: round ${round + 1}/${plan.rounds}: openssl speed -seconds ${plan.opensslSeconds} ecdsap256`);
    const speed = runOpensslSpeed(plan.opensslSeconds);
    opensslRuns.push(speed);
    log(`pki: round ${round + 1}/${plan.rounds}: kmtls and node paths in alternation`);
    const timings = measureInterleaved({ warmup: round === 0 ? 1 : 0, runs: plan.runsPerRound }, fns);
    for (const [k, t] of Object.entries(timings) as [keyof typeof fns, Timing][]) {
      runsMs.set(k, [...(runsMs.get(k) ?? []), ...t.runsMs]);
    }
  }
  const rate = (k: keyof typeof fns, perRun = batch): Rate => rateOf(timingOf(runsMs.get(k) ?? []), perRun);

  // A pod burst as the control plane serves it: many CSRs in flight at once through signAsync.
  log('pki: kmtls ca.signAsync with 32 requests in flight');
  const asyncRunsMs: number[] = [];
  const asyncIssued: Issued[] = [];
  for (let run = 0; run < 1 + plan.rounds * plan.runsPerRound; run++) {
    let at = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (at < batch) {
          const r = pool[at++]!;
          const der = (await ca.signAsync(r.csr, caller)).certificate;
          // Checked like the others, outside the timer, on the untimed first run.
          if (run === 0) asyncIssued.push({ der, requester: r });
        }
      }),
    );
    // The first run warms the thread pool and the JIT; it is not timed.
    if (run > 0) asyncRunsMs.push(performance.now() - started);
  }
  const signAsyncRate = rateOf(timingOf(asyncRunsMs), batch);

  const signature = nodeSignature[0];
  if (
    signature === undefined ||
    !verify('sha256', tbs, { key: rootX509.publicKey, dsaEncoding: 'der' }, signature)
  ) {
    throw new Error("BUG: node's raw signature over the TBS does not verify with the root's key");
  }

  log('pki: @peculiar/x509 over WebCrypto, the comparison baseline');
  const x509 = await loadLibrary();
  const signingKey: WebCrypto.CryptoKey = await webcrypto.subtle.importKey(
    'pkcs8',
    root.key.export({ format: 'der', type: 'pkcs8' }),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['sign'],
  );
  // What a CA computes once: its own name and key identifier.
  const issuerName = new x509.Name(rootFields.subjectName);
  const authorityKeyId = new x509.AuthorityKeyIdentifierExtension(rootKeyId.toString('hex'));
  const emptyName = Buffer.from([0x30, 0x00]);
  const createLeaf = async (publicKey: InstanceType<X509Module['PublicKey']> | Buffer): Promise<Buffer> => {
    const nowMs = clock.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial().toString('hex'),
      issuer: issuerName,
      subject: new x509.Name(emptyName),
      notBefore: new Date(nowMs - CLOCK_SKEW_GRACE_MS),
      notAfter: new Date(nowMs + DEFAULT_LEAF_TTL_MS),
      publicKey,
      signingKey,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
          true,
        ),
        new x509.ExtendedKeyUsageExtension([
          x509.ExtendedKeyUsage.serverAuth,
          x509.ExtendedKeyUsage.clientAuth,
        ]),
        await x509.SubjectKeyIdentifierExtension.create(publicKey),
        authorityKeyId,
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: WORKLOAD_URI }], true),
      ],
    });
    return Buffer.from(cert.rawData);
  };
  const library = await measureLibrary(
    plan.library,
    {
      fromCsr: async (r) => {
        const csr = new x509.Pkcs10CertificateRequest(r.csr);
        if (!(await csr.verify())) throw new Error('BUG: @peculiar/x509 rejects a CSR kmtls made');
        return createLeaf(csr.publicKey);
      },
      fromSpki: (r) => createLeaf(r.spki),
    },
    pool,
    issued,
  );

  log('pki: checking every issued certificate against the root (untimed)');
  const validated = {} as Record<IssuingPath, number>;
  const certificateBytes = {} as Record<IssuingPath, number>;
  for (const path of Object.keys(issued) as IssuingPath[]) {
    const all = issued[path];
    for (const [n, c] of all.entries()) {
      const problem = certificateProblem(c, rootX509, rootKeyId);
      if (problem !== undefined)
        throw new Error(`issued certificate check failed: ${path} #${n} (${problem})`);
    }
    validated[path] = all.length;
    certificateBytes[path] = median(all.map((c) => c.der.length));
  }
  for (const [n, c] of asyncIssued.entries()) {
    const problem = certificateProblem(c, rootX509, rootKeyId);
    if (problem !== undefined)
      throw new Error(`issued certificate check failed: signAsync #${n} (${problem})`);
  }

  const signPerSecond = median(opensslRuns.map((r) => r.signPerSecond));
  const verifyPerSecond = median(opensslRuns.map((r) => r.verifyPerSecond));
  const result: PkiResult = {
    plan,
    openssl: {
      version: opensslVersion(),
      runs: opensslRuns,
      signPerSecond,
      verifyPerSecond,
      csrPathPerSecond: 1 / (1 / signPerSecond + 1 / verifyPerSecond),
    },
    kmtls: {
      sign: rate('kmtlsSign'),
      signAsync: signAsyncRate,
      signPublicKey: rate('kmtlsSignPublicKey'),
      verifyCsr: rate('kmtlsVerifyCsr'),
    },
    node: {
      sign: rate('nodeSign', plan.rawSignsPerRun),
      verifyPrepared: rate('verifyPrepared'),
      verifyImportDer: rate('verifyImportDer'),
      verifyImportJwk: rate('verifyImportJwk'),
    },
    library: { version: libraryVersion(), ...library },
    validated,
    certificateBytes,
    tbsBytes: tbs.length,
    seconds: (performance.now() - started) / 1000,
  };
  const perSecond = (r: Rate) => Math.round(r.perSecond).toLocaleString('en-US');
  log(
    `pki: kmtls ca.sign ${perSecond(result.kmtls.sign)}/s, signPublicKey ${perSecond(result.kmtls.signPublicKey)}/s; ` +
      `openssl sign ${Math.round(signPerSecond)}/s, verify ${Math.round(verifyPerSecond)}/s; ` +
      `@peculiar/x509 ${perSecond(result.library.fromCsr)}/s from CSRs (${result.seconds.toFixed(0)} s)`,
  );
  return result;
}
