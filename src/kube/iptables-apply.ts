import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { KmtlsError } from '../errors.js';
import type { InterceptionOptions } from './iptables.js';
import { CHAINS, IPV6_CHAINS, renderIp6tablesRestore, renderIptablesRestore } from './iptables.js';

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

/** `iptables` -> `ip6tables`, `/usr/sbin/iptables-legacy` -> `/usr/sbin/ip6tables-legacy`. */
export function ip6tablesCommand(iptables: string): string {
  const dir = path.dirname(iptables);
  const base = path.basename(iptables).replace(/^iptables/, 'ip6tables');
  return dir === '.' && !iptables.startsWith('.') ? base : path.join(dir, base);
}

/** Whether the kernel has IPv6 at all (no /proc/net/if_inet6: disabled, nothing to bypass with). */
function kernelHasIpv6(): boolean {
  return existsSync('/proc/net/if_inet6');
}

/** Removes kmtls's jumps from `parents` and then kmtls's chains, in one table. */
async function cleanTable(
  command: string,
  table: string,
  chains: readonly string[],
  parents: readonly string[],
): Promise<number> {
  const ours = new Set<string>(chains);
  const listing = await mustRun(command, ['-w', '-t', table, '-S']);
  let removedRules = 0;
  for (const line of listing.split('\n')) {
    const a = argsOf(line);
    if (a[0] !== '-A' || !parents.includes(a[1] ?? '')) continue;
    const target = a[a.indexOf('-j') + 1];
    if (!target || !ours.has(target)) continue;
    await mustRun(command, ['-w', '-t', table, '-D', ...a.slice(1)]);
    removedRules++;
  }
  const present = listing
    .split('\n')
    .map(argsOf)
    .filter((a) => a[0] === '-N' && ours.has(a[1] ?? ''))
    .map((a) => a[1]!);
  // Flush all before deleting any: the chains jump to one another.
  for (const chain of present) await mustRun(command, ['-w', '-t', table, '-F', chain]);
  for (const chain of present) await mustRun(command, ['-w', '-t', table, '-X', chain]);
  return removedRules;
}

/** What apply and clean did about IPv6, and what the operator should know. */
export interface Ipv6Outcome {
  /** `rejected`: inbound IPv6 TCP is reset; `none`: no rules were needed; `skipped`: see warnings. */
  readonly ipv6: 'rejected' | 'none' | 'skipped';
  readonly warnings: readonly string[];
}

/** Whether ip6tables can be run: false (with why) when it is not installed. */
async function ip6tablesMissing(ip6tables: string): Promise<string | undefined> {
  try {
    await run(ip6tables, ['--version']);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Removes every kmtls rule and chain: from the nat table (the jumps from PREROUTING and OUTPUT, each
 * copy, then the chains) and, when ip6tables is there, the IPv6 filter chain and its jump from INPUT.
 * Rules that are not kmtls's are left alone. Running it twice is harmless.
 */
export async function cleanInterception(
  cmd: IptablesCommand = {},
): Promise<{ removedRules: number; warnings: string[] }> {
  const iptables = cmd.iptables ?? 'iptables';
  let removedRules = await cleanTable(iptables, 'nat', Object.values(CHAINS), ['PREROUTING', 'OUTPUT']);
  const warnings: string[] = [];
  const ip6tables = ip6tablesCommand(iptables);
  if (kernelHasIpv6()) {
    const missing = await ip6tablesMissing(ip6tables);
    if (missing) warnings.push(`IPv6 rules not checked: ${missing}`);
    else removedRules += await cleanTable(ip6tables, 'filter', Object.values(IPV6_CHAINS), ['INPUT']);
  }
  return { removedRules, warnings };
}

/**
 * Installs the interception rules, replacing any kmtls rules already there. The IPv4 rules go in
 * with one `iptables-restore --noflush` transaction: they are all in, or none is. Then the IPv6
 * rejection (ip6tables-restore): without ip6tables, a warning, not a failure (the pod may have no
 * IPv6 address at all); without IPv6 in the kernel, nothing to do.
 */
export async function applyInterception(
  options: InterceptionOptions,
  cmd: IptablesCommand = {},
): Promise<Ipv6Outcome> {
  const iptables = cmd.iptables ?? 'iptables';
  const { warnings } = await cleanInterception(cmd);
  await mustRun(restoreCommand(iptables), ['-w', '--noflush'], renderIptablesRestore(options));
  const v6 = renderIp6tablesRestore(options);
  if (v6 === undefined) return { ipv6: 'none', warnings };
  if (!kernelHasIpv6()) return { ipv6: 'none', warnings };
  const ip6tables = ip6tablesCommand(iptables);
  const missing = await ip6tablesMissing(ip6tables);
  if (missing)
    return {
      ipv6: 'skipped',
      warnings: [
        `IPv6 is not intercepted and NOT blocked: ${missing}. A client reaching the pod over IPv6 bypasses the sidecar (STRICT included); install ip6tables or disable IPv6 in the pod`,
      ],
    };
  await mustRun(restoreCommand(ip6tables), ['-w', '--noflush'], v6);
  return { ipv6: 'rejected', warnings };
}
