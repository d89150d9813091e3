/**
 * When a holder of a certificate (a sidecar, the controller for the Secrets it keeps fresh) renews it,
 * and what it does when renewal fails.
 *
 * The schedule is the Istio agent's (`security/pkg/nodeagent/cache/secretcache.go:rotateTime`, defaults
 * from `pilot/cmd/pilot-agent/options/options.go`): renew when half the lifetime is left, give or take
 * 1 % of the lifetime so that a fleet issued at the same moment does not renew at the same moment.
 * Failed renewals are retried with capped exponential backoff while the current certificate keeps
 * serving. The functions here are pure (time and randomness come in as values); `CertificateRenewer`
 * drives them on an injected clock and timer and starts nothing until `start` is called.
 *
 * Not covered: how a certificate is fetched (CSR, signing, transport), how it is installed into a TLS
 * context or a Secret, and trust-bundle (root) rotation.
 */
import { KmtlsError } from '../errors.js';
import type { Clock } from './clock.js';
import { formatDuration } from './clock.js';

/** Istio's `SECRET_GRACE_PERIOD_RATIO`: renew when this fraction of the lifetime is left. */
export const SECRET_GRACE_PERIOD_RATIO = 0.5;
/** Istio's `SECRET_GRACE_PERIOD_RATIO_JITTER`: the ratio moves by up to this much either way. */
export const SECRET_GRACE_PERIOD_RATIO_JITTER = 0.01;
/** Less than this fraction of the lifetime left is "expiring soon" (Istio's root grace-period percentile, 20). */
export const EXPIRING_SOON_FRACTION = 0.2;
export const DEFAULT_RETRY_INITIAL_MS = 1000;
export const DEFAULT_RETRY_MAX_MS = 5 * 60_000;
/** The longest delay Node's `setTimeout` honours; a longer one fires after 1 ms instead. */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/** A uniform draw from [0, 1), injected so tests choose the jitter. A value outside [0, 1] is clamped into it. */
export type Random = () => number;

/** The validity period of a certificate, in milliseconds since the epoch. */
export interface Validity {
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
}

/** Istio's agent settings, camel-cased. Both are fractions of the lifetime, in [0, 1]. */
export interface GracePeriodOptions {
  readonly gracePeriodRatio?: number | undefined;
  readonly gracePeriodRatioJitter?: number | undefined;
}

export interface RetryOptions {
  readonly initialMs?: number | undefined;
  readonly maxMs?: number | undefined;
}

/**
 * How long to wait before renewing, Istio's `rotateTime`:
 *
 *     jitter = (2·rand − 1) · gracePeriodRatioJitter          rand in [0, 1), so jitter in [−0.01, +0.01)
 *     ratio' = clamp(gracePeriodRatio + jitter, 0, 1)         0.5 ± 0.01 with the defaults
 *     delay  = max(0, notAfter − ratio'·(notAfter − notBefore) − now)
 *
 * i.e. renew at 50 % of the lifetime ±1 % of the lifetime: a 24h certificate renews after 12h ±~14m.
 * Istio draws a magnitude and a sign separately; one draw mapped to [−1, 1) gives the same uniform
 * distribution. `notBeforeMs` is the start of the lifetime: Istio uses the moment the agent received
 * the certificate, not the certificate's NotBefore (see `CertificateRenewer`). A `notAfterMs` before
 * `notBeforeMs` counts as no lifetime at all: renew at `notAfterMs`. The result is whole milliseconds.
 */
export function renewalDelayMs(
  input: Validity & GracePeriodOptions & { readonly nowMs: number; readonly random: Random },
): number {
  const { notBeforeMs, notAfterMs, nowMs } = input;
  if (![notBeforeMs, notAfterMs, nowMs].every(Number.isFinite)) {
    throw new Error(
      `BUG: renewalDelayMs needs finite times (notBeforeMs=${notBeforeMs}, notAfterMs=${notAfterMs}, nowMs=${nowMs})`,
    );
  }
  const { ratio, jitter } = resolveGracePeriod(input);
  const spread = 2 * unitDraw(input.random) - 1;
  const gracePeriodRatio = clamp(ratio + spread * jitter, 0, 1);
  const lifetimeMs = Math.max(0, notAfterMs - notBeforeMs);
  const renewAtMs = notAfterMs - Math.round(gracePeriodRatio * lifetimeMs);
  return Math.max(0, renewAtMs - nowMs);
}

