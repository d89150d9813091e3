/**
 * The "Certificate issuance" section of BENCHMARKS.md, from the figures of bench/pki.ts. As in
 * report.ts, the reading is written from the figures, so its wording follows the run.
 */
import type { PkiResult, Rate } from './pki.js';

const int = (n: number): string => Math.round(n).toLocaleString('en-US');

function ratio(value: number): string {
  if (value >= 10) return `${value.toFixed(0)}×`;
  return value >= 1 ? `${value.toFixed(1)}×` : `${value.toFixed(2)}×`;
}

function us(value: number): string {
  if (value >= 1000) return int(value);
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function table(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  rightAligned: readonly number[] = [],
): string {
  const align = headers.map((_, i) => (rightAligned.includes(i) ? '---:' : '---'));
  return [headers, align, ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}

const range = (r: Rate): string => `${int(r.minPerSecond)}–${int(r.maxPerSecond)}`;
const runs = (r: Rate): string => `${r.timing.runsMs.length} × ${int(r.perRun)}`;

/** A difference of two medians from the same run; on a noisy machine it can come out below zero. */
function remainder(value: number): string {
  return value > 0 ? us(value) : `≈0 (${us(value)}: noise)`;
}

function verdict(ceilingOverKmtls: number): string {
  if (ceilingOverKmtls <= 2) return `within 2× of the ceiling (${ratio(ceilingOverKmtls)})`;
  if (ceilingOverKmtls <= 4) return `within a small factor of the ceiling (${ratio(ceilingOverKmtls)})`;
  return `the ceiling is ${ratio(ceilingOverKmtls)} higher, more than a small factor`;
}

function readPki(p: PkiResult): string[] {
  const o = p.openssl;
  const k = p.kmtls;
  const n = p.node;
  const signUs = 1e6 / o.signPerSecond;
  const verifyUs = 1e6 / o.verifyPerSecond;
  const csrOverKmtls = o.csrPathPerSecond / k.sign.perSecond;
  const signOverKmtls = o.signPerSecond / k.signPublicKey.perSecond;
  const importUs = n.verifyImportJwk.us - n.verifyPrepared.us;
  const jsInVerify = k.verifyCsr.us - n.verifyImportJwk.us;
  const jsInBuild = k.signPublicKey.us - n.sign.us;
  const parts = [
    { what: "importing the requester's key", value: importUs },
    { what: 'verifying the CSR', value: n.verifyPrepared.us },
    { what: 'signing the certificate', value: n.sign.us },
    { what: 'building the leaf in JavaScript (DER, serial, SKI, PEM)', value: jsInBuild },
    { what: 'parsing and checking the CSR in JavaScript', value: jsInVerify },
  ].sort((a, b) => b.value - a.value);
  return [
    `- **Headline.** kmtls issued ${int(k.sign.perSecond)} certificates per second from fresh CSRs ` +
      `(${us(k.sign.us)} µs each), against a CSR-path ceiling of ${int(o.csrPathPerSecond)} per second on this ` +
      `machine (OpenSSL: ${int(o.signPerSecond)} signatures and ${int(o.verifyPerSecond)} verifications per second ` +
      `on one core): ${verdict(csrOverKmtls)}. Without a CSR (\`signPublicKey\`) it issued ` +
      `${int(k.signPublicKey.perSecond)} per second, against ${int(o.signPerSecond)} signatures per second: ` +
      `${verdict(signOverKmtls)}.`,
    `- **Against @peculiar/x509.** The same certificate built by a JavaScript ASN.1 library over WebCrypto came to ` +
      `${int(p.library.fromCsr.perSecond)} per second from CSRs and ${int(p.library.fromSpki.perSecond)} from public keys: ` +
      `kmtls issues ${ratio(k.sign.perSecond / p.library.fromCsr.perSecond)} and ` +
      `${ratio(k.signPublicKey.perSecond / p.library.fromSpki.perSecond)} as many. The library builds an object ` +
      'model, serializes it through asn1js, and awaits WebCrypto several times per certificate (the SKI digest, ' +
      "the CSR key's import and verification, the signature), each an asynchronous round trip.",
    `- **Where the time goes.** \`ca.sign(csr)\` took ${us(k.sign.us)} µs: \`verifyCsr\` ${us(k.verifyCsr.us)} µs ` +
      `plus building and signing (\`signPublicKey\`) ${us(k.signPublicKey.us)} µs. By part: ` +
      `${parts.map((x) => `${x.what} ${x.value > 0 ? us(x.value) : '≈0'} µs`).join(', ')}. ` +
      `A new key costs more to import than OpenSSL takes to verify with it (${us(verifyUs)} µs), and ` +
      "`openssl speed` times keys already in memory: no route that decodes each requester's key reaches the " +
      `CSR-path ceiling. Importing through JWK, as kmtls does, took ${us(n.verifyImportJwk.us)} µs with the ` +
      `verification; through DER SPKI (\`createPublicKey\`), ${us(n.verifyImportDer.us)} µs.`,
    `- **Node's signature against OpenSSL's.** \`crypto.sign\` took ${us(n.sign.us)} µs against ${us(signUs)} µs in ` +
      `\`openssl speed\` (${ratio(n.sign.us / signUs)}), and \`crypto.verify\` with a prepared key ` +
      `${us(n.verifyPrepared.us)} µs against ${us(verifyUs)} µs (${ratio(n.verifyPrepared.us / verifyUs)}). ` +
      `\`openssl speed\` calls the ECDSA routine directly; Node goes through OpenSSL 3's EVP one-shot API, which ` +
      `fetches the algorithm and builds a context on every call, and through the JavaScript binding.`,
    `- **JavaScript in the CA.** Building a leaf around the signature (\`signPublicKey\` less \`crypto.sign\`) cost ` +
      `${remainder(jsInBuild)} µs per certificate, ${ratio(jsInBuild / n.sign.us)} the signature itself: the DER ` +
      'writers allocate and concatenate a Buffer per element and rebuild the constant extensions every time, plus a ' +
      'random serial, a SHA-1 key identifier and the PEM chain.',
    '- **Noise.** Other jobs share these two CPUs: compare reruns by the ratios within one run, not by absolute rates.',
  ];
}

export function renderPkiSection(p: PkiResult): string[] {
  const o = p.openssl;
  const k = p.kmtls;
  const n = p.node;
  const lib = p.library;
  const out: string[] = [];
  const signUs = 1e6 / o.signPerSecond;
  const verifyUs = 1e6 / o.verifyPerSecond;
  out.push('## Certificate issuance');
  out.push('');
  out.push(
    "How many workload certificates the kmtls CA issues per second, next to the machine's own ECDSA ceiling " +
      'measured in the same run (bench/pki.ts). A burst of pods starting at once waits on this number.',
  );
  out.push('');
  out.push(
    [
      `- **Ceiling**: \`openssl speed -seconds ${p.plan.opensslSeconds} ecdsap256\` (${o.version}), spawned ` +
        `${o.runs.length} times, once per round between the Node measurements: P-256 signatures and verifications ` +
        'per second on one core, key in memory. Issuing from a CSR takes one verification (the CSR, with the ' +
        "requester's key) and one signature, so the CSR-path ceiling is 1 / (1/sign + 1/verify).",
      '- **kmtls `ca.sign(csr)`**: the whole path: parse the PKCS#10 request, import its key, verify its signature, ' +
        'then build the leaf (SPIFFE URI SAN, critical; key usage; extended key usage; SKI/AKI; 24 h) and sign it. ' +
        `Every issuance uses a fresh CSR from a pool of ${int(p.plan.poolSize)} distinct P-256 keys made before any ` +
        'timer starts, and no key is used twice by the same path.',
      '- **kmtls `ca.signPublicKey(spki)`**: build and sign only, no CSR.',
      `- **Node primitives**: \`crypto.sign('sha256', tbs, caKey)\` over a real ${p.tbsBytes}-byte TBSCertificate, ` +
        'as the CA calls it; `crypto.verify` of a pooled CSR with its key imported beforehand, and with the key imported ' +
        'per request from DER SPKI (`createPublicKey`) or through JWK (`importPublicKey`, the route `ca.sign` takes).',
      `- **@peculiar/x509 ${lib.version}** over \`crypto.webcrypto\`, the comparison baseline: the same certificate ` +
        'shape from `X509CertificateGenerator.create`, one certificate awaited at a time, from a CSR ' +
        '(`Pkcs10CertificateRequest` parsed and verified) and from an SPKI. Bounded, as it is slow: ' +
        `${p.plan.library.warmup} warm-up + ${p.plan.library.runs} runs of ${p.plan.library.perRun} per path.`,
      `- kmtls and the Node primitives run in alternation, ${p.plan.runsPerRound} runs per round over ` +
        `${p.plan.rounds} rounds after one untimed run, a full GC before each run; rates are at the median run time, ` +
        'the range at the slowest and fastest runs.',
    ].join('\n'),
  );
  out.push('');
  const csrVs = (r: Rate) => `CSR ceiling ${ratio(o.csrPathPerSecond / r.perSecond)} higher`;
  const signVs = (r: Rate) => `sign ceiling ${ratio(o.signPerSecond / r.perSecond)} higher`;
  const opensslRange = (pick: (s: { signPerSecond: number; verifyPerSecond: number }) => number) =>
    `${int(Math.min(...o.runs.map(pick)))}–${int(Math.max(...o.runs.map(pick)))}`;
  out.push(
    table(
      [
        'path',
        'per second (median)',
        'slowest–fastest run',
        'µs each',
        'runs × batch',
        'against the ceiling',
      ],
      [
        [
          'OpenSSL ceiling: sign',
          int(o.signPerSecond),
          opensslRange((s) => s.signPerSecond),
          us(signUs),
          `${o.runs.length} × ${p.plan.opensslSeconds} s`,
          '—',
        ],
        [
          'OpenSSL ceiling: verify',
          int(o.verifyPerSecond),
          opensslRange((s) => s.verifyPerSecond),
          us(verifyUs),
          `${o.runs.length} × ${p.plan.opensslSeconds} s`,
          '—',
        ],
        [
          'OpenSSL ceiling: CSR path (1 verify + 1 sign)',
          int(o.csrPathPerSecond),
          '',
          us(signUs + verifyUs),
          '',
          '—',
        ],
        [
          '**kmtls `ca.sign(csr)`**',
          `**${int(k.sign.perSecond)}**`,
          range(k.sign),
          us(k.sign.us),
          runs(k.sign),
          csrVs(k.sign),
        ],
        [
          '**kmtls `ca.signAsync(csr)`, 32 in flight (thread pool, both cores)**',
          `**${int(k.signAsync.perSecond)}**`,
          range(k.signAsync),
          us(k.signAsync.us),
          runs(k.signAsync),
          csrVs(k.signAsync),
        ],
        [
          'kmtls `ca.signPublicKey(spki)`',
          int(k.signPublicKey.perSecond),
          range(k.signPublicKey),
          us(k.signPublicKey.us),
          runs(k.signPublicKey),
          signVs(k.signPublicKey),
        ],
        [
          '@peculiar/x509 from a CSR',
          int(lib.fromCsr.perSecond),
          range(lib.fromCsr),
          us(lib.fromCsr.us),
          runs(lib.fromCsr),
          csrVs(lib.fromCsr),
        ],
        [
          '@peculiar/x509 from an SPKI',
          int(lib.fromSpki.perSecond),
          range(lib.fromSpki),
          us(lib.fromSpki.us),
          runs(lib.fromSpki),
          signVs(lib.fromSpki),
        ],
      ],
      [1, 3, 4],
    ),
  );
  out.push('');
  out.push(
    `**kmtls ÷ ceiling: ${ratio(k.sign.perSecond / o.csrPathPerSecond)} from CSRs, ` +
      `${ratio(k.signPublicKey.perSecond / o.signPerSecond)} without. kmtls ÷ @peculiar/x509: ` +
      `${ratio(k.sign.perSecond / lib.fromCsr.perSecond)} from CSRs, ` +
      `${ratio(k.signPublicKey.perSecond / lib.fromSpki.perSecond)} without.**`,
  );
  out.push('');
  out.push("Node's primitives on the same machine, in the same rounds:");
  out.push('');
  out.push(
    table(
      [
        'primitive',
        'per second (median)',
        'slowest–fastest run',
        'µs each',
        'OpenSSL speed µs',
        'runs × batch',
      ],
      [
        [
          "`crypto.sign` (CA key loaded, `dsaEncoding: 'der'`)",
          int(n.sign.perSecond),
          range(n.sign),
          us(n.sign.us),
          us(signUs),
          runs(n.sign),
        ],
        [
          '`crypto.verify`, key imported beforehand',
          int(n.verifyPrepared.perSecond),
          range(n.verifyPrepared),
          us(n.verifyPrepared.us),
          us(verifyUs),
          runs(n.verifyPrepared),
        ],
        [
          '`createPublicKey` (DER SPKI) + `crypto.verify`',
          int(n.verifyImportDer.perSecond),
          range(n.verifyImportDer),
          us(n.verifyImportDer.us),
          us(verifyUs),
          runs(n.verifyImportDer),
        ],
        [
          '`importPublicKey` (JWK, as `ca.sign`) + `crypto.verify`',
          int(n.verifyImportJwk.perSecond),
          range(n.verifyImportJwk),
          us(n.verifyImportJwk.us),
          us(verifyUs),
          runs(n.verifyImportJwk),
        ],
      ],
      [1, 3, 4],
    ),
  );
  out.push('');
  out.push(
    'Where a `ca.sign(csr)` spends its time, from the medians above (`verifyCsr`, its first half, is timed alone ' +
      'in the same rounds; a difference of two medians is approximate):',
  );
  out.push('');
  const share = (value: number) => (value > 0 ? `${((value / k.sign.us) * 100).toFixed(0)}%` : '—');
  const importUs = n.verifyImportJwk.us - n.verifyPrepared.us;
  const verifyJs = k.verifyCsr.us - n.verifyImportJwk.us;
  const buildJs = k.signPublicKey.us - n.sign.us;
  out.push(
    table(
      ['part', 'µs per certificate', 'share of `ca.sign`', 'OpenSSL speed µs'],
      [
        [
          '`verifyCsr`: parse the CSR, import its key, check it, verify its signature',
          us(k.verifyCsr.us),
          share(k.verifyCsr.us),
          us(verifyUs),
        ],
        ["… import the requester's key (`importPublicKey`, JWK)", remainder(importUs), share(importUs), '—'],
        ['… `crypto.verify` with the key', us(n.verifyPrepared.us), share(n.verifyPrepared.us), us(verifyUs)],
        ['… the rest, in JavaScript (DER parsing, checks)', remainder(verifyJs), share(verifyJs), '—'],
        [
          '`signPublicKey`: build the leaf and sign it',
          us(k.signPublicKey.us),
          share(k.signPublicKey.us),
          us(signUs),
        ],
        ['… `crypto.sign`', us(n.sign.us), share(n.sign.us), us(signUs)],
        [
          '… the rest, in JavaScript (DER building, serial, SKI, PEM chain)',
          remainder(buildJs),
          share(buildJs),
          '—',
        ],
        ['**`ca.sign(csr)`, measured**', `**${us(k.sign.us)}**`, '100%', us(signUs + verifyUs)],
        [
          '`verifyCsr` + `signPublicKey`, summed',
          us(k.verifyCsr.us + k.signPublicKey.us),
          share(k.verifyCsr.us + k.signPublicKey.us),
          '',
        ],
      ],
      [1, 2, 3],
    ),
  );
  out.push('');
  const checked = p.validated;
  const total = Object.values(checked).reduce((a, b) => a + b, 0);
  out.push(
    `Checked in the run, untimed: all ${int(total)} certificates issued (kmtls \`sign\` ${int(checked.kmtlsSign)}, ` +
      `\`signPublicKey\` ${int(checked.kmtlsSignPublicKey)}; @peculiar/x509 ${int(checked.libraryFromCsr)} from CSRs, ` +
      `${int(checked.libraryFromSpki)} from SPKIs) parse with node's \`X509Certificate\`, chain to the root ` +
      "(`checkIssued`) and verify with its key, certify the requester's key, and carry the SPIFFE URI SAN " +
      '(critical), key usage digitalSignature + keyEncipherment, extended key usage serverAuth + clientAuth, ' +
      "SKI = SHA-1 of the key, AKI = the root's SKI, not CA, and 24 h + 2 min of validity; the bench stops at the " +
      `first that does not. Sizes (median): kmtls ${p.certificateBytes.kmtlsSign} bytes, @peculiar/x509 ` +
      `${p.certificateBytes.libraryFromCsr} bytes. The PKI part took ${p.seconds.toFixed(0)} s, key pool and checks included.`,
  );
  out.push('');
  out.push('### Reading the issuance figures');
  out.push('');
  out.push(...readPki(p));
  return out;
}
