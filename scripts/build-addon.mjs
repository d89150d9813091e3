#!/usr/bin/env node
// Builds native/original-dst (SO_ORIGINAL_DST for the sidecar's transparent mode) with the node-gyp
// that npm ships, offline, against the local Node headers (npm's `nodedir`, or node-gyp's own).
// Never fails the install: without the addon everything works except transparent interception,
// which then refuses to start with KMTLS_PROXY_NO_ORIGINAL_DST.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const addonDir = path.join(root, 'native', 'original-dst');

function warn(reason) {
  console.warn(
    `kmtls: native addon original-dst not built (${reason}); transparent interception is unavailable`,
  );
}

/** node-gyp from npm's own dependencies: npm_execpath when npm runs us, else npm beside node. */
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const npmCli = process.env.npm_execpath;
  const npmDirs = [
    npmCli ? path.resolve(path.dirname(npmCli), '..') : undefined,
    path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm'),
  ].filter(Boolean);
  for (const dir of npmDirs) {
    try {
      candidates.push(createRequire(path.join(dir, 'package.json')).resolve('node-gyp/bin/node-gyp.js'));
    } catch {
      // not there: try the next place
    }
  }
  return candidates.find((c) => existsSync(c));
}

function main() {
  if (process.platform !== 'linux') return warn(`SO_ORIGINAL_DST is Linux-only, this is ${process.platform}`);
  if (!existsSync(path.join(addonDir, 'binding.gyp'))) return warn(`${addonDir}/binding.gyp is missing`);
  const gyp = findNodeGyp();
  if (!gyp) return warn('node-gyp not found beside npm');
  const args = [gyp, 'rebuild', '--loglevel=error'];
  // Offline: build against headers already on the machine, never download them.
  const nodedir = process.env.npm_config_nodedir;
  if (nodedir) args.push(`--nodedir=${nodedir}`);
  else if (existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr');
  const r = spawnSync(process.execPath, args, { cwd: addonDir, encoding: 'utf8' });
  if (r.error) return warn(r.error.message);
  if (r.status !== 0) {
    // The first compiler or make error says why; node-gyp's own lines after it only say that it failed.
    const lines = `${r.stderr}\n${r.stdout}`.split('\n').map((l) => l.trim());
    const why =
      lines.find((l) => /error/i.test(l) && !/^gyp ERR!/.test(l)) ??
      lines.find((l) => /^gyp ERR! (stack )?Error:/.test(l)) ??
      `node-gyp exited with ${r.status}`;
    return warn(why.slice(0, 200));
  }
  if (!existsSync(path.join(addonDir, 'build', 'Release', 'original_dst.node')))
    return warn('node-gyp finished but build/Release/original_dst.node is missing');
}

main();
