/** CA material for tests that the CA itself never makes: an intermediate signed by a root. */
import { createPublicKey, generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import type { RootKeyPair } from '../../src/pki/index.js';
import { DAY_MS, readCertificate } from '../../src/pki/index.js';
import { buildCertificate, encodeName, keyIdentifier } from '../../src/pki/x509.js';

/**
 * An intermediate CA (pathLen 0, O=<trust domain>) signed by `root`, as an organisation's offline
 * root would sign the one it plugs into kmtls. Valid from `notBeforeMs` (default: a day before
 * `nowMs`) for a year.
 */
export function signIntermediate(
  root: RootKeyPair,
  opts: { nowMs: number; commonName?: string; notBeforeMs?: number; trustDomain?: string },
): { certificate: Buffer; key: KeyObject } {
  const rootFields = readCertificate(root.certificate);
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  const certificate = buildCertificate(
    {
      serial: randomBytes(8),
      issuerName: rootFields.subjectName,
      subjectName: encodeName({
        organization: opts.trustDomain ?? 'cluster.local',
        commonName: opts.commonName ?? 'plug-in intermediate',
      }),
      notBefore: new Date(opts.notBeforeMs ?? opts.nowMs - DAY_MS),
      notAfter: new Date(opts.nowMs + 365 * DAY_MS),
      subjectPublicKeyInfo: spki,
      isCa: true,
      pathLength: 0,
      uris: [],
      subjectKeyId: keyIdentifier(spki),
      authorityKeyId: rootFields.subjectKeyId,
    },
    root.key,
  );
  return { certificate, key };
}