/**
 * How long to wait before retry number `attempt` (0 for the first retry after a failure): capped
 * exponential backoff with *equal jitter*,
 *
 *     step  = min(maxMs, initialMs · 2^attempt)
 *     delay = step/2 + rand · step/2                          in [step/2, step], never above maxMs
 *
 * Equal rather than full jitter (rand · step) because full jitter can draw a delay near zero at any
 * attempt, which turns a fleet of sidecars into a tight loop against a CA that is already failing;
 * equal jitter always waits at least half the step and still spreads the fleet over the other half.
 * Attempt 0 waits 0.5–1 s with the defaults; the wait grows to 2.5–5 min and stays there.
 */
export function retryDelayMs(attempt: number, options: RetryOptions & { readonly random: Random }): number {
  if (!Number.isInteger(attempt) || attempt < 0) {
    throw new Error(`BUG: retryDelayMs needs a non-negative integer attempt, got ${attempt}`);
  }
  const { initialMs, maxMs } = resolveRetry(options);
  // 2 ** attempt reaches Infinity for large attempts; min() keeps the step at maxMs.
  const stepMs = Math.min(maxMs, initialMs * 2 ** attempt);
  return Math.min(maxMs, Math.round(stepMs / 2 + (unitDraw(options.random) * stepMs) / 2));
}

/** Milliseconds until `notAfterMs`; negative once the certificate has expired. */
export function timeLeft(notAfterMs: number, nowMs: number): number {
  return notAfterMs - nowMs;
}

/** Where a certificate stands in its lifetime at one moment. */
export interface CertificateStatus {
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  readonly lifetimeMs: number;
  /** Negative once expired. */
  readonly timeLeftMs: number;
  /** `timeLeftMs / lifetimeMs`, clamped to [0, 1]: 1 before NotBefore, 0 once expired. */
  readonly fractionLeft: number;
  /** Past NotAfter. X.509 validity is inclusive, so at NotAfter itself the certificate is still valid. */
  readonly expired: boolean;
  /** Less than 20 % of the lifetime left, expired included: the rule `kmtls ca inspect` warns on. */
  readonly expiringSoon: boolean;
}

export function certificateStatus(validity: Validity, nowMs: number): CertificateStatus {
  const { notBeforeMs, notAfterMs } = validity;
  const lifetimeMs = notAfterMs - notBeforeMs;
  const timeLeftMs = timeLeft(notAfterMs, nowMs);
  // A certificate with no lifetime has nothing left of it, whatever the clock says.
  const fractionLeft = lifetimeMs > 0 ? clamp(timeLeftMs / lifetimeMs, 0, 1) : 0;
  return {
    notBeforeMs,
    notAfterMs,
    lifetimeMs,
    timeLeftMs,
    fractionLeft,
    expired: timeLeftMs < 0,
    expiringSoon: fractionLeft < EXPIRING_SOON_FRACTION,
  };
}

/** An opaque handle from `Timer.setTimeout`; Node's is a `Timeout` object. */
export type TimerHandle = unknown;

/**
 * The timer port. Node's globals fit:
 * `{ setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) }`.
 */
