/**
 * The outside programs the sidecar bench compares with and drives: nginx (with its stream module),
 * haproxy and wrk, from Debian's packages. Missing ones are installed with apt-get when running as
 * root; a tool that is still missing afterwards is reported, and the comparisons that need it are
 * skipped, never failed. Nothing here touches the network except apt-get.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import path from 'node:path';

export interface Tools {
  readonly nginx?: NginxTool;
  readonly haproxy?: { readonly bin: string; readonly version: string };
  readonly wrk?: { readonly bin: string; readonly version: string };
  /** `openssl version`, and the binary, which the bench uses to see what each server side negotiates. */
  readonly openssl: string;
  readonly opensslBin?: string;
  /** What was installed or why something could not be, in the words the report repeats. */
  readonly notes: readonly string[];
}

export interface NginxTool {
  readonly bin: string;
  readonly version: string;
  /** `load_module` line for a dynamic stream module, or '' when stream is built in. */
  readonly loadStream: string;
}

/** Debian packages, per tool: nginx's stream module is a separate package in bookworm. */
const PACKAGES = {
  nginx: ['nginx', 'libnginx-mod-stream'],
  haproxy: ['haproxy'],
  wrk: ['wrk'],
} as const;
type ToolName = keyof typeof PACKAGES;

const STREAM_MODULE_PATHS = [
  '/usr/lib/nginx/modules/ngx_stream_module.so',
  '/usr/lib64/nginx/modules/ngx_stream_module.so',
];

function findExecutable(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** `cmd args` output, stdout and stderr together, first line only; tools print versions on either. */
function firstLine(cmd: string, args: readonly string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n')[0] ?? '';
}

function describeNginx(bin: string): NginxTool | string {
  const r = spawnSync(bin, ['-V'], { encoding: 'utf8', timeout: 10_000 });
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const version = text.split('\n')[0]?.replace(/^nginx version: /, '') ?? 'nginx';
  if (/--with-stream(\s|$)/.test(text)) return { bin, version, loadStream: '' };
  if (!text.includes('--with-stream=dynamic')) return `${version} is built without the stream module`;
  const module = STREAM_MODULE_PATHS.find((p) => existsSync(p));
  if (module === undefined)
    return `${version} has a dynamic stream module, but ngx_stream_module.so is not installed (libnginx-mod-stream)`;
  return { bin, version, loadStream: `load_module ${module};` };
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function aptInstall(packages: readonly string[], log: (line: string) => void): string | undefined {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], {
      encoding: 'utf8',
      env,
      timeout: 300_000,
    });
  log(`  apt-get install ${packages.join(' ')}`);
  let r = install();
  if (r.status !== 0) {
    // A fresh machine has no package lists yet: update once, then try again.
    log('  apt-get update');
    spawnSync('apt-get', ['update', '-qq'], { encoding: 'utf8', env, timeout: 300_000 });
    r = install();
  }
  if (r.status === 0) return undefined;
  const why = (r.error?.message ?? `${r.stderr ?? ''}`.trim().split('\n').pop() ?? '') || `exit ${r.status}`;
  return why;
}

/** Finds the tools, installing the missing ones when possible. Never throws for a missing tool. */
export function ensureTools(log: (line: string) => void): Tools {
  const notes: string[] = [];
  const missing = (): ToolName[] => {
    const out: ToolName[] = [];
    const nginx = findExecutable('nginx');
    if (nginx === undefined || typeof describeNginx(nginx) === 'string') out.push('nginx');
    if (findExecutable('haproxy') === undefined) out.push('haproxy');
    if (findExecutable('wrk') === undefined) out.push('wrk');
    return out;
  };
  const before = missing();
  if (before.length > 0) {
    const packages = before.flatMap((t) => PACKAGES[t]);
    if (!isRoot()) {
      notes.push(
        `not root (uid ${process.getuid?.() ?? '?'}), so \`apt-get install ${packages.join(' ')}\` was not tried`,
      );
    } else {
      const failure = aptInstall(packages, log);
      if (failure === undefined) notes.push(`installed with apt-get: ${packages.join(', ')}`);
      else notes.push(`\`apt-get install ${packages.join(' ')}\` failed: ${failure}`);
    }
  }

  const tools: {
    nginx?: NginxTool;
    haproxy?: { bin: string; version: string };
    wrk?: { bin: string; version: string };
  } = {};
  const nginxBin = findExecutable('nginx');
  if (nginxBin === undefined) notes.push('nginx not found: the nginx chain is skipped');
  else {
    const nginx = describeNginx(nginxBin);
    if (typeof nginx === 'string') notes.push(`${nginx}: the nginx chain is skipped`);
    else tools.nginx = nginx;
  }
  const haproxyBin = findExecutable('haproxy');
  if (haproxyBin === undefined) notes.push('haproxy not found: the haproxy chain is skipped');
  else tools.haproxy = { bin: haproxyBin, version: firstLine(haproxyBin, ['-v']) };
  const wrkBin = findExecutable('wrk');
  if (wrkBin === undefined)
    notes.push(
      'wrk not found: maximum throughput, CPU per request and new connections per second are skipped',
    );
  else tools.wrk = { bin: wrkBin, version: firstLine(wrkBin, ['-v']).replace(/ Copyright.*$/, '') };
  const opensslBin = findExecutable('openssl');
  const openssl = opensslBin === undefined ? 'not found' : firstLine(opensslBin, ['version']);
  return { ...tools, openssl, ...(opensslBin === undefined ? {} : { opensslBin }), notes };
}
