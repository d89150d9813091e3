#!/usr/bin/env node
// Bundles the compiled CLI (dist/src, from tsc) and its dependencies into dist/bundle/cli, which
// bin/kmtls.js runs. One bundle loads faster and holds less memory than hundreds of ES modules
// (zod alone is ~100): a sidecar's idle RSS drops by about 4 MB (BENCHMARKS.md). Commands stay in
// their own chunks, loaded only when they run. The output sits three levels below the package
// root, as dist/src/cli does, so package.json, bin/ and the native addon are found the same way.
// @kubernetes/client-node stays external: it is large, and only the Kubernetes commands load it.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

await build({
  entryPoints: [path.join(root, 'dist/src/cli/main.js')],
  outdir: path.join(root, 'dist/bundle/cli'),
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
