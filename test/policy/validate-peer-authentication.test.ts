/**
 * PeerAuthentication validation as Istio's CRD schema and webhook do it together
 * (reference/istio-mtls-semantics.md, section b). Case names from Istio's
 * `TestValidatePeerAuthentication` and the CRD testdata `peerauth-{valid,invalid}.yaml` say so in
 * brackets.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Diagnostic, DiagnosticCode, PeerAuthentication, Severity } from '../../src/policy/index.js';
import { validatePeerAuthentication } from '../../src/policy/index.js';
import { paRaw } from '../helpers/builders.js';

type Expected = readonly (readonly [DiagnosticCode, Severity])[];

interface ValidationCase {
  readonly name: string;
  readonly spec: unknown;
  /** metadata.name; Istio's tests use `default` and `foo`. */
  readonly policyName?: string;
  /** Every diagnostic expected, in any order. */
  readonly diagnostics: Expected;
  /** Further checks of the validated object, for valid cases. */
  readonly value?: (v: PeerAuthentication) => void;
  /** Further checks of individual diagnostics. */
  readonly check?: (d: readonly Diagnostic[]) => void;
}

const LABEL_63 = 'a'.repeat(63);
const LABEL_64 = 'a'.repeat(64);
const FOO_BAR = { matchLabels: { foo: 'bar' } };

function only(d: readonly Diagnostic[], code: DiagnosticCode): Diagnostic {
  const found = d.filter((x) => x.code === code);
  assert.equal(found.length, 1, `exactly one ${code}`);
  return found[0]!;
}

function manyLabels(n: number): Record<string, string> {
  return Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v']));
}

