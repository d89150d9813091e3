#!/usr/bin/env node
// Bundles the compiled CLI (dist/src, from tsc) and its dependencies, which bin/kmtls.js runs. One
// bundle loads faster and holds less memory than hundreds of ES modules (zod alone is ~100).
//
// Two bundles, built apart so that they share no chunk:
// - dist/bundle/sidecar: `kmtls proxy` and `kmtls proxy-wait` (src/cli/sidecar.ts), the process that
//   runs once per pod. Built alone, it holds only what the sidecar uses: a chunk shared with the
//   other commands would bring what they use too (all of zod's messages in every language, because
//   the manifest schemas use classic zod). An idle sidecar holds about 6 MB less (BENCHMARKS.md).
// - dist/bundle/cli: every command (src/cli/main.ts), each in its own chunk, loaded when it runs.
//
// Each output sits three levels below the package root, as dist/src/cli does, so package.json,
// bin/ and the native addon are found the same way. @kubernetes/client-node stays external: it is
// large, and only the Kubernetes commands load it.
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

for (const [name, entry] of [
  ['sidecar', 'dist/src/cli/sidecar.js'],
  ['cli', 'dist/src/cli/main.js'],
]) {
  const outdir = path.join(root, 'dist/bundle', name);
  // Chunk names carry a content hash: without a clean start, every build would leave the last one's behind.
  rmSync(outdir, { recursive: true, force: true });
  await build({
    entryPoints: [path.join(root, entry)],
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    minify: true,
    // Minified, but functions and classes keep their names, so stacks in logs stay readable.
    keepNames: true,
    external: ['@kubernetes/client-node'],
    // CommonJS dependencies (pino, prom-client, yaml) call require(); an ES module has none.
    banner: {
      js: "import { createRequire as __kmtlsCreateRequire } from 'node:module'; const require = __kmtlsCreateRequire(import.meta.url);",
    },
    logLevel: 'warning',
  });
}
