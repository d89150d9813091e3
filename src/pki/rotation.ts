import type { KeyObject } from 'node:crypto';
import { KmtlsError } from '../errors.js';
import { CLOCK_SKEW_GRACE_MS, createRoot, DEFAULT_LEAF_TTL_MS } from './ca.js';
import type { RandomBytes } from './clock.js';
import { formatDuration } from './clock.js';
import { readCertificate } from './x509-read.js';

/** A root certificate with its key. */
export interface RootKeyPair {
  readonly certificate: Buffer;
  readonly key: KeyObject;
}

/**
 * Root rotation as a state machine the operator drives, one persisted step at a time:
 *
 *   stable ──begin──▶ distributing ──switch──▶ signing-with-new ──retire──▶ stable
 *                        │  ▲                                     (only after every leaf the old
 *                        └abort                                    root signed has expired)
 *
 * - distributing: the new root is in every trust bundle; the old root still signs. Workloads pick
 *   up the two-root bundle on their next config or certificate.
 * - signing-with-new: the new root signs; the old root stays trusted, because leaves it signed are
 *   still in use until they expire.
 * - retire: the old root leaves the bundle. Refused before `retireAfter` unless forced.
 */
export type RotationState =
  | { readonly phase: 'stable' }
  | { readonly phase: 'distributing'; readonly next: RootKeyPair; readonly sinceMs: number }
  | {
      readonly phase: 'signing-with-new';
      readonly previous: Buffer;
      readonly sinceMs: number;
      readonly retireAfterMs: number;
    };

/** The self-signed CA's persistent state: what signs, what is trusted, and where a rotation stands. */
export interface SelfSignedCaState {
  readonly trustDomain: string;
  readonly root: RootKeyPair;
  /** Every root workloads must trust, the signing root first. */
  readonly trustBundle: readonly Buffer[];
  readonly rotation: RotationState;
  /** The longest lifetime of any leaf issued so far: how long a retired root must stay trusted. */
  readonly longestLeafTtlMs: number;
}

function wrongStep(action: string, state: SelfSignedCaState, expected: RotationState['phase']): never {
  throw new KmtlsError(
    'KMTLS_PKI_ROTATION_STEP',
    `cannot ${action}: the rotation is in phase ${state.rotation.phase} (${action} needs ${expected})`,
  );
}

export function initialCaState(trustDomain: string, root: RootKeyPair): SelfSignedCaState {
  return {
    trustDomain,
    root,
    trustBundle: [root.certificate],
    rotation: { phase: 'stable' },
    longestLeafTtlMs: DEFAULT_LEAF_TTL_MS,
  };
}

/** Step 1: a new root joins every trust bundle; the current root keeps signing. */
export function beginRotation(
  state: SelfSignedCaState,
  opts: { nowMs: number; random: RandomBytes; rootTtlMs?: number; key?: KeyObject },
): SelfSignedCaState {
  if (state.rotation.phase !== 'stable') wrongStep('begin a rotation', state, 'stable');
  const next = createRoot({
    trustDomain: state.trustDomain,
    now: opts.nowMs,
    random: opts.random,
    ...(opts.rootTtlMs !== undefined ? { ttlMs: opts.rootTtlMs } : {}),
    ...(opts.key !== undefined ? { key: opts.key } : {}),
  });
  return {
    ...state,
    trustBundle: [state.root.certificate, next.certificate],
    rotation: { phase: 'distributing', next, sinceMs: opts.nowMs },
  };
}

/** Step 2: the new root signs. The old root stays trusted until every leaf it signed has expired. */
export function switchSigner(state: SelfSignedCaState, opts: { nowMs: number }): SelfSignedCaState {
  const r = state.rotation;
  if (r.phase !== 'distributing') return wrongStep('switch the signer', state, 'distributing');
  return {
    ...state,
    root: r.next,
    trustBundle: [r.next.certificate, state.root.certificate],
    rotation: {
      phase: 'signing-with-new',
      previous: state.root.certificate,
      sinceMs: opts.nowMs,
      // Leaves are backdated by the skew grace, so the last one the old root signed ends by this.
      retireAfterMs: opts.nowMs + state.longestLeafTtlMs + CLOCK_SKEW_GRACE_MS,
    },
  };
}

/** Step 3: the old root leaves the bundle, once no leaf it signed can still be valid. */
export function retireOldRoot(
  state: SelfSignedCaState,
  opts: { nowMs: number; force?: boolean },
): SelfSignedCaState {
  const r = state.rotation;
  if (r.phase !== 'signing-with-new') return wrongStep('retire the old root', state, 'signing-with-new');
  if (opts.nowMs < r.retireAfterMs && !opts.force) {
    throw new KmtlsError(
      'KMTLS_PKI_ROTATION_STEP',
      `cannot retire the old root yet: leaves it signed may be valid until ${new Date(r.retireAfterMs).toISOString()} ` +
        `(${formatDuration(r.retireAfterMs - opts.nowMs)} from now); retiring earlier breaks them (--force to do it anyway)`,
    );
  }
  return { ...state, trustBundle: [state.root.certificate], rotation: { phase: 'stable' } };
}

/** Back out of step 1: the new root leaves the bundle; nothing was signed with it. */
export function abortRotation(state: SelfSignedCaState): SelfSignedCaState {
  if (state.rotation.phase !== 'distributing') wrongStep('abort the rotation', state, 'distributing');
  return { ...state, trustBundle: [state.root.certificate], rotation: { phase: 'stable' } };
}

/** Records an issued lifetime, so a later retirement waits long enough. Returns the same state when nothing changes. */
export function recordLeafTtl(state: SelfSignedCaState, ttlMs: number): SelfSignedCaState {
  return ttlMs > state.longestLeafTtlMs ? { ...state, longestLeafTtlMs: ttlMs } : state;
}

/** What an operator reads in `kmtls ca rotate status`: the phase, the roots, and the next step. */
export interface RotationStatus {
  readonly phase: RotationState['phase'];
  readonly signingRoot: { readonly serial: string; readonly subject: string; readonly notAfter: string };
  readonly trustBundle: readonly {
    readonly serial: string;
    readonly subject: string;
    readonly notAfter: string;
  }[];
  readonly next: string;
  readonly retireAfter: string | undefined;
}

export function rotationStatus(state: SelfSignedCaState, nowMs: number): RotationStatus {
  const describe = (der: Buffer) => {
    const c = readCertificate(der);
    return { serial: c.serialHex, subject: c.subject, notAfter: c.notAfter.toISOString() };
  };
  const r = state.rotation;
  let next: string;
  switch (r.phase) {
    case 'stable':
      next = 'kmtls ca rotate begin: add a new root to every trust bundle';
      break;
    case 'distributing':
      next = 'once every workload has the new bundle: kmtls ca rotate switch (or abort)';
      break;
    case 'signing-with-new':
      next =
        nowMs >= r.retireAfterMs
          ? 'kmtls ca rotate retire: every leaf of the old root has expired'
          : `kmtls ca rotate retire, after ${new Date(r.retireAfterMs).toISOString()} (${formatDuration(r.retireAfterMs - nowMs)} from now)`;
      break;
    default: {
      const never: never = r;
      throw new Error(`BUG: unknown rotation phase ${JSON.stringify(never)}`);
    }
  }
  return {
    phase: r.phase,
    signingRoot: describe(state.root.certificate),
    trustBundle: state.trustBundle.map(describe),
    next,
    retireAfter: r.phase === 'signing-with-new' ? new Date(r.retireAfterMs).toISOString() : undefined,
  };
}
