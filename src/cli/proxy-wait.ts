import http from 'node:http';
import { KmtlsError } from '../errors.js';
import { parseDuration } from '../pki/index.js';
import { parseCommandArgs } from './args.js';
import type { CommandIo } from './io.js';

export const PROXY_WAIT_USAGE = `Usage:
  kmtls proxy-wait [--url URL] [--timeout 60s]

Waits until the sidecar is ready (GET URL answers 200; default http://127.0.0.1:15020/healthz/ready),
then exits 0; exits 1 after the timeout. The injector runs it as the sidecar's postStart hook where
native sidecars are not available, so the application starts only once its sidecar serves.
`;

function get(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 1_000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

export async function runProxyWait(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    url: { type: 'string' },
    timeout: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout(PROXY_WAIT_USAGE);
    return 0;
  }
  const url = values.url ?? 'http://127.0.0.1:15020/healthz/ready';
  const timeoutMs = parseDuration(values.timeout ?? '60s');
  if (timeoutMs === undefined || timeoutMs <= 0)
    throw new KmtlsError('KMTLS_CLI_USAGE', `not a duration: --timeout ${JSON.stringify(values.timeout)}`);
  const end = Date.now() + timeoutMs;
  let last = 0;
  while (Date.now() < end) {
    last = await get(url);
    if (last === 200) {
      io.stdout('sidecar ready\n');
      return 0;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  io.stderr(`sidecar not ready after ${values.timeout ?? '60s'} (last answer: ${last || 'none'})\n`);
  return 1;
}
