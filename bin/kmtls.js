#!/usr/bin/env node
// The sidecar's commands run from a bundle of their own (src/cli/sidecar.ts): a sidecar process,
// one per pod, then loads only what it needs. Every other command runs from the whole CLI.
const sidecar = process.argv[2] === 'proxy' || process.argv[2] === 'proxy-wait';
const { main } = await import(sidecar ? '../dist/bundle/sidecar/sidecar.js' : '../dist/bundle/cli/main.js');

await main();
