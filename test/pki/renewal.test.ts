import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KmtlsError } from '../../src/errors.js';
import type { Clock } from '../../src/pki/clock.js';
import { DAY_MS, HOUR_MS } from '../../src/pki/clock.js';
import type {
  CertificateRenewerOptions,
  Renewal,
  RenewalFailure,
  Timer,
  TimerHandle,
  Validity,
} from '../../src/pki/renewal.js';
import {
  CertificateRenewer,
  certificateStatus,
  MAX_TIMER_DELAY_MS,
  renewalDelayMs,
  retryDelayMs,
  timeLeft,
} from '../../src/pki/renewal.js';

const T0 = Date.UTC(2025, 0, 1);
/** The largest double below 1: what `Math.random` can return at most. */
const ALMOST_ONE = 1 - 2 ** -53;
const constant = (value: number) => () => value;

// ---------------------------------------------------------------------------------------------------
// Test doubles: a clock and timer that only move when the test moves them, and a scripted CA.

/**
 * A manual scheduler: time stands still until `advanceTo`, which fires the callbacks that fall due in
 * due order (ties in arming order), moving the clock to each one's due time, and after each one waits
 * for `settle` so that a fetch the callback started has finished before the next callback fires.
 */
class ManualScheduler implements Clock, Timer {
  #nowMs: number;
  #nextId = 1;
  readonly #tasks = new Map<number, { readonly dueAtMs: number; readonly fn: () => void }>();
  /** Every delay the code under test asked for, in order. */
  readonly armedDelaysMs: number[] = [];
  settle: () => Promise<void> = async () => {};

  constructor(startMs: number) {
    this.#nowMs = startMs;
  }

  now(): number {
    return this.#nowMs;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    // Node would fire a longer delay after 1 ms: the code under test must never ask for one.
    assert.ok(Number.isFinite(ms) && ms >= 0 && ms <= MAX_TIMER_DELAY_MS, `timer delay out of range: ${ms}`);
    const id = this.#nextId++;
    this.armedDelaysMs.push(ms);
    this.#tasks.set(id, { dueAtMs: this.#nowMs + ms, fn });
    return id;
  }

  clearTimeout(handle: TimerHandle): void {
    this.#tasks.delete(handle as number);
  }

  get pendingCount(): number {
    return this.#tasks.size;
  }

