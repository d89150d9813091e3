import { X509Certificate } from 'node:crypto';
import { formatDuration } from './clock.js';
import { certificateStatus } from './renewal.js';
import { OID } from './x509.js';
import type { CertificateFields } from './x509-read.js';
import { readCertificate } from './x509-read.js';

/** One certificate as `kmtls ca inspect` reports it. */
export interface CertificateReport {
  readonly index: number;
  readonly role: 'leaf' | 'intermediate' | 'root';
  readonly identities: readonly string[];
  readonly subject: string;
  readonly issuer: string;
  readonly serial: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly lifetime: string;
  /** Negative once expired. */
  readonly timeLeftMs: number;
  readonly timeLeft: string;
  readonly keyUsage: readonly string[];
  readonly extKeyUsage: readonly string[];
  /** Whether the next certificate in the file (or this one, for a self-signed root) signed it; undefined for the last non-root. */
  readonly signedByNext: boolean | undefined;
  readonly warnings: readonly string[];
}

const EKU_NAMES: Readonly<Record<string, string>> = {
  [OID.serverAuth]: 'serverAuth',
  [OID.clientAuth]: 'clientAuth',
};

function warningsFor(c: CertificateFields, role: CertificateReport['role'], nowMs: number): string[] {
  const w: string[] = [];
  // One rule with the renewer: "expiring soon" is less than 20 % of the lifetime left.
  const status = certificateStatus(
    { notBeforeMs: c.notBefore.getTime(), notAfterMs: c.notAfter.getTime() },
    nowMs,
  );
  if (nowMs < c.notBefore.getTime()) w.push(`not yet valid: valid from ${c.notBefore.toISOString()}`);
  else if (status.expired) w.push(`expired ${formatDuration(-status.timeLeftMs)} ago`);
  else if (status.expiringSoon) {
    w.push(
      `expires within 20% of its lifetime (${formatDuration(status.timeLeftMs)} of ${formatDuration(status.lifetimeMs)} left)`,
    );
  }
  if (role === 'leaf') {
    if (!c.keyUsage?.includes('digitalSignature'))
      w.push('key usage lacks digitalSignature: TLS handshakes will fail');
    if (c.keyUsage?.includes('keyCertSign')) w.push('a leaf with keyCertSign');
    const eku = c.extKeyUsage ?? [];
    if (c.extKeyUsage !== undefined && (!eku.includes(OID.serverAuth) || !eku.includes(OID.clientAuth))) {
      w.push('extended key usage lacks serverAuth or clientAuth: a mesh certificate needs both');
    }
    if (!c.uris.some((u) => u.startsWith('spiffe://')))
      w.push('no SPIFFE ID in the subject alternative names');
    if (c.subject === '' && c.uris.length > 0 && !c.sanCritical)
      w.push('empty subject with a non-critical SAN (RFC 5280 wants it critical)');
  } else {
    if (!c.isCa) w.push('not a CA (basicConstraints CA:FALSE) but placed above a certificate in the chain');
    if (c.keyUsage !== undefined && !c.keyUsage.includes('keyCertSign'))
      w.push('key usage lacks keyCertSign: it cannot sign certificates');
  }
  return w;
}

/**
 * Reports a chain (leaf first) or a bundle of roots: identity, issuer, serial, validity, time
 * left, and warnings. `nowMs` is injected; nothing here reads the clock.
 */
export function inspectCertificates(ders: readonly Buffer[], nowMs: number): CertificateReport[] {
  const certs = ders.map((d) => readCertificate(d));
  const x509 = ders.map((d) => new X509Certificate(d));
  return certs.map((c, i) => {
    const selfSigned = c.subjectName.equals(c.issuerName);
    const role: CertificateReport['role'] =
      selfSigned && c.isCa ? 'root' : i === 0 && !c.isCa ? 'leaf' : 'intermediate';
    const signer = selfSigned ? x509[i] : x509[i + 1];
    // A real signature check, not a name comparison: two roots may share a subject during rotation.
    const signedByNext = signer ? x509[i]!.verify(signer.publicKey) : undefined;
    const left = c.notAfter.getTime() - nowMs;
    const warnings = warningsFor(c, role, nowMs);
    if (signedByNext === false) {
      warnings.push(
        selfSigned
          ? 'self-signed, but its signature does not verify'
          : `not signed by the next certificate in the file (issuer ${c.issuer})`,
      );
    }
    return {
      index: i,
      role,
      identities: c.uris,
      subject: c.subject,
      issuer: c.issuer,
      serial: c.serialHex,
      notBefore: c.notBefore.toISOString(),
      notAfter: c.notAfter.toISOString(),
      lifetime: formatDuration(c.notAfter.getTime() - c.notBefore.getTime()),
      timeLeftMs: left,
      // NotAfter itself is within the validity period (RFC 5280 4.1.2.5), as the renewer and verifier count it.
      timeLeft: left >= 0 ? formatDuration(left) : `expired ${formatDuration(-left)} ago`,
      keyUsage: c.keyUsage ?? [],
      extKeyUsage: (c.extKeyUsage ?? []).map((o) => EKU_NAMES[o] ?? o),
      signedByNext,
      warnings,
    };
  });
}
