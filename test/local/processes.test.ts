/**
 * The local supervisor's child processes: a command that cannot be started counts as a failed start
 * (visible, restarted with backoff, and stop() still returns), and stop() ends the child's whole
 * process group, so what an app started through `sh -c` goes with it. Real processes; short waits.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import type { ProcessSpec } from '../../src/local/processes.js';
import { ManagedProcess } from '../../src/local/processes.js';

async function spec(t: TestContext, command: string, args: string[]): Promise<ProcessSpec> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-proc-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return {
    name: 'app',
    command,
    args,
    env: {},
    cwd: dir,
    logFile: path.join(dir, 'app.log'),
    restart: 'Always',
  };
}

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('a command that does not exist is a failed start: shown as failed, retried, and stop() resolves', async (t) => {
  const s = await spec(t, '/nonexistent/kmtls-no-such-command', []);
  const proc = new ManagedProcess(s);
  proc.start();
  await until('the failed start', () => proc.status().state === 'failed');
  assert.match(proc.status().lastExit ?? '', /cannot start .*ENOENT/);
  assert.equal(proc.status().pid, undefined);
  // The first retry comes after ~500 ms of backoff.
  await until('a retry', () => proc.status().restarts >= 1, 3_000);
  const stopped = await Promise.race([
    proc.stop(500).then(() => 'stopped'),
    new Promise((r) => setTimeout(() => r('hung'), 3_000)),
  ]);
  assert.equal(stopped, 'stopped');
  assert.equal(proc.status().state, 'stopped');
  assert.match(await readFile(s.logFile, 'utf8'), /cannot start/);
});

test('stop() right after start() of a command that does not exist resolves', async (t) => {
  const proc = new ManagedProcess(await spec(t, '/nonexistent/kmtls-no-such-command', []));
  proc.start();
  await proc.stop(500);
  assert.equal(proc.status().state, 'stopped');
});

test('stop() ends the whole process group: a grandchild started by sh -c does not survive', async (t) => {
  const s = await spec(t, 'sh', ['-c', 'sleep 1000 & echo $! > grandchild.pid; wait']);
  const proc = new ManagedProcess(s);
  proc.start();
  const pidFile = path.join(s.cwd, 'grandchild.pid');
  let grandchild = 0;
  await until('the grandchild', () => {
    try {
      grandchild = Number(execFileSync('cat', [pidFile], { encoding: 'utf8' }).trim());
    } catch {
      return false;
    }
    return grandchild > 0;
  });
  assert.ok(alive(grandchild));
  await proc.stop(2_000);
  await until('the grandchild to be gone', () => !alive(grandchild), 2_000);
});

test('when the app itself ends, what it left in its group is killed before the restart', async (t) => {
  const s = await spec(t, 'sh', ['-c', 'sleep 1000 & echo $! > grandchild.pid; sleep 0.2; exit 3']);
  const proc = new ManagedProcess(s);
  proc.start();
  t.after(() => proc.stop(500));
  await until('the exit', () => proc.status().state === 'restarting');
  assert.equal(proc.status().lastExit, 'exit 3');
  const grandchild = Number((await readFile(path.join(s.cwd, 'grandchild.pid'), 'utf8')).trim());
  await until('the grandchild to be gone', () => !alive(grandchild), 2_000);
});
