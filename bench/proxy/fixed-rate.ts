/**
 * An open-loop HTTP/1.1 load generator at a fixed request rate (what wrk2 does; wrk2 is not in
 * Debian). Request i is due at start + i / rate whatever happened before it, and goes out on the
 * first free keep-alive connection. Its latency counts from when the generator took it up (the timer
 * tick at or after its due time) to the end of the answer, so time spent waiting for a free
 * connection behind a stall is counted (no coordinated omission), but the lateness of Node's
 * millisecond timer, which is the generator's own (about 0.7 ms at the median where this was written), is not.
 * The latency from the due time itself (wrk2's definition) is kept too, as `fromDue`.
 *
 * `generateFixedRate` runs in its own process (fixed-rate-main.ts), so that its event loop shares
 * nothing with the parent; `runFixedRate` starts that process and reads its answer.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

export interface FixedRatePlan {
  readonly port: number;
  readonly ratePerSecond: number;
  /** Sent at the same rate first, not counted. */
  readonly warmupMs: number;
  readonly durationMs: number;
  readonly connections: number;
}

export interface LatencySummary {
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
  readonly maxMs: number;
}

export interface FixedRateResult {
  readonly plan: FixedRatePlan;
  /** Requests due in the measured period, and how many of them got a 200. */
  readonly measured: number;
  readonly succeeded: number;
  readonly failed: number;
  /** Measured requests that had to wait for a free connection. */
  readonly queued: number;
  /** Successful measured requests per second of the measured period. */
  readonly achievedPerSecond: number;
  /** From when the generator took the request up: the figure the report uses. */
  readonly fromReady: LatencySummary;
  /** From the due time (includes the generator's timer lateness). */
  readonly fromDue: LatencySummary;
}

const REQUEST = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 'latin1');

interface Due {
  readonly index: number;
  /** When the generator took it up. */
  readonly readyAt: number;
}

/** One keep-alive connection, one request at a time, with just enough HTTP parsing for a fixed answer. */
class Connection {
  busy: Due | undefined;
  private pending = '';
  private broken = false;

  private constructor(
    private readonly socket: net.Socket,
    private readonly onDone: (c: Connection, flight: Due, ok: boolean) => void,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.read(d));
    const fail = () => {
      if (this.broken) return;
      this.broken = true;
      const flight = this.busy;
      this.busy = undefined;
      if (flight) this.onDone(this, flight, false);
    };
    socket.on('error', fail);
    socket.on('close', fail);
  }

  static open(port: number, onDone: (c: Connection, flight: Due, ok: boolean) => void): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.off('error', reject);
        resolve(new Connection(s, onDone));
      });
      s.once('error', reject);
    });
  }

  get isUsable(): boolean {
    return !this.broken;
  }

  send(due: Due): void {
    this.busy = due;
    this.socket.write(REQUEST);
  }

  close(): void {
    this.broken = true;
    this.socket.destroy();
  }

  private read(d: Buffer): void {
    this.pending += d.toString('latin1');
    for (;;) {
      const headerEnd = this.pending.indexOf('\r\n\r\n');
      if (headerEnd < 0) return;
      const head = this.pending.slice(0, headerEnd);
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
      const total = headerEnd + 4 + length;
      if (this.pending.length < total) return;
      this.pending = this.pending.slice(total);
      const flight = this.busy;
      this.busy = undefined;
      if (flight === undefined) return;
      this.onDone(this, flight, head.startsWith('HTTP/1.1 200'));
    }
  }
}

function summarize(values: Float64Array): LatencySummary {
  const sorted = Float64Array.from(values.filter((v) => !Number.isNaN(v))).sort();
  const at = (q: number) =>
    sorted.length === 0
      ? Number.NaN
      : (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0);
  return {
    p50Ms: at(0.5),
    p90Ms: at(0.9),
    p99Ms: at(0.99),
    p999Ms: at(0.999),
    maxMs: sorted.length === 0 ? Number.NaN : (sorted[sorted.length - 1] ?? 0),
  };
}

export async function generateFixedRate(plan: FixedRatePlan): Promise<FixedRateResult> {
  const intervalMs = 1000 / plan.ratePerSecond;
  const warmupCount = Math.round((plan.warmupMs / 1000) * plan.ratePerSecond);
  const measured = Math.round((plan.durationMs / 1000) * plan.ratePerSecond);
  const total = warmupCount + measured;
  const fromDue = new Float64Array(measured).fill(Number.NaN);
  const fromReady = new Float64Array(measured).fill(Number.NaN);
  const queue: Due[] = [];
  let start = 0;
  let next = 0;
  let settled = 0;
  let queued = 0;
  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const dueAt = (i: number) => start + i * intervalMs;

  const onDone = (c: Connection, flight: Due, ok: boolean) => {
    const now = performance.now();
    const slot = flight.index - warmupCount;
    if (slot >= 0) {
      // A failed request keeps NaN in both arrays: counted as failed, left out of the percentiles.
      if (ok) {
        fromDue[slot] = now - dueAt(flight.index);
        fromReady[slot] = now - flight.readyAt;
      }
    }
    settled++;
    if (!c.isUsable) replace(c);
    dispatch(true);
    if (settled === total) finish();
  };

  let connections = await Promise.all(
    Array.from({ length: plan.connections }, () => Connection.open(plan.port, onDone)),
  );
  const replace = (dead: Connection) => {
    connections = connections.filter((c) => c !== dead);
    Connection.open(plan.port, onDone).then(
      (c) => {
        connections.push(c);
        dispatch(true);
      },
      () => {},
    );
  };
  /** `late`: sending from a completion, so the request waited for a connection to come free. */
  const dispatch = (late: boolean) => {
    for (const c of connections) {
      if (queue.length === 0) return;
      if (c.busy !== undefined || !c.isUsable) continue;
      const due = queue.shift()!;
      if (late && due.index >= warmupCount) queued++;
      c.send(due);
    }
  };
  const tick = () => {
    const now = performance.now();
    while (next < total && dueAt(next) <= now) queue.push({ index: next++, readyAt: now });
    dispatch(false);
    if (next < total) setTimeout(tick, Math.max(0, dueAt(next) - performance.now()));
  };
  start = performance.now();
  tick();
  // A chain that loses requests must not hang the bench: whatever is not back 10 s after the last
  // request was due counts as failed.
  const deadline = setTimeout(finish, plan.warmupMs + plan.durationMs + 10_000);
  await finished;
  clearTimeout(deadline);
  for (const c of connections) c.close();
  const succeeded = fromReady.filter((v) => !Number.isNaN(v)).length;
  return {
    plan,
    measured,
    succeeded,
    failed: measured - succeeded,
    queued,
    achievedPerSecond: succeeded / (plan.durationMs / 1000),
    fromReady: summarize(fromReady),
    fromDue: summarize(fromDue),
  };
}

const MAIN = fileURLToPath(new URL('./fixed-rate-main.ts', import.meta.url));

/** Runs the generator in a child process (`node --import tsx`), from the repository root. */
export async function runFixedRate(plan: FixedRatePlan, cwd: string): Promise<FixedRateResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, JSON.stringify(plan)], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  if (code !== 0)
    throw new Error(`fixed-rate load on 127.0.0.1:${plan.port} failed (exit ${code}): ${err.trim()}`);
  return JSON.parse(out) as FixedRateResult;
}
