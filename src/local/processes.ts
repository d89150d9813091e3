import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { retryDelayMs } from '../pki/index.js';

export type ProcessState = 'starting' | 'running' | 'restarting' | 'completed' | 'failed' | 'stopped';

export interface ProcessSpec {
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd: string;
  readonly logFile: string;
  /** `Always`: restarted whenever it exits; `OnFailure`: only after a non-zero exit. */
  readonly restart: 'Always' | 'OnFailure';
}

export interface ProcessStatus {
  readonly name: string;
  readonly state: ProcessState;
  readonly pid: number | undefined;
  readonly restarts: number;
  readonly lastExit: string | undefined;
  readonly logFile: string;
}

/** How long a process must stay up before its restart backoff resets. */
const STABLE_MS = 10_000;

/**
 * The process groups of every managed child still alive. Each child is spawned `detached`, so it
 * leads its own process group (and session) and everything it starts (`sh -c 'app & wait'`) is
 * signalled with it. The price: a terminal's Ctrl-C no longer reaches the children directly, so the
 * supervisor must end them itself. It does on stop(); and, best effort, when the supervisor's own
 * process exits (normal exit, uncaught exception, or a SIGINT/SIGTERM/SIGHUP handled by `kmtls up`)
 * every group still alive gets SIGKILL from the 'exit' hook below. A supervisor killed with SIGKILL
 * cannot run that hook: its children then survive it (there is no portable parent-death signal).
 */
const liveGroups = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const pgid of liveGroups) signalGroup(pgid, 'SIGKILL');
    liveGroups.clear();
  });
}

/** Signals the whole process group led by `pgid`; false if there is none left. */
function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * One child process kept alive: its output goes to a log file; when it dies it is restarted with
 * capped exponential backoff (as the kubelet's CrashLoopBackOff, shorter), and that is visible.
 * A command that cannot be started at all (ENOENT, EACCES) counts as a failed start: state `failed`
 * while it waits for its next attempt, with the same backoff. The child leads its own process group;
 * when it ends, whatever it left behind in that group is killed too (as a container's end does).
 */
export class ManagedProcess {
  private child: ChildProcess | undefined;
  private state: ProcessState = 'starting';
  private restarts = 0;
  private failuresInARow = 0;
  private lastExit: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private log: WriteStream;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly spec: ProcessSpec,
    private readonly onChange: () => void = () => {},
  ) {
    this.log = createWriteStream(spec.logFile, { flags: 'a', mode: 0o600 });
  }

  start(): void {
    if (this.state === 'stopped') return;
    installExitHook();
    this.state = 'starting';
    this.startedAt = Date.now();
    const child = spawn(this.spec.command, [...this.spec.args], {
      cwd: this.spec.cwd,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/', ...this.spec.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.child = child;
    const pgid = child.pid;
    if (pgid !== undefined) liveGroups.add(pgid);
    child.stdout?.pipe(this.log, { end: false });
    child.stderr?.pipe(this.log, { end: false });
    this.exited = new Promise((resolve) => {
      let done = false;
      const finish = (outcome: { code: number | null; signal: NodeJS.Signals | null } | { error: Error }) => {
        if (done) return;
        done = true;
        if (pgid !== undefined) {
          // The leader is gone; what it left in its group goes with it.
          signalGroup(pgid, 'SIGKILL');
          liveGroups.delete(pgid);
        }
        if ('error' in outcome) this.onSpawnError(outcome.error);
        else this.onExit(outcome.code, outcome.signal);
        resolve();
      };
      child.once('exit', (code, signal) => finish({ code, signal }));
      child.once('error', (err) => {
        this.log.write(`kmtls: cannot start ${this.spec.command}: ${err.message}\n`);
        // Never spawned: there will be 'close' but no 'exit'.
        if (child.pid === undefined) finish({ error: err });
      });
      // A fallback: 'close' always follows 'exit' or a failed spawn.
      child.once('close', (code, signal) => finish({ code, signal }));
    });
    child.once('spawn', () => {
      if (this.state === 'starting') this.state = 'running';
      this.onChange();
    });
  }

  private onSpawnError(err: Error): void {
    this.child = undefined;
    const code = (err as NodeJS.ErrnoException).code;
    this.lastExit = `cannot start ${this.spec.command}: ${code ?? err.message}`;
    if (this.state === 'stopped') return;
    this.scheduleRestart('failed');
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    this.child = undefined;
    this.lastExit = signal ? `signal ${signal}` : `exit ${code}`;
    if (this.state === 'stopped') return;
    if (code === 0 && this.spec.restart === 'OnFailure') {
      this.state = 'completed';
      this.onChange();
      return;
    }
    this.scheduleRestart('restarting');
  }

  private scheduleRestart(state: 'restarting' | 'failed'): void {
    if (Date.now() - this.startedAt > STABLE_MS) this.failuresInARow = 0;
    const delay = retryDelayMs(this.failuresInARow++, { initialMs: 500, maxMs: 30_000, random: Math.random });
    this.state = state;
    this.log.write(`kmtls: ${this.spec.name} ended (${this.lastExit}); restarting in ${delay} ms\n`);
    this.onChange();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.restarts++;
      this.start();
    }, delay);
  }

  status(): ProcessStatus {
    return {
      name: this.spec.name,
      state: this.state,
      pid: this.child?.pid,
      restarts: this.restarts,
      lastExit: this.lastExit,
      logFile: this.spec.logFile,
    };
  }

  /**
   * SIGTERM to the child's whole process group, then SIGKILL after `graceMs`; resolves when the
   * child is gone (at once if it never started) and its group has been killed.
   */
  async stop(graceMs = 5_000): Promise<void> {
    this.state = 'stopped';
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const child = this.child;
    const pgid = child?.pid;
    if (child && pgid !== undefined && child.exitCode === null && child.signalCode === null) {
      if (!signalGroup(pgid, 'SIGTERM')) child.kill('SIGTERM');
      const kill = setTimeout(() => {
        if (!signalGroup(pgid, 'SIGKILL')) child.kill('SIGKILL');
      }, graceMs);
      await this.exited;
      clearTimeout(kill);
    } else {
      await this.exited;
    }
    await new Promise<void>((resolve) => this.log.end(() => resolve()));
  }

  /** Kills the process without stopping supervision: it is restarted like any crash. */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child?.kill(signal);
  }
}
