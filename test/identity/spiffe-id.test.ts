import assert from 'node:assert/strict';
import { test } from 'node:test';
import { meshIdentity, meshIdentityParts, parseSpiffeId } from '../../src/identity/index.js';

const VALID = [
  'spiffe://cluster.local/ns/default/sa/default',
  'spiffe://example.org',
  'spiffe://trust-domain.example_1/a/b.c/d-e_f',
];

for (const id of VALID) {
  test(`a valid SPIFFE ID parses and keeps its parts: ${id}`, () => {
    const r = parseSpiffeId(id);
    assert.ok(r.ok, r.ok ? '' : r.message);
    assert.equal(r.id.uri, id);
  });
}

const INVALID: [string, string][] = [
  ['', 'EMPTY'],
  ['http://cluster.local/ns/a/sa/b', 'WRONG_SCHEME'],
  ['SPIFFE://cluster.local/ns/a', 'WRONG_SCHEME'],
  ['spiffe://', 'MISSING_TRUST_DOMAIN'],
  ['spiffe:///ns/a', 'MISSING_TRUST_DOMAIN'],
  ['spiffe://Cluster.Local/ns/a', 'BAD_TRUST_DOMAIN_CHAR'],
  ['spiffe://cluster.local:8443/ns/a', 'USERINFO_OR_PORT'],
  ['spiffe://user@cluster.local/ns/a', 'USERINFO_OR_PORT'],
  ['spiffe://cluster.local/ns//sa', 'EMPTY_SEGMENT'],
  ['spiffe://cluster.local/ns/./sa', 'DOT_SEGMENT'],
  ['spiffe://cluster.local/ns/../sa', 'DOT_SEGMENT'],
  ['spiffe://cluster.local/ns/a b', 'BAD_PATH_CHAR'],
  ['spiffe://cluster.local/ns/%41', 'BAD_PATH_CHAR'],
  ['spiffe://cluster.local/ns/a/', 'TRAILING_SLASH'],
  ['spiffe://cluster.local/ns/a?x=1', 'QUERY_OR_FRAGMENT'],
  ['spiffe://cluster.local/ns/a#f', 'QUERY_OR_FRAGMENT'],
  [`spiffe://${'a'.repeat(256)}/x`, 'TRUST_DOMAIN_TOO_LONG'],
  [`spiffe://td/${'a'.repeat(2100)}`, 'TOO_LONG'],
];

for (const [id, rule] of INVALID) {
  test(`an invalid SPIFFE ID names the rule it breaks: ${rule} (${id.slice(0, 40)})`, () => {
    const r = parseSpiffeId(id);
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.rule, rule);
      assert.match(r.message, /^invalid SPIFFE ID: /);
    }
  });
}

test('the mesh identity is spiffe://<td>/ns/<ns>/sa/<sa> and splits back into its parts', () => {
  const r = meshIdentity('cluster.local', 'finance', 'payments');
  assert.ok(r.ok);
  assert.equal(r.id.uri, 'spiffe://cluster.local/ns/finance/sa/payments');
  assert.deepEqual(meshIdentityParts(r.id), { namespace: 'finance', serviceAccount: 'payments' });
});

test('a mesh identity needs a namespace and a service account', () => {
  const r = meshIdentity('cluster.local', '', 'payments');
  assert.equal(r.ok, false);
  if (!r.ok) assert.equal(r.rule, 'NOT_MESH_FORM');
});

test('an ID not of the mesh form has no mesh parts', () => {
  for (const id of ['spiffe://td/ns/a', 'spiffe://td/ns/a/sa/b/extra', 'spiffe://td/sa/a/ns/b']) {
    const r = parseSpiffeId(id);
    assert.ok(r.ok);
    assert.equal(meshIdentityParts(r.id), undefined, id);
  }
});
