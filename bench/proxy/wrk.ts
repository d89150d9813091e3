/**
 * Runs wrk (closed loop: each connection sends its next request when the previous answer is in) and
 * reads its summary from the JSON line that wrk-report.lua prints.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const REPORTER = fileURLToPath(new URL('./wrk-report.lua', import.meta.url));

export interface WrkPlan {
  readonly threads: number;
  readonly connections: number;
  readonly durationSeconds: number;
  /** A new connection for every request (`Connection: close`), instead of keep-alive. */
  readonly closeEachRequest: boolean;
}

export interface WrkResult {
  readonly requests: number;
  readonly durationSeconds: number;
  readonly requestsPerSecond: number;
  /** Connect, read, write errors and timeouts, added up; non-2xx/3xx answers counted apart. */
  readonly socketErrors: number;
  readonly badStatus: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

interface WrkJson {
  requests: number;
  durationUs: number;
  connectErrors: number;
  readErrors: number;
  writeErrors: number;
  timeouts: number;
  badStatus: number;
  p50Us: number;
  p99Us: number;
}

export async function runWrk(bin: string, port: number, plan: WrkPlan): Promise<WrkResult> {
  const args = [
    '-t',
    String(plan.threads),
    '-c',
    String(plan.connections),
    '-d',
    `${plan.durationSeconds}s`,
    '--timeout',
    '5s',
    '-s',
    REPORTER,
    ...(plan.closeEachRequest ? ['-H', 'Connection: close'] : []),
    `http://127.0.0.1:${port}/`,
  ];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  const line = out.split('\n').find((l) => l.startsWith('WRK_JSON '));
  if (code !== 0 || line === undefined)
    throw new Error(`wrk on 127.0.0.1:${port} failed (exit ${code}): ${(err || out).trim().slice(0, 300)}`);
  const j = JSON.parse(line.slice('WRK_JSON '.length)) as WrkJson;
  const durationSeconds = j.durationUs / 1e6;
  return {
    requests: j.requests,
    durationSeconds,
    requestsPerSecond: j.requests / durationSeconds,
    socketErrors: j.connectErrors + j.readErrors + j.writeErrors + j.timeouts,
    badStatus: j.badStatus,
    p50Ms: j.p50Us / 1000,
    p99Ms: j.p99Us / 1000,
  };
}