  async advanceTo(targetMs: number): Promise<void> {
    assert.ok(targetMs >= this.#nowMs, 'time only moves forward');
    for (;;) {
      let next: [number, { readonly dueAtMs: number; readonly fn: () => void }] | undefined;
      for (const entry of this.#tasks) {
        // Map iteration is in insertion order, so `<` keeps the earliest-armed of equal due times.
        if (entry[1].dueAtMs <= targetMs && (next === undefined || entry[1].dueAtMs < next[1].dueAtMs))
          next = entry;
      }
      if (next === undefined) break;
      this.#tasks.delete(next[0]);
      this.#nowMs = next[1].dueAtMs;
      next[1].fn();
      await this.settle();
    }
    this.#nowMs = targetMs;
  }

  advance(ms: number): Promise<void> {
    return this.advanceTo(this.#nowMs + ms);
  }
}

interface TestCert extends Validity {
  readonly serial: number;
}

class Deferred<T> {
  resolve!: (value: T) => void;
  reject!: (reason: unknown) => void;
  readonly promise = new Promise<T>((resolve, reject) => {
    this.resolve = resolve;
    this.reject = reject;
  });
}

/** One scripted answer of the CA: issue a certificate, fail, hand over a given certificate, or wait for the test. */
type Answer = 'issue' | 'fail' | TestCert | Deferred<TestCert>;

const CA_DOWN = 'connect ECONNREFUSED 127.0.0.1:15012';

/** Answers fetches from a script; once the script runs out it issues. Counts fetches and overlap. */
class ScriptedCa {
  readonly #clock: Clock;
  readonly #ttlMs: number;
  readonly #script: Answer[];
  readonly fetchTimesMs: number[] = [];
  #serial = 0;
  #inFlight = 0;
  maxInFlight = 0;

  constructor(clock: Clock, script: Answer[] = [], ttlMs = DAY_MS) {
    this.#clock = clock;
    this.#script = script;
    this.#ttlMs = ttlMs;
  }

  issue(): TestCert {
    const nowMs = this.#clock.now();
    this.#serial += 1;
    // Backdated like the kmtls CA's leaves (CLOCK_SKEW_GRACE_MS).
    return { serial: this.#serial, notBeforeMs: nowMs - 2 * 60_000, notAfterMs: nowMs + this.#ttlMs };
  }

  readonly fetch = async (): Promise<TestCert> => {
    this.fetchTimesMs.push(this.#clock.now());
    this.#inFlight += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.#inFlight);
    try {
      const answer = this.#script.shift() ?? 'issue';
      if (answer === 'issue') return this.issue();
      if (answer === 'fail') throw new Error(CA_DOWN);
      if (answer instanceof Deferred) return await answer.promise;
      return answer;
    } finally {
      this.#inFlight -= 1;
    }
  };
}

interface Harness {
  readonly sched: ManualScheduler;
  readonly ca: ScriptedCa;
  readonly renewer: CertificateRenewer<TestCert>;
  readonly renewals: Renewal<TestCert>[];
  readonly failures: RenewalFailure[];
}

function harness(
  script: Answer[] = [],
  options: Partial<CertificateRenewerOptions<TestCert>> & { ttlMs?: number } = {},
): Harness {
  const sched = new ManualScheduler(T0);
  const ca = new ScriptedCa(sched, script, options.ttlMs);
  const renewals: Renewal<TestCert>[] = [];
  const failures: RenewalFailure[] = [];
  const renewer = new CertificateRenewer<TestCert>({
    clock: sched,
    timer: sched,
    random: constant(0.5),
    fetch: ca.fetch,
    onRenewed: (r) => renewals.push(r),
    onError: (f) => failures.push(f),
    ...options,
  });
  sched.settle = () => renewer.settled();
  return { sched, ca, renewer, renewals, failures };
}

/** A certificate valid for 24h from `notBeforeMs`. */
function cert(serial: number, notBeforeMs: number, lifetimeMs = DAY_MS): TestCert {
  return { serial, notBeforeMs, notAfterMs: notBeforeMs + lifetimeMs };
}

function gaps(timesMs: readonly number[]): number[] {
  return timesMs.slice(1).map((t, i) => t - timesMs[i]!);
}

function assertCode(code: string) {
  return (err: unknown) => {
    assert.ok(err instanceof KmtlsError, `expected a KmtlsError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  };
}

// ---------------------------------------------------------------------------------------------------
// renewalDelayMs

const LIFETIME = { notBeforeMs: T0, notAfterMs: T0 + DAY_MS };

for (const [rand, fractionOfLifetime] of [
  [0, 0.51],
  [0.5, 0.5],
  [ALMOST_ONE, 0.49],
] as const) {
  test(`renewal falls at ${fractionOfLifetime * 100} % of the lifetime when the draw is ${rand}`, () => {
    const delayMs = renewalDelayMs({ ...LIFETIME, nowMs: T0, random: constant(rand) });
    // ALMOST_ONE sits a hair inside the +1 % edge; a millisecond of rounding is all it may move.
    assert.ok(
      Math.abs(delayMs - fractionOfLifetime * DAY_MS) <= 1,
      `${delayMs} ms is not ${fractionOfLifetime} of the lifetime`,
    );
  });
}

test('renewal of a 24h certificate issued now falls at exactly 12h with a centred draw', () => {
  assert.equal(renewalDelayMs({ ...LIFETIME, nowMs: T0, random: constant(0.5) }), 12 * HOUR_MS);
});

test('renewal stays within 50 % ±1 % of the lifetime for every draw in [0, 1)', () => {
  for (let i = 0; i < 1000; i++) {
    const delayMs = renewalDelayMs({ ...LIFETIME, nowMs: T0, random: constant(i / 1000) });
    assert.ok(delayMs >= 0.49 * DAY_MS && delayMs <= 0.51 * DAY_MS, `draw ${i / 1000}: ${delayMs}`);
  }
});

test('renewal delay is counted from now, not from NotBefore', () => {
  const delayMs = renewalDelayMs({ ...LIFETIME, nowMs: T0 + 5 * HOUR_MS, random: constant(0.5) });
  assert.equal(delayMs, 7 * HOUR_MS);
});

test('renewal delay is floored at 0 once the renewal time or the expiry has passed', () => {
  for (const nowMs of [T0 + 12 * HOUR_MS, T0 + 13 * HOUR_MS, T0 + 2 * DAY_MS]) {
    assert.equal(renewalDelayMs({ ...LIFETIME, nowMs, random: constant(0.5) }), 0);
  }
});

test('the jittered ratio is clamped to 1: renewal never falls before NotBefore', () => {
  // 0.995 + 0.01 = 1.005 unclamped would renew 0.5 % of the lifetime before the certificate is valid.
  const delayMs = renewalDelayMs({
    ...LIFETIME,
    nowMs: T0 - 5000,
    random: constant(ALMOST_ONE),
    gracePeriodRatio: 0.995,
    gracePeriodRatioJitter: 0.01,
  });
  assert.equal(delayMs, 5000);
});

test('the jittered ratio is clamped to 0: renewal never falls after NotAfter', () => {
  // 0.005 − 0.01 = −0.005 unclamped would renew after the certificate has expired.
  const delayMs = renewalDelayMs({
    ...LIFETIME,
    nowMs: T0,
    random: constant(0),
    gracePeriodRatio: 0.005,
    gracePeriodRatioJitter: 0.01,
  });
  assert.equal(delayMs, DAY_MS);
});

test('a random draw outside [0, 1] is clamped into it', () => {
  const at = (rand: number) => renewalDelayMs({ ...LIFETIME, nowMs: T0, random: constant(rand) });
  assert.equal(at(7), at(1));
  assert.equal(at(-3), at(0));
  assert.equal(at(-3), 0.51 * DAY_MS);
});

test('a NotAfter before NotBefore counts as no lifetime: renew at NotAfter', () => {
  const delayMs = renewalDelayMs({
    notBeforeMs: T0 + DAY_MS,
    notAfterMs: T0 + HOUR_MS,
    nowMs: T0,
    random: constant(0.5),
  });
  assert.equal(delayMs, HOUR_MS);
});

test('grace-period ratios outside [0, 1] are rejected with KMTLS_PKI_RENEWAL_OPTIONS_INVALID', () => {
  for (const bad of [
    { gracePeriodRatio: 1.5 },
    { gracePeriodRatioJitter: -0.1 },
    { gracePeriodRatio: Number.NaN },
  ]) {
    assert.throws(
      () => renewalDelayMs({ ...LIFETIME, nowMs: T0, random: constant(0.5), ...bad }),
      assertCode('KMTLS_PKI_RENEWAL_OPTIONS_INVALID'),
    );
  }
});

// ---------------------------------------------------------------------------------------------------
// retryDelayMs

for (const [attempt, rand, expectedMs] of [
  [0, 0, 500],
  [0, 0.5, 750],
  [0, ALMOST_ONE, 1000],
  [1, 0.5, 1500],
  [3, 0.5, 6000],
  [8, 0, 128_000],
  [9, 0, 150_000],
  [9, ALMOST_ONE, 300_000],
  [40, 0.5, 225_000],
] as const) {
  test(`retry ${attempt} with draw ${rand} waits ${expectedMs} ms: the step doubles from 1s, half fixed and half jittered, capped at 5m`, () => {
    assert.equal(retryDelayMs(attempt, { random: constant(rand) }), expectedMs);
  });
}

test('retry delay is never above maxMs, never negative, and never below half the step, for any attempt', () => {
  for (let attempt = 0; attempt <= 2000; attempt += attempt < 40 ? 1 : 97) {
    for (const rand of [0, 0.3, ALMOST_ONE, 1]) {
      const delayMs = retryDelayMs(attempt, { initialMs: 200, maxMs: 10_000, random: constant(rand) });
      const stepMs = Math.min(10_000, 200 * 2 ** attempt);
      assert.ok(delayMs >= stepMs / 2 && delayMs <= 10_000, `attempt ${attempt}, draw ${rand}: ${delayMs}`);
    }
  }
});

test('retry options out of range are rejected with KMTLS_PKI_RENEWAL_OPTIONS_INVALID', () => {
  for (const bad of [
    { initialMs: 0 },
    { initialMs: -5 },
    { maxMs: 500 },
    { maxMs: Number.POSITIVE_INFINITY },
  ]) {
    assert.throws(
      () => retryDelayMs(0, { ...bad, random: constant(0.5) }),
      assertCode('KMTLS_PKI_RENEWAL_OPTIONS_INVALID'),
    );
  }
});

test('a negative or fractional retry attempt is a bug', () => {
  for (const attempt of [-1, 0.5, Number.NaN]) {
    assert.throws(() => retryDelayMs(attempt, { random: constant(0.5) }), /^Error: BUG: /);
  }
});

// ---------------------------------------------------------------------------------------------------
// timeLeft and certificateStatus

test('time left is NotAfter minus now, negative once expired', () => {
  assert.equal(timeLeft(T0 + HOUR_MS, T0), HOUR_MS);
  assert.equal(timeLeft(T0, T0 + 5000), -5000);
});

for (const [leftMs, expiringSoon] of [
  [20_001, false],
  [20_000, false],
  [19_999, true],
  [1, true],
] as const) {
  test(`expiringSoon is ${expiringSoon} with ${leftMs} ms of a 100 s lifetime left: the line is "less than 20 %"`, () => {
    const validity = { notBeforeMs: T0, notAfterMs: T0 + 100_000 };
    const status = certificateStatus(validity, validity.notAfterMs - leftMs);
    assert.equal(status.expiringSoon, expiringSoon);
    assert.equal(status.timeLeftMs, leftMs);
    assert.equal(status.fractionLeft, leftMs / 100_000);
    assert.equal(status.expired, false);
  });
}

test('a 24h certificate starts expiring soon when 4h48m are left', () => {
  const at = (leftMs: number) => certificateStatus(LIFETIME, LIFETIME.notAfterMs - leftMs).expiringSoon;
  assert.equal(at(4.8 * HOUR_MS), false);
  assert.equal(at(4.8 * HOUR_MS - 1), true);
});

test('an expired certificate is expired and expiring soon with nothing left; at NotAfter itself it is still valid', () => {
  const atNotAfter = certificateStatus(LIFETIME, LIFETIME.notAfterMs);
  assert.equal(atNotAfter.expired, false);
  const after = certificateStatus(LIFETIME, LIFETIME.notAfterMs + 60_000);
  assert.deepEqual(
    {
      expired: after.expired,
      expiringSoon: after.expiringSoon,
      timeLeftMs: after.timeLeftMs,
      fractionLeft: after.fractionLeft,
    },
    { expired: true, expiringSoon: true, timeLeftMs: -60_000, fractionLeft: 0 },
  );
});

test('before NotBefore the whole lifetime is left', () => {
  const status = certificateStatus(LIFETIME, T0 - HOUR_MS);
  assert.equal(status.fractionLeft, 1);
  assert.equal(status.expiringSoon, false);
  assert.equal(status.lifetimeMs, DAY_MS);
});

// ---------------------------------------------------------------------------------------------------
// CertificateRenewer

test('with no certificate, start fetches at once and schedules the renewal at half the new lifetime', async () => {
  const { sched, ca, renewer, renewals } = harness();
  renewer.start();
  assert.deepEqual(ca.fetchTimesMs, [T0]);
  await renewer.settled();
  assert.equal(renewer.current()?.serial, 1);
  assert.equal(renewals.length, 1);
  assert.equal(renewals[0]!.previous, undefined);
  assert.equal(renewals[0]!.nextAttemptAtMs, T0 + 12 * HOUR_MS);
  assert.equal(sched.pendingCount, 1);
});

for (const [what, initial] of [
  ['an expired certificate', cert(100, T0 - 2 * DAY_MS)],
  ['a certificate past its renewal time', cert(100, T0 - 13 * HOUR_MS)],
] as const) {
  test(`${what} given to start is renewed at once`, async () => {
    const { ca, renewer, renewals } = harness();
    renewer.start(initial);
    assert.deepEqual(ca.fetchTimesMs, [T0]);
    await renewer.settled();
    assert.equal(renewals[0]!.previous?.serial, 100);
    assert.equal(renewer.current()?.serial, 1);
  });
}

test('a fresh certificate given to start is renewed at 50 % of its lifetime, not before', async () => {
  const { sched, ca, renewer } = harness();
  // Valid from T0−1h for 24h: half its lifetime is reached at T0+11h.
  renewer.start(cert(100, T0 - HOUR_MS));
  assert.deepEqual(ca.fetchTimesMs, []);
  assert.equal(renewer.status().nextAttemptAtMs, T0 + 11 * HOUR_MS);
  await sched.advanceTo(T0 + 11 * HOUR_MS - 1);
  assert.deepEqual(ca.fetchTimesMs, []);
  await sched.advance(1);
  assert.deepEqual(ca.fetchTimesMs, [T0 + 11 * HOUR_MS]);
  assert.equal(renewer.current()?.serial, 1);
});

test('each successful renewal schedules the next one at half the new certificate lifetime', async () => {
  const { sched, ca, renewer, renewals } = harness();
  renewer.start();
  await renewer.settled();
  await sched.advanceTo(T0 + 3 * DAY_MS);
  assert.deepEqual(gaps(ca.fetchTimesMs), Array(6).fill(12 * HOUR_MS));
  assert.deepEqual(
    renewals.map((r) => [r.previous?.serial, r.certificate.serial]),
    [
      [undefined, 1],
      [1, 2],
      [2, 3],
      [3, 4],
      [4, 5],
      [5, 6],
      [6, 7],
    ],
  );
});

test('the renewal draw spreads a fleet: a low draw renews later, a high one earlier', async () => {
  const at = async (rand: number) => {
    const { renewer } = harness([], { random: constant(rand) });
    renewer.start();
    await renewer.settled();
    return renewer.status().nextAttemptAtMs;
  };
  assert.equal(await at(0), T0 + 0.51 * DAY_MS);
  assert.equal(await at(0.5), T0 + 0.5 * DAY_MS);
  assert.ok(Math.abs((await at(ALMOST_ONE))! - (T0 + 0.49 * DAY_MS)) <= 1);
});

test('failures back off exponentially up to the cap and keep the old certificate', async () => {
  const { sched, ca, renewer, renewals, failures } = harness(Array(9).fill('fail'), {
    retry: { initialMs: 1000, maxMs: 60_000 },
  });
  const initial = cert(100, T0);
  renewer.start(initial);
  await sched.advanceTo(T0 + 13 * HOUR_MS);
  // Draw 0.5 → three quarters of each step: 1s, 2s, 4s, … capped at 60s.
  assert.deepEqual(gaps(ca.fetchTimesMs), [750, 1500, 3000, 6000, 12_000, 24_000, 45_000, 45_000, 45_000]);
  assert.deepEqual(
    failures.map((f) => f.attempt),
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
  assert.equal(renewals.length, 1);
  assert.equal(renewals[0]!.previous, initial);
  const first = failures[0]!;
  assert.equal(first.error.code, 'KMTLS_PKI_RENEWAL_FAILED');
  assert.equal((first.error.cause as Error).message, CA_DOWN);
  assert.equal(first.certificate?.timeLeftMs, 12 * HOUR_MS);
  assert.equal(first.retryInMs, 750);
  assert.equal(first.nextAttemptAtMs, T0 + 12 * HOUR_MS + 750);
  assert.equal(
    first.error.message,
    `certificate renewal failed: attempt 1 (${CA_DOWN}); keeping the current certificate, which expires in 12h; next attempt in 750ms`,
  );
  assert.equal(renewer.current()?.serial, 1);
});

test('a failure while the current certificate has expired says it expired', async () => {
  const { renewer, failures } = harness(['fail']);
  renewer.start(cert(100, T0 - DAY_MS - HOUR_MS));
  await renewer.settled();
  assert.equal(renewer.current()?.serial, 100);
  const failure = failures[0]!;
  assert.equal(failure.certificate?.expired, true);
  assert.equal(failure.certificate?.timeLeftMs, -HOUR_MS);
  assert.match(
    failure.error.message,
    /the current certificate EXPIRED 1h ago \(at 2024-12-31T23:00:00\.000Z\)/,
  );
});

test('a failure before any certificate says there is none yet', async () => {
  const { renewer, failures } = harness(['fail']);
  renewer.start();
  await renewer.settled();
  assert.equal(renewer.current(), undefined);
  assert.equal(failures[0]!.certificate, undefined);
  assert.match(failures[0]!.error.message, /there is no certificate yet/);
});

test('a fetched certificate that is already expired is a failed attempt, and the old one is kept', async () => {
  const stale = cert(7, T0 - 2 * DAY_MS);
  const { renewer, failures, renewals } = harness([stale]);
  renewer.start(cert(100, T0 - 20 * HOUR_MS));
  await renewer.settled();
  assert.equal(renewer.current()?.serial, 100);
  assert.equal(renewals.length, 0);
  assert.match(
    failures[0]!.error.message,
    /\(the fetched certificate expired at 2024-12-31T00:00:00\.000Z\)/,
  );
});

test('a fetched certificate without a usable lifetime is a failed attempt', async () => {
  const { renewer, failures } = harness([
    { serial: 1, notBeforeMs: Number.NaN, notAfterMs: T0 + DAY_MS },
    { serial: 2, notBeforeMs: T0 + DAY_MS, notAfterMs: T0 + HOUR_MS },
  ]);
  renewer.start();
  await renewer.settled();
  renewer.renewNow();
  await renewer.settled();
  assert.equal(renewer.current(), undefined);
  assert.match(failures[0]!.error.message, /no valid validity period \(notBeforeMs=NaN/);
  assert.match(failures[1]!.error.message, /notAfter .* is not after its notBefore/);
});

test('a successful renewal resets the backoff', async () => {
  const { sched, ca, renewer, failures } = harness(['fail', 'fail', 'fail', 'issue', 'fail']);
  renewer.start(cert(100, T0));
  await sched.advanceTo(T0 + 12 * HOUR_MS + 5250);
  // Fails at +0, +750, +2250; succeeds at +5250.
  assert.deepEqual(gaps(ca.fetchTimesMs), [750, 1500, 3000]);
  assert.equal(renewer.status().consecutiveFailures, 0);
  assert.equal(renewer.status().lastError, undefined);
  const renewedAtMs = T0 + 12 * HOUR_MS + 5250;
  await sched.advanceTo(renewedAtMs + 12 * HOUR_MS + 750);
  assert.deepEqual(ca.fetchTimesMs.slice(-2), [renewedAtMs + 12 * HOUR_MS, renewedAtMs + 12 * HOUR_MS + 750]);
  assert.deepEqual(
    failures.map((f) => [f.attempt, f.retryInMs]),
    [
      [1, 750],
      [2, 1500],
      [3, 3000],
      [1, 750],
    ],
  );
});

for (const settle of ['resolves', 'rejects'] as const) {
  test(`stop while a fetch is in flight: when the fetch ${settle}, nothing is installed, reported or scheduled`, async () => {
    const pending = new Deferred<TestCert>();
    const { sched, ca, renewer, renewals, failures } = harness([pending]);
    renewer.start();
    assert.equal(renewer.status().isFetching, true);
    renewer.stop();
    if (settle === 'resolves') pending.resolve(cert(1, T0));
    else pending.reject(new Error(CA_DOWN));
    await renewer.settled();
    assert.equal(renewer.current(), undefined);
    assert.deepEqual([renewals.length, failures.length, sched.pendingCount], [0, 0, 0]);
    await sched.advance(100 * DAY_MS);
    assert.equal(ca.fetchTimesMs.length, 1);
    assert.equal(renewer.status().state, 'stopped');
  });
}

test('stop cancels a scheduled renewal and a scheduled retry', async () => {
  for (const script of [[], ['fail']] as Answer[][]) {
    const { sched, ca, renewer } = harness(script);
    renewer.start();
    await renewer.settled();
    assert.equal(sched.pendingCount, 1);
    renewer.stop();
    assert.equal(sched.pendingCount, 0);
    assert.equal(renewer.status().nextAttemptAtMs, undefined);
    renewer.renewNow();
    await sched.advance(100 * DAY_MS);
    assert.equal(ca.fetchTimesMs.length, 1);
  }
});

test('never two fetches in flight: renewNow during a fetch does nothing, and no timer runs meanwhile', async () => {
  const slow = new Deferred<TestCert>();
  const { sched, ca, renewer } = harness([slow]);
  renewer.start();
  renewer.renewNow();
  renewer.renewNow();
  assert.equal(ca.fetchTimesMs.length, 1);
  assert.equal(sched.pendingCount, 0);
  // Hours pass while the CA is slow: nothing else starts.
  await sched.advance(30 * HOUR_MS);
  assert.equal(ca.fetchTimesMs.length, 1);
  slow.resolve(ca.issue());
  await renewer.settled();
  assert.equal(sched.pendingCount, 1);
  // Once idle, renewNow fetches at once in place of the scheduled renewal.
  renewer.renewNow();
  await renewer.settled();
  assert.equal(ca.fetchTimesMs.length, 2);
  assert.equal(sched.pendingCount, 1);
  assert.equal(ca.maxInFlight, 1);
});

test('status reports expiry, time left, the next attempt and consecutive failures', async () => {
  const { sched, renewer } = harness(['issue', 'fail', 'fail']);
  assert.equal(renewer.status().state, 'idle');
  renewer.start();
  await renewer.settled();
  await sched.advance(3 * HOUR_MS);
  const status = renewer.status();
  assert.equal(status.state, 'running');
  assert.equal(status.certificate?.notAfterMs, T0 + DAY_MS);
  assert.equal(status.certificate?.timeLeftMs, 21 * HOUR_MS);
  assert.equal(status.certificate?.expiringSoon, false);
  assert.equal(status.nextAttemptAtMs, T0 + 12 * HOUR_MS);
  assert.equal(status.isFetching, false);
  assert.equal(status.consecutiveFailures, 0);
  await sched.advanceTo(T0 + 12 * HOUR_MS + 750);
  const failing = renewer.status();
  assert.equal(failing.consecutiveFailures, 2);
  assert.equal(failing.certificate?.timeLeftMs, 12 * HOUR_MS - 750);
  assert.equal(failing.nextAttemptAtMs, T0 + 12 * HOUR_MS + 750 + 1500);
  assert.equal(failing.lastError?.code, 'KMTLS_PKI_RENEWAL_FAILED');
});

test('a renewal further away than the Node timer limit is reached in several legs, not early', async () => {
  // A 90-day certificate renews after 45 days, beyond setTimeout's 2^31−1 ms (about 24.8 days).
  const { sched, ca, renewer } = harness([], { ttlMs: 90 * DAY_MS });
  renewer.start();
  await renewer.settled();
  assert.equal(renewer.status().nextAttemptAtMs, T0 + 45 * DAY_MS);
  await sched.advanceTo(T0 + 45 * DAY_MS - 1);
  assert.equal(ca.fetchTimesMs.length, 1);
  await sched.advance(1);
  assert.deepEqual(ca.fetchTimesMs, [T0, T0 + 45 * DAY_MS]);
  assert.ok(sched.armedDelaysMs.every((ms) => ms <= MAX_TIMER_DELAY_MS));
});

test('renewer options out of range are rejected at construction', () => {
  const sched = new ManualScheduler(T0);
  const ca = new ScriptedCa(sched);
  const base = { clock: sched, timer: sched, random: constant(0.5), fetch: ca.fetch };
  for (const bad of [
    { retry: { initialMs: 0 } },
    { retry: { initialMs: 5000, maxMs: 1000 } },
    { gracePeriodRatio: -0.5 },
    // 0.995 + 0.01 ≥ 1: every certificate would be due the moment it arrives.
    { gracePeriodRatio: 0.995 },
  ]) {
    assert.throws(
      () => new CertificateRenewer({ ...base, ...bad }),
      assertCode('KMTLS_PKI_RENEWAL_OPTIONS_INVALID'),
    );
  }
});

test('starting a renewer twice, or asking it to renew before start, is a bug', () => {
  const { renewer } = harness([new Deferred<TestCert>()]);
  assert.throws(() => renewer.renewNow(), /^Error: BUG: /);
  renewer.start();
  assert.throws(() => renewer.start(), /^Error: BUG: /);
  renewer.stop();
  assert.throws(() => renewer.start(), /^Error: BUG: /);
});