export interface Timer {
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

/** `idle` until `start`, `stopped` after `stop`; a renewer is started at most once. */
export type RenewerState = 'idle' | 'running' | 'stopped';

export interface Renewal<C> {
  readonly certificate: C;
  /** The certificate it replaces; undefined for the first one. */
  readonly previous: C | undefined;
  readonly nextAttemptAtMs: number;
}

/** One failed attempt. The current certificate (if any) is kept and keeps serving. */
export interface RenewalFailure {
  /** `KMTLS_PKI_RENEWAL_FAILED`; `cause` is what `fetch` threw, if it threw. */
  readonly error: KmtlsError;
  /** 1 for the first failure since the last success (or since start). */
  readonly attempt: number;
  readonly retryInMs: number;
  readonly nextAttemptAtMs: number;
  /** The certificate still in use, or undefined when there has never been one. */
  readonly certificate: CertificateStatus | undefined;
}

export interface RenewerStatus {
  readonly state: RenewerState;
  /** The current certificate's expiry and time left; undefined before the first certificate. */
  readonly certificate: CertificateStatus | undefined;
  /** When the next fetch is due; undefined while a fetch is in flight, and when not running. */
  readonly nextAttemptAtMs: number | undefined;
  readonly isFetching: boolean;
  readonly consecutiveFailures: number;
  readonly lastError: KmtlsError | undefined;
}

export interface CertificateRenewerOptions<C extends Validity> extends GracePeriodOptions {
  readonly clock: Clock;
  readonly timer: Timer;
  readonly random: Random;
  /**
   * Gets a new certificate. A rejection (or a certificate that is already expired or has no valid
   * lifetime) is a failed attempt. Return the certificate ready to install, with whatever the caller
   * needs alongside it (PEM, key): the renewer only reads `notBeforeMs` and `notAfterMs`.
   */
  readonly fetch: () => Promise<C>;
  /** Called after the certificate is current and the next renewal is scheduled. Must not throw. */
  readonly onRenewed?: ((renewal: Renewal<C>) => void) | undefined;
  /** Called after the retry is scheduled. Must not throw. */
  readonly onError?: ((failure: RenewalFailure) => void) | undefined;
  readonly retry?: RetryOptions | undefined;
}

type FetchOutcome<C> =
  | { readonly ok: true; readonly certificate: C }
  | { readonly ok: false; readonly reason: string; readonly cause: unknown };

interface PendingAttempt {
  handle: TimerHandle;
  readonly dueAtMs: number;
}

/**
 * Keeps one certificate fresh: fetches when the current one reaches its renewal time, retries failures
 * with backoff, and never has two fetches in flight. A certificate fetched here has its lifetime counted
 * from the moment it arrived (Istio's `CreatedTime`), so a CA whose clock runs behind cannot make it
 * renew in a loop; a certificate handed to `start` has it counted from its NotBefore.
 *
 * Callbacks (`onRenewed`, `onError`) are not guarded: a throw from one rejects the internal attempt
 * and surfaces as an unhandled rejection, after the schedule has already been set.
 */
export class CertificateRenewer<C extends Validity> {
  readonly #clock: Clock;
  readonly #timer: Timer;
  readonly #random: Random;
  readonly #fetch: () => Promise<C>;
  readonly #onRenewed: ((renewal: Renewal<C>) => void) | undefined;
  readonly #onError: ((failure: RenewalFailure) => void) | undefined;
  readonly #retry: { readonly initialMs: number; readonly maxMs: number };
  readonly #gracePeriod: { readonly ratio: number; readonly jitter: number };

  #state: RenewerState = 'idle';
  #current: C | undefined;
  #consecutiveFailures = 0;
  #lastError: KmtlsError | undefined;
  #pending: PendingAttempt | undefined;
  #isFetching = false;
  #lastAttempt: Promise<void> = Promise.resolve();

  constructor(options: CertificateRenewerOptions<C>) {
    this.#clock = options.clock;
    this.#timer = options.timer;
    this.#random = options.random;
    this.#fetch = options.fetch;
    this.#onRenewed = options.onRenewed;
    this.#onError = options.onError;
    this.#retry = resolveRetry(options.retry ?? {});
    const { ratio, jitter } = resolveGracePeriod(options);
    // With ratio' = 1 a fresh certificate is due at once, and the renewer would fetch without pause.
    if (ratio + jitter >= 1) {
      throw invalidOption(
        'gracePeriodRatio + gracePeriodRatioJitter',
        ratio + jitter,
        'must stay below 1, or every certificate is due for renewal the moment it arrives',
      );
    }
    this.#gracePeriod = { ratio, jitter };
  }

