/**
 * Child processes of the sidecar bench and what /proc says about them: CPU time (utime + stime, all
 * threads) and resident memory. Every process started here is tracked and stopped by `stopAll`, which
 * the bench calls in a `finally`.
 */
import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';

export interface Started {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** stdout and stderr, appended here. */
  readonly logFile: string;
}

const started: Started[] = [];

/** Starts a long-running program with its output in `logFile`. */
export function startProcess(
  name: string,
  cmd: string,
  args: readonly string[],
  logFile: string,
  env?: NodeJS.ProcessEnv,
): Started {
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn(cmd, args, { stdio: ['ignore', fd, fd], ...(env ? { env } : {}) });
    if (child.pid === undefined) throw new Error(`cannot start ${name}: ${cmd} (no pid)`);
    const s = { name, child, pid: child.pid, logFile };
    started.push(s);
    return s;
  } finally {
    closeSync(fd);
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopOne(s: Started, graceMs: number): Promise<void> {
  if (hasExited(s.child)) return;
  const exited = new Promise<void>((resolve) => s.child.once('exit', () => resolve()));
  s.child.kill('SIGTERM');
  const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), graceMs).unref());
  if ((await Promise.race([exited, timer])) === 'timeout' && !hasExited(s.child)) {
    s.child.kill('SIGKILL');
    await exited;
  }
}

/** Stops one started process (SIGTERM, then SIGKILL after the grace period). */
export async function stopProcess(s: Started, graceMs = 3_000): Promise<void> {
  await stopOne(s, graceMs);
  const i = started.indexOf(s);
  if (i >= 0) started.splice(i, 1);
}

/** Stops every process started here that is still running, newest first. */
export async function stopAll(): Promise<void> {
  const all = started.splice(0).reverse();
  await Promise.all(all.map((s) => stopOne(s, 3_000)));
}

/** Throws with the tail of the log if the process has died. */
export function assertRunning(s: Started): void {
  if (!hasExited(s.child)) return;
  const code = s.child.exitCode ?? s.child.signalCode;
  throw new Error(`${s.name} exited (${code}): ${tail(s.logFile)}`);
}

export function tail(file: string, lines = 5): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ') || '(no output)';
  } catch {
    return '(no output)';
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('BUG: no TCP address');
  return address.port;
}

/** Waits until something accepts TCP connections on the port, or the process dies, or time runs out. */
export async function waitForPort(port: number, owner: Started, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    assertRunning(owner);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`${owner.name} does not listen on 127.0.0.1:${port}: ${tail(owner.logFile)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The children of a process (nginx's workers under its master). */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter((p) => p !== '')
      .map(Number);
  } catch {
    return [];
  }
}

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU seconds a process has used so far, user + system, all its threads. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces and parentheses: fields are counted after its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / ticksPerSecond();
}

/** Resident set size in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb) * 1024;
}

/**
 * CPU seconds the machine has been busy (user, nice, system, irq, softirq; not idle, iowait or
 * steal), from /proc/stat. Interrupt time is in because a process's stime includes the interrupts
 * that land while it runs (loopback traffic is processed there); interrupts that land elsewhere count
 * as someone else's, so the difference with `ownTreeSeconds` errs on the side of "not quiet".
 */
export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const [user, nice, system, , , irq, softirq] = line.trim().split(/\s+/).slice(1).map(Number);
  return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0)) / ticksPerSecond();
}

/**
 * CPU seconds of this process and of every descendant it has reaped (cutime + cstime include the
 * descendants' own reaped children, so nginx workers count through their master).
 */
export function ownTreeSeconds(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const sumOf = (from: number, to: number) => fields.slice(from, to + 1).reduce((a, f) => a + Number(f), 0);
  return sumOf(11, 14) / ticksPerSecond();
}
