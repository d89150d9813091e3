import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ERROR_CODES } from '../../src/errors.js';
import { DIAGNOSTICS, VERDICT_CODES } from '../../src/policy/index.js';

const doc = readFileSync('docs/diagnostics.md', 'utf8');
/** Rows of the markdown tables: `| \`CODE\` | second column | ...`. */
const rows = new Map<string, string>();
for (const m of doc.matchAll(/^\| `([A-Z0-9_]+)` \| ([^|]+) \|/gm)) rows.set(m[1]!, m[2]!.trim());

test('every diagnostic code is documented with its severity', () => {
  for (const [code, severity] of Object.entries(DIAGNOSTICS)) {
    assert.equal(rows.get(code), severity, `docs/diagnostics.md: ${code}`);
  }
});

test('every command error code is documented with its exit code', () => {
  for (const [code, exit] of Object.entries(ERROR_CODES)) {
    assert.equal(rows.get(code), String(exit), `docs/diagnostics.md: ${code}`);
  }
});

test('every verdict code is documented', () => {
  for (const code of VERDICT_CODES) assert.ok(rows.has(code), `docs/diagnostics.md: ${code}`);
});

test('the page documents no code that does not exist', () => {
  const known = new Set<string>([...Object.keys(DIAGNOSTICS), ...Object.keys(ERROR_CODES), ...VERDICT_CODES]);
  for (const code of rows.keys())
    assert.ok(known.has(code), `docs/diagnostics.md lists unknown code ${code}`);
});
