import { readFileSync } from 'node:fs';
import { ERROR_CODES, exitCodeFor, KmtlsError } from '../errors.js';
import type { CommandIo } from './io.js';

/** One command: its arguments (after the command's name) and where it writes; returns the exit code. */
export type Command = (argv: readonly string[], io: CommandIo) => Promise<number>;

/** kmtls's version, from package.json (three levels above this file in dist/src and dist/bundle). */
export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** Loads and runs a command; never throws: errors become a coded message and their exit code. */
export async function runCommand(
  load: () => Promise<Command>,
  argv: readonly string[],
  io: CommandIo,
): Promise<number> {
  try {
    return await (await load())(argv, io);
  } catch (err) {
    if (err instanceof KmtlsError && err.code in ERROR_CODES) {
      io.stderr(`error ${err.code}: ${err.message}\n`);
      return exitCodeFor(err.code);
    }
    io.stderr(`BUG: kmtls failed unexpectedly: ${(err as Error)?.stack ?? String(err)}\n`);
    return 70;
  }
}

/** The process's own streams, for a process entry (`main`), the only callers that touch them. */
export function processIo(readStdin: () => Promise<string>): CommandIo {
  // A reader that goes away (`kmtls validate ... | head`) is not an error worth a stack trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  return {
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
    readStdin,
    isTty: process.stdout.isTTY === true,
  };
}