const cases: readonly ValidationCase[] = [
  // TestValidatePeerAuthentication (name default or foo, namespace bar).
  {
    name: 'an empty spec is valid [empty spec]',
    spec: {},
    diagnostics: [],
    value: (v) => {
      assert.equal(v.selector, undefined);
      assert.equal(v.mode, undefined);
      assert.equal(v.portLevelMtls, undefined);
    },
  },
  { name: 'an absent spec is valid like an empty one', spec: undefined, diagnostics: [] },
  {
    name: 'selector: {} is valid with a warning that it has no labels [empty selector; partial-selector]',
    spec: { selector: {} },
    diagnostics: [['KMTLS_SELECTOR_NO_LABELS', 'warning']],
    value: (v) => assert.deepEqual(v.selector, { matchLabels: {} }),
    check: (d) => {
      const w = only(d, 'KMTLS_SELECTOR_NO_LABELS');
      assert.equal(w.istioCode, 'IST0133');
      assert.equal(w.field, 'spec.selector');
      assert.match(w.message, /workload selector specified without labels/);
    },
  },
  {
    name: 'matchLabels: {} is valid with the same no-labels warning',
    spec: { selector: { matchLabels: {} }, mtls: { mode: 'STRICT' } },
    diagnostics: [['KMTLS_SELECTOR_NO_LABELS', 'warning']],
    check: (d) => assert.equal(only(d, 'KMTLS_SELECTOR_NO_LABELS').istioCode, 'IST0133'),
  },
  {
    name: 'a name other than default is valid [non-default name]',
    policyName: 'foo',
    spec: { mtls: { mode: 'STRICT' } },
    diagnostics: [],
    value: (v) => assert.equal(v.meta.name, 'foo'),
  },
  {
    name: 'the name default with a selector is valid [default name with selector]',
    policyName: 'default',
    spec: { selector: { matchLabels: { app: 'httpbin' } }, mtls: { mode: 'STRICT' } },
    diagnostics: [],
    value: (v) => assert.deepEqual(v.selector, { matchLabels: { app: 'httpbin' } }),
  },
  {
    name: 'an empty portLevelMtls with a selector is invalid [empty port level mtls; empty-port-level]',
    spec: { selector: FOO_BAR, portLevelMtls: {} },
    diagnostics: [['KMTLS_PA_EMPTY_PORT_LEVEL', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_PA_EMPTY_PORT_LEVEL').field, 'spec.portLevelMtls'),
  },
  {
    name: 'portLevelMtls without a selector is invalid [port level mtls without selector; port-level-global]',
    spec: { portLevelMtls: { 80: { mode: 'STRICT' } } },
    diagnostics: [['KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR').field, 'spec.portLevelMtls'),
  },
  {
    name: 'port 0 without a selector is invalid twice over [port 0 without selector]',
    spec: { mtls: { mode: 'STRICT' }, portLevelMtls: { 0: { mode: 'DISABLE' } } },
    diagnostics: [
      ['KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR', 'error'],
      ['KMTLS_PA_PORT_RANGE', 'error'],
    ],
  },
  {
    name: 'mode UNSET is valid [unset mode]',
    spec: { mtls: { mode: 'UNSET' } },
    diagnostics: [],
    value: (v) => assert.equal(v.mode, 'UNSET'),
  },
  {
    name: 'portLevelMtls with a selector is valid [port level with selector; full]',
    spec: { selector: FOO_BAR, mtls: { mode: 'PERMISSIVE' }, portLevelMtls: { 80: { mode: 'STRICT' } } },
    diagnostics: [],
    value: (v) => {
      assert.equal(v.mode, 'PERMISSIVE');
      assert.deepEqual([...(v.portLevelMtls ?? [])], [[80, 'STRICT']]);
    },
  },

  // CRD schema: mtls.mode is an enum, case-sensitive.
  {
    name: 'an unknown mode is invalid [bad-mode: BLAH]',
    spec: { mtls: { mode: 'BLAH' } },
    diagnostics: [['KMTLS_PA_INVALID_MODE', 'error']],
  },
  {
    name: 'mode ENFORCED is invalid',
    spec: { mtls: { mode: 'ENFORCED' } },
    diagnostics: [['KMTLS_PA_INVALID_MODE', 'error']],
    check: (d) => {
      const e = only(d, 'KMTLS_PA_INVALID_MODE');
      assert.equal(e.field, 'spec.mtls.mode');
      assert.match(e.message, /"ENFORCED"/);
    },
  },
  {
    name: 'a lowercase mode is invalid, with a hint to write it in capitals',
    spec: { mtls: { mode: 'strict' } },
    diagnostics: [['KMTLS_PA_INVALID_MODE', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_PA_INVALID_MODE').hint, 'write STRICT'),
  },
  {
    name: 'a mixed-case mode is invalid',
    spec: { mtls: { mode: 'Permissive' } },
    diagnostics: [['KMTLS_PA_INVALID_MODE', 'error']],
  },
  {
    name: 'an empty mode string is invalid',
    spec: { mtls: { mode: '' } },
    diagnostics: [['KMTLS_PA_INVALID_MODE', 'error']],
  },
  {
    name: 'an unknown mode in a port entry is invalid',
    spec: { selector: FOO_BAR, portLevelMtls: { 8080: { mode: 'ENFORCED' } } },
    diagnostics: [['KMTLS_PA_INVALID_MODE', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_PA_INVALID_MODE').field, 'spec.portLevelMtls["8080"].mode'),
  },
  {
    name: 'a mode that is not a string is a type error',
    spec: { mtls: { mode: 3 } },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },
  {
    name: 'mtls: {} is valid and means UNSET',
    spec: { mtls: {} },
    diagnostics: [],
    value: (v) => assert.equal(v.mode, 'UNSET'),
  },
  {
    name: 'each of the four modes is valid',
    spec: {
      selector: FOO_BAR,
      mtls: { mode: 'DISABLE' },
      portLevelMtls: { 1: { mode: 'UNSET' }, 2: { mode: 'PERMISSIVE' }, 3: { mode: 'STRICT' } },
    },
    diagnostics: [],
    value: (v) => {
      assert.equal(v.mode, 'DISABLE');
      assert.deepEqual(
        [...(v.portLevelMtls ?? [])],
        [
          [1, 'UNSET'],
          [2, 'PERMISSIVE'],
          [3, 'STRICT'],
        ],
      );
    },
  },

  // CRD schema and webhook: portLevelMtls.
  {
    name: 'a non-numeric port key is invalid [bad-port]',
    spec: { selector: FOO_BAR, portLevelMtls: { acd: { mode: 'STRICT' } } },
    diagnostics: [['KMTLS_PA_PORT_NOT_NUMBER', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_PA_PORT_NOT_NUMBER').field, 'spec.portLevelMtls.acd'),
  },
  {
    name: 'a port name as key is invalid: keys are numbers',
    spec: { selector: FOO_BAR, portLevelMtls: { http: { mode: 'DISABLE' } } },
    diagnostics: [['KMTLS_PA_PORT_NOT_NUMBER', 'error']],
  },
  {
    name: 'port 0 is out of range [zero-port]',
    spec: { selector: FOO_BAR, portLevelMtls: { 0: { mode: 'STRICT' } } },
    diagnostics: [['KMTLS_PA_PORT_RANGE', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_PA_PORT_RANGE').field, 'spec.portLevelMtls["0"]'),
  },
  {
    name: 'port 42949672 is out of range [high-port]',
    spec: { selector: FOO_BAR, portLevelMtls: { 42949672: { mode: 'STRICT' } } },
    diagnostics: [['KMTLS_PA_PORT_RANGE', 'error']],
  },
  {
    name: 'port 65536 is out of range',
    spec: { selector: FOO_BAR, portLevelMtls: { 65536: { mode: 'STRICT' } } },
    diagnostics: [['KMTLS_PA_PORT_RANGE', 'error']],
  },
  {
    name: 'a negative port is out of range',
    spec: { selector: FOO_BAR, portLevelMtls: { '-1': { mode: 'STRICT' } } },
    diagnostics: [['KMTLS_PA_PORT_RANGE', 'error']],
  },
  {
    name: 'ports 1 and 65535 are in range',
    spec: { selector: FOO_BAR, portLevelMtls: { 1: { mode: 'STRICT' }, 65535: { mode: 'DISABLE' } } },
    diagnostics: [],
    value: (v) =>
      assert.deepEqual(
        [...(v.portLevelMtls ?? [])],
        [
          [1, 'STRICT'],
          [65535, 'DISABLE'],
        ],
      ),
  },
  {
    name: 'each bad port key is reported, and good ones beside them do not hide them',
    spec: {
      selector: FOO_BAR,
      portLevelMtls: { 0: { mode: 'STRICT' }, 8080: { mode: 'STRICT' }, 70000: {}, web: {} },
    },
    diagnostics: [
      ['KMTLS_PA_PORT_RANGE', 'error'],
      ['KMTLS_PA_PORT_RANGE', 'error'],
      ['KMTLS_PA_PORT_NOT_NUMBER', 'error'],
    ],
  },
  {
    name: 'an empty portLevelMtls without a selector breaks both the selector rule and minProperties',
    spec: { portLevelMtls: {} },
    diagnostics: [
      ['KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR', 'error'],
      ['KMTLS_PA_EMPTY_PORT_LEVEL', 'error'],
    ],
  },
  {
    name: 'portLevelMtls with selector: {} counts as without selector',
    spec: { selector: {}, portLevelMtls: { 8080: { mode: 'DISABLE' } } },
    diagnostics: [
      ['KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR', 'error'],
      ['KMTLS_SELECTOR_NO_LABELS', 'warning'],
    ],
  },
  {
    name: 'portLevelMtls with matchLabels: {} counts as without selector',
    spec: { selector: { matchLabels: {} }, portLevelMtls: { 8080: { mode: 'DISABLE' } } },
    diagnostics: [
      ['KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR', 'error'],
      ['KMTLS_SELECTOR_NO_LABELS', 'warning'],
    ],
  },
  {
    name: 'port entries {} and null are valid and mean UNSET',
    spec: { selector: FOO_BAR, portLevelMtls: { 90: {}, 100: null } },
    diagnostics: [],
    value: (v) =>
      assert.deepEqual(
        [...(v.portLevelMtls ?? [])],
        [
          [90, 'UNSET'],
          [100, 'UNSET'],
        ],
      ),
  },
  {
    name: 'a port entry that is a bare mode string is a type error',
    spec: { selector: FOO_BAR, portLevelMtls: { 8080: 'DISABLE' } },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },
  {
    name: 'portLevelMtls as a list is a type error',
    spec: { selector: FOO_BAR, portLevelMtls: [{ port: 8080, mode: 'DISABLE' }] },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },

  // Selector: CRD schema and validateWorkloadSelector.
  {
    name: 'an empty selector key is invalid',
    spec: { selector: { matchLabels: { '': 'bar' } } },
    diagnostics: [['KMTLS_SELECTOR_EMPTY_KEY', 'error']],
  },
  {
    name: 'a wildcard in a selector key is invalid',
    spec: { selector: { matchLabels: { 'app*': 'bar' } } },
    diagnostics: [['KMTLS_SELECTOR_WILDCARD', 'error']],
  },
  {
    name: 'a wildcard in a selector value is invalid',
    spec: { selector: { matchLabels: { app: '*' } } },
    diagnostics: [['KMTLS_SELECTOR_WILDCARD', 'error']],
  },
  {
    name: 'a wildcard inside a selector value is invalid',
    spec: { selector: { matchLabels: { app: 'foo-*' } } },
    diagnostics: [['KMTLS_SELECTOR_WILDCARD', 'error']],
  },
  {
    name: 'a selector value longer than 63 characters is invalid',
    spec: { selector: { matchLabels: { app: LABEL_64 } } },
    diagnostics: [['KMTLS_SELECTOR_VALUE_TOO_LONG', 'error']],
  },
  {
    name: 'a selector value of 63 characters is valid',
    spec: { selector: { matchLabels: { app: LABEL_63 } } },
    diagnostics: [],
  },
  {
    name: 'more than 4096 selector labels are invalid',
    spec: { selector: { matchLabels: manyLabels(4097) } },
    diagnostics: [['KMTLS_SELECTOR_TOO_MANY_LABELS', 'error']],
  },
  {
    name: '4096 selector labels are valid',
    spec: { selector: { matchLabels: manyLabels(4096) } },
    diagnostics: [],
  },
  {
    name: 'a numeric label value is a type error with a hint to quote it',
    spec: { selector: { matchLabels: { app: 'foo', version: 1 } } },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
    check: (d) => {
      const e = only(d, 'KMTLS_SCHEMA_TYPE');
      assert.equal(e.field, 'spec.selector.matchLabels.version');
      assert.equal(e.hint, 'quote it: "1"');
    },
  },
  {
    name: 'a boolean label value is a type error, not a selector without labels',
    spec: { selector: { matchLabels: { canary: true } } },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
    check: (d) => assert.equal(only(d, 'KMTLS_SCHEMA_TYPE').hint, 'quote it: "true"'),
  },
  {
    name: 'matchLabels: null is a selector without labels',
    spec: { selector: { matchLabels: null } },
    diagnostics: [['KMTLS_SELECTOR_NO_LABELS', 'warning']],
  },
  {
    name: 'matchLabels as a list is a type error, not a selector without labels',
    spec: { selector: { matchLabels: ['app=foo'] } },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },

  // Unknown fields: the API server prunes them, so a typo silently does nothing.
  {
    name: 'an unknown field mtls.mdoe is a warning with a did-you-mean hint, and the mode is UNSET',
    spec: { mtls: { mdoe: 'STRICT' } },
    diagnostics: [['KMTLS_SCHEMA_UNKNOWN_FIELD', 'warning']],
    value: (v) => assert.equal(v.mode, 'UNSET'),
    check: (d) => {
      const w = only(d, 'KMTLS_SCHEMA_UNKNOWN_FIELD');
      assert.equal(w.field, 'spec.mtls.mdoe');
      assert.equal(w.hint, 'did you mean "mode"?');
    },
  },
  {
    name: 'spec.portLevelMTLS is an unknown field with a hint to the right spelling',
    spec: { selector: FOO_BAR, portLevelMTLS: { 8080: { mode: 'DISABLE' } } },
    diagnostics: [['KMTLS_SCHEMA_UNKNOWN_FIELD', 'warning']],
    value: (v) => assert.equal(v.portLevelMtls, undefined),
    check: (d) => assert.equal(only(d, 'KMTLS_SCHEMA_UNKNOWN_FIELD').hint, 'did you mean "portLevelMtls"?'),
  },
  {
    name: 'selector.matchlabels is an unknown field with a hint, and the selector is then empty',
    spec: { selector: { matchlabels: { app: 'foo' } } },
    diagnostics: [
      ['KMTLS_SCHEMA_UNKNOWN_FIELD', 'warning'],
      ['KMTLS_SELECTOR_NO_LABELS', 'warning'],
    ],
    value: (v) => assert.deepEqual(v.selector, { matchLabels: {} }),
    check: (d) => assert.equal(only(d, 'KMTLS_SCHEMA_UNKNOWN_FIELD').hint, 'did you mean "matchLabels"?'),
  },
  {
    name: 'an unknown field in a port entry is a warning',
    spec: { selector: FOO_BAR, portLevelMtls: { 8080: { mdoe: 'DISABLE' } } },
    diagnostics: [['KMTLS_SCHEMA_UNKNOWN_FIELD', 'warning']],
    value: (v) => assert.deepEqual([...(v.portLevelMtls ?? [])], [[8080, 'UNSET']]),
  },
  {
    name: 'an unknown field unlike any known one has no hint',
    spec: { selector: FOO_BAR, targets: [{ name: 'x' }] },
    diagnostics: [['KMTLS_SCHEMA_UNKNOWN_FIELD', 'warning']],
    check: (d) => assert.equal(only(d, 'KMTLS_SCHEMA_UNKNOWN_FIELD').hint, undefined),
  },

  // Types of whole sections.
  {
    name: 'a spec that is a list is a type error',
    spec: [{ mtls: { mode: 'STRICT' } }],
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },
  {
    name: 'mtls given as a bare string is a type error',
    spec: { mtls: 'STRICT' },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },
  {
    name: 'a selector given as a string is a type error',
    spec: { selector: 'app=foo' },
    diagnostics: [['KMTLS_SCHEMA_TYPE', 'error']],
  },
];

function sortExpected(list: Expected): string[] {
  return list.map(([code, severity]) => `${code}:${severity}`).sort();
}

describe('validatePeerAuthentication', () => {
  for (const c of cases) {
    test(c.name, () => {
      const v = validatePeerAuthentication(paRaw('bar', c.policyName ?? 'default', c.spec));
      assert.deepEqual(
        v.diagnostics.map((d) => `${d.code}:${d.severity}`).sort(),
        sortExpected(c.diagnostics),
        v.diagnostics.map((d) => d.message).join('\n'),
      );
      const isInvalid = c.diagnostics.some(([, severity]) => severity === 'error');
      // The object survives exactly when nothing is an error.
      assert.equal(v.value === undefined, isInvalid);
      for (const d of v.diagnostics) {
        assert.deepEqual(d.objects, [
          {
            kind: 'PeerAuthentication',
            namespace: 'bar',
            name: c.policyName ?? 'default',
            location: { file: 'test.yaml', line: 1 },
          },
        ]);
        assert.deepEqual(d.location, { file: 'test.yaml', line: 1 });
      }
      if (v.value) c.value?.(v.value);
      else assert.equal(c.value, undefined, 'BUG: value checks on an invalid case');
      c.check?.(v.diagnostics);
    });
  }

  test('a valid object keeps apiVersion and metadata, v1beta1 included', () => {
    const raw = {
      ...paRaw('bar', 'default', { mtls: { mode: 'STRICT' } }, { created: '2024-01-01T00:00:00Z' }),
      apiVersion: 'security.istio.io/v1beta1',
    };
    const v = validatePeerAuthentication(raw);
    assert.ok(v.value);
    assert.equal(v.value.kind, 'PeerAuthentication');
    assert.equal(v.value.apiVersion, 'security.istio.io/v1beta1');
    assert.equal(v.value.meta, raw.meta);
    assert.equal(v.value.meta.createdAtMs, Date.parse('2024-01-01T00:00:00Z'));
  });

  test('diagnostics are placed where the locator finds the field', () => {
    const raw = {
      ...paRaw('bar', 'default', { mtls: { mode: 'ENFORCED' } }),
      locate: (path: readonly (string | number)[]) =>
        path.join('.') === 'spec.mtls.mode' ? { file: 'pa.yaml', line: 7, column: 11 } : undefined,
    };
    const [d] = validatePeerAuthentication(raw).diagnostics;
    assert.deepEqual(d?.location, { file: 'pa.yaml', line: 7, column: 11 });
  });

  test('neither the name nor the namespace is validated: a selector policy in the root namespace is valid', () => {
    const v = validatePeerAuthentication(
      paRaw('istio-system', 'anything-goes', {
        selector: { matchLabels: { app: 'foo' } },
        mtls: { mode: 'STRICT' },
      }),
    );
    assert.ok(v.value);
    assert.deepEqual(v.diagnostics, []);
  });
});
