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
 * One child process kept alive: its output goes to a log file; when it dies it is restarted with
 * capped exponential backoff (as the kubelet's CrashLoopBackOff, shorter), and that is visible.
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
    this.state = 'starting';
    this.startedAt = Date.now();
    const child = spawn(this.spec.command, [...this.spec.args], {
      cwd: this.spec.cwd,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/', ...this.spec.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stdout?.pipe(this.log, { end: false });
    child.stderr?.pipe(this.log, { end: false });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.onExit(code, signal);
        resolve();
      });
      child.once('error', (err) => {
        this.log.write(`kmtls: cannot start ${this.spec.command}: ${err.message}\n`);
      });
    });
    child.once('spawn', () => {
      if (this.state === 'starting') this.state = 'running';
      this.onChange();
    });
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
    if (Date.now() - this.startedAt > STABLE_MS) this.failuresInARow = 0;
    const delay = retryDelayMs(this.failuresInARow++, { initialMs: 500, maxMs: 30_000, random: Math.random });
    this.state = 'restarting';
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

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  async stop(graceMs = 5_000): Promise<void> {
    this.state = 'stopped';
    if (this.timer) clearTimeout(this.timer);
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(kill);
    }
    await new Promise<void>((resolve) => this.log.end(() => resolve()));
  }

  /** Kills the process without stopping supervision: it is restarted like any crash. */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child?.kill(signal);
  }
}
