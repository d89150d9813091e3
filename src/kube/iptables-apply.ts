import { spawn } from 'node:child_process';
import { KmtlsError } from '../errors.js';
import type { InterceptionOptions } from './iptables.js';
import { CHAINS, renderIptablesRestore } from './iptables.js';

/** Which iptables to run: `iptables` (the system's choice), `iptables-legacy` or `iptables-nft`. */
export interface IptablesCommand {
  readonly iptables?: string;
}

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(command: string, args: readonly string[], input?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new KmtlsError(
          'KMTLS_IPTABLES_FAILED',
          `cannot run ${command}: ${err.code ?? err.message}${err.code === 'ENOENT' ? ' (install the iptables package)' : ''}`,
          { cause: err },
        ),
      ),
    );
    child.once('close', (code) => resolve({ code, stdout, stderr }));
    if (input !== undefined && child.stdin) {
      // A command that exits before reading (bad flags) closes the pipe: its exit status says why.
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    }
  });
}

async function mustRun(command: string, args: readonly string[], input?: string): Promise<string> {
  const r = await run(command, args, input);
  if (r.code !== 0)
    throw new KmtlsError(
      'KMTLS_IPTABLES_FAILED',
      `${command} ${args.join(' ')} failed: exit ${r.code} (${r.stderr.trim().split('\n').slice(0, 3).join('; ')})`,
    );
  return r.stdout;
}

/** `iptables-legacy` -> `iptables-legacy-restore`, `/usr/sbin/iptables` -> `/usr/sbin/iptables-restore`. */
function restoreCommand(iptables: string): string {
  return `${iptables}-restore`;
}

/** Splits an `iptables -S` line into arguments (no quoting happens in the rules kmtls and Istio write). */
function argsOf(line: string): string[] {
  return line.trim().split(/\s+/);
}

/**
 * Removes every kmtls rule and chain from the nat table: the jumps from PREROUTING and OUTPUT (each
 * copy), then the chains. Rules that are not kmtls's are left alone. Running it twice is harmless.
 */
export async function cleanInterception(cmd: IptablesCommand = {}): Promise<{ removedRules: number }> {
  const iptables = cmd.iptables ?? 'iptables';
  const ours = new Set<string>(Object.values(CHAINS));
  const listing = await mustRun(iptables, ['-w', '-t', 'nat', '-S']);
  let removedRules = 0;
  for (const line of listing.split('\n')) {
    const a = argsOf(line);
    if (a[0] !== '-A' || (a[1] !== 'PREROUTING' && a[1] !== 'OUTPUT')) continue;
    const target = a[a.indexOf('-j') + 1];
    if (!target || !ours.has(target)) continue;
    await mustRun(iptables, ['-w', '-t', 'nat', '-D', ...a.slice(1)]);
    removedRules++;
  }
  const present = listing
    .split('\n')
    .map(argsOf)
    .filter((a) => a[0] === '-N' && ours.has(a[1] ?? ''))
    .map((a) => a[1]!);
  // Flush all before deleting any: the chains jump to one another.
  for (const chain of present) await mustRun(iptables, ['-w', '-t', 'nat', '-F', chain]);
  for (const chain of present) await mustRun(iptables, ['-w', '-t', 'nat', '-X', chain]);
  return { removedRules };
}

/**
 * Installs the interception rules, replacing any kmtls rules already there. The new rules go in
 * with one `iptables-restore --noflush` transaction: they are all in, or none is.
 */
export async function applyInterception(
  options: InterceptionOptions,
  cmd: IptablesCommand = {},
): Promise<void> {
  const iptables = cmd.iptables ?? 'iptables';
  await cleanInterception(cmd);
  await mustRun(restoreCommand(iptables), ['-w', '--noflush'], renderIptablesRestore(options));
}