  /**
   * Begins. With no certificate, or one already at or past its renewal time (expired included),
   * fetches at once; otherwise schedules the renewal of `initial`.
   */
  start(initial?: C): void {
    if (this.#state !== 'idle') throw new Error(`BUG: CertificateRenewer.start called while ${this.#state}`);
    if (initial !== undefined && !hasFiniteValidity(initial)) {
      throw new Error(`BUG: CertificateRenewer.start given a certificate without a finite validity period`);
    }
    this.#state = 'running';
    this.#current = initial;
    if (initial === undefined) {
      this.#fetchNow();
      return;
    }
    const nowMs = this.#clock.now();
    const delayMs = renewalDelayMs({
      ...initial,
      nowMs,
      random: this.#random,
      ...this.#gracePeriodOptions(),
    });
    if (delayMs === 0) this.#fetchNow();
    else this.#schedule(nowMs + delayMs);
  }

  /**
   * Fetches now instead of at the scheduled time (a new root was published, an operator asked).
   * Does nothing while a fetch is in flight or after `stop`.
   */
  renewNow(): void {
    if (this.#state === 'idle') throw new Error('BUG: CertificateRenewer.renewNow called before start');
    if (this.#state === 'stopped') return;
    this.#fetchNow();
  }

  /** Cancels the scheduled attempt. A fetch in flight is left to finish, and its result is dropped. */
  stop(): void {
    this.#state = 'stopped';
    this.#cancel();
  }

  /** The certificate in use: the last one fetched, or the one given to `start`. */
  current(): C | undefined {
    return this.#current;
  }

  status(): RenewerStatus {
    const nowMs = this.#clock.now();
    return {
      state: this.#state,
      certificate: this.#current === undefined ? undefined : certificateStatus(this.#current, nowMs),
      nextAttemptAtMs: this.#pending?.dueAtMs,
      isFetching: this.#isFetching,
      consecutiveFailures: this.#consecutiveFailures,
      lastError: this.#lastError,
    };
  }

  /** Resolves once the latest attempt has finished (fetch settled, next attempt scheduled, callbacks run). */
  settled(): Promise<void> {
    return this.#lastAttempt;
  }

  #gracePeriodOptions(): GracePeriodOptions {
    return { gracePeriodRatio: this.#gracePeriod.ratio, gracePeriodRatioJitter: this.#gracePeriod.jitter };
  }

  #fetchNow(): void {
    // The only guard needed against overlap: timers are armed only once a fetch has finished.
    if (this.#isFetching) return;
    this.#cancel();
    this.#lastAttempt = this.#attempt();
  }

  #schedule(dueAtMs: number): void {
    this.#cancel();
    const pending: PendingAttempt = { handle: undefined, dueAtMs };
    // Node fires a delay above 2^31−1 ms after 1 ms; a 90-day certificate renews after 45 days, so long
    // waits are taken in several legs.
    const delayMs = clamp(dueAtMs - this.#clock.now(), 0, MAX_TIMER_DELAY_MS);
    pending.handle = this.#timer.setTimeout(() => this.#onTimer(pending), delayMs);
    this.#pending = pending;
  }

  #onTimer(pending: PendingAttempt): void {
    if (this.#pending !== pending || this.#state !== 'running') return;
    this.#pending = undefined;
    if (this.#clock.now() < pending.dueAtMs) {
      this.#schedule(pending.dueAtMs);
      return;
    }
    this.#fetchNow();
  }

  #cancel(): void {
    if (this.#pending === undefined) return;
    this.#timer.clearTimeout(this.#pending.handle);
    this.#pending = undefined;
  }

  async #attempt(): Promise<void> {
    this.#isFetching = true;
    let outcome: FetchOutcome<C>;
    try {
      outcome = this.#check(await this.#fetch());
    } catch (err) {
      outcome = { ok: false, reason: err instanceof Error ? err.message : String(err), cause: err };
    } finally {
      this.#isFetching = false;
    }
    // stop() was called while the fetch was in flight: nothing is installed, scheduled or reported.
    if (this.#state !== 'running') return;
    if (outcome.ok) this.#succeed(outcome.certificate);
    else this.#fail(outcome.reason, outcome.cause);
  }

  #check(certificate: C): FetchOutcome<C> {
    const nowMs = this.#clock.now();
    if (!hasFiniteValidity(certificate)) {
      const { notBeforeMs, notAfterMs } = certificate;
      return {
        ok: false,
        reason: `the fetched certificate has no valid validity period (notBeforeMs=${notBeforeMs}, notAfterMs=${notAfterMs})`,
        cause: undefined,
      };
    }
    if (certificate.notAfterMs <= certificate.notBeforeMs) {
      return {
        ok: false,
        reason: `the fetched certificate's notAfter ${formatInstant(certificate.notAfterMs)} is not after its notBefore ${formatInstant(certificate.notBeforeMs)}`,
        cause: undefined,
      };
    }
    if (certificate.notAfterMs <= nowMs) {
      return {
        ok: false,
        reason: `the fetched certificate expired at ${formatInstant(certificate.notAfterMs)}`,
        cause: undefined,
      };
    }
    return { ok: true, certificate };
  }

  #succeed(certificate: C): void {
    const nowMs = this.#clock.now();
    const previous = this.#current;
    this.#current = certificate;
    this.#consecutiveFailures = 0;
    this.#lastError = undefined;
    // Lifetime counted from receipt, as Istio's agent does (CreatedTime = time.Now()).
    const delayMs = renewalDelayMs({
      notBeforeMs: nowMs,
      notAfterMs: certificate.notAfterMs,
      nowMs,
      random: this.#random,
      ...this.#gracePeriodOptions(),
    });
    const nextAttemptAtMs = nowMs + delayMs;
    this.#schedule(nextAttemptAtMs);
    this.#onRenewed?.({ certificate, previous, nextAttemptAtMs });
  }

  #fail(reason: string, cause: unknown): void {
    const nowMs = this.#clock.now();
    this.#consecutiveFailures += 1;
    const attempt = this.#consecutiveFailures;
    const retryInMs = retryDelayMs(attempt - 1, { ...this.#retry, random: this.#random });
    const nextAttemptAtMs = nowMs + retryInMs;
    const certificate = this.#current === undefined ? undefined : certificateStatus(this.#current, nowMs);
    const error = new KmtlsError(
      'KMTLS_PKI_RENEWAL_FAILED',
      `certificate renewal failed: attempt ${attempt} (${reason}); ${describeCurrent(certificate)}; next attempt in ${formatDelay(retryInMs)}`,
      cause === undefined ? undefined : { cause },
    );
    this.#lastError = error;
    this.#schedule(nextAttemptAtMs);
    this.#onError?.({ error, attempt, retryInMs, nextAttemptAtMs, certificate });
  }
}

function describeCurrent(certificate: CertificateStatus | undefined): string {
  if (certificate === undefined) return 'there is no certificate yet';
  if (certificate.expired) {
    return `the current certificate EXPIRED ${formatDelay(-certificate.timeLeftMs)} ago (at ${formatInstant(certificate.notAfterMs)})`;
  }
  return `keeping the current certificate, which expires in ${formatDelay(certificate.timeLeftMs)}`;
}

function formatDelay(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)}ms` : formatDuration(ms);
}

// Date throws on times beyond ±8.64e15 ms; such a value is shown as the number it is.
function formatInstant(ms: number): string {
  return Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : `${ms}ms`;
}

function hasFiniteValidity(validity: Validity): boolean {
  return Number.isFinite(validity.notBeforeMs) && Number.isFinite(validity.notAfterMs);
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}

function unitDraw(random: Random): number {
  const value = random();
  if (Number.isNaN(value)) throw new Error('BUG: the injected random source returned NaN');
  return clamp(value, 0, 1);
}

function invalidOption(name: string, value: unknown, reason: string): KmtlsError {
  return new KmtlsError(
    'KMTLS_PKI_RENEWAL_OPTIONS_INVALID',
    `invalid renewal option: ${name}=${String(value)} (${reason})`,
  );
}

function resolveGracePeriod(options: GracePeriodOptions): { ratio: number; jitter: number } {
  const ratio = options.gracePeriodRatio ?? SECRET_GRACE_PERIOD_RATIO;
  const jitter = options.gracePeriodRatioJitter ?? SECRET_GRACE_PERIOD_RATIO_JITTER;
  for (const [name, value] of [
    ['gracePeriodRatio', ratio],
    ['gracePeriodRatioJitter', jitter],
  ] as const) {
    if (!(value >= 0 && value <= 1))
      throw invalidOption(name, value, 'must be a fraction of the lifetime, in [0, 1]');
  }
  return { ratio, jitter };
}

function resolveRetry(options: RetryOptions): { initialMs: number; maxMs: number } {
  const initialMs = options.initialMs ?? DEFAULT_RETRY_INITIAL_MS;
  const maxMs = options.maxMs ?? DEFAULT_RETRY_MAX_MS;
  if (!(Number.isFinite(initialMs) && initialMs > 0)) {
    throw invalidOption('retry.initialMs', initialMs, 'must be a positive number of milliseconds');
  }
  if (!(Number.isFinite(maxMs) && maxMs >= initialMs)) {
    throw invalidOption(
      'retry.maxMs',
      maxMs,
      `must be a finite number of milliseconds, at least retry.initialMs (${initialMs})`,
    );
  }
  return { initialMs, maxMs };
}
