/**
 * Effective inbound mTLS mode: Istio's `ComposePeerAuthentication` / `InboundMTLSSettings` /
 * `GetNamespaceMutualTLSMode` (reference/istio-mtls-semantics.md, section a). Case names taken from
 * Istio's tests say so in brackets.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type {
  ChainStep,
  IgnoreReason,
  InboundResolution,
  PeerAuthentication,
  RejectedPolicy,
  ResolvedMtlsMode,
  WorkloadLabels,
} from '../../src/policy/index.js';
import {
  chainForPort,
  DEFAULT_ROOT_NAMESPACE,
  indexPeerAuthentications,
  modeForPort,
  namespaceMtlsMode,
  refName,
  resolveInboundMtls,
  validatePeerAuthentication,
} from '../../src/policy/index.js';
import type { MetaOptions } from '../helpers/builders.js';
import { pa, paRaw } from '../helpers/builders.js';

const ROOT = 'istio-system';
const NS = 'my-ns';
const FOO: WorkloadLabels = { namespace: NS, labels: { app: 'foo' } };

/** `seconds` after a fixed instant, as a creationTimestamp. */
function at(seconds: number): MetaOptions {
  return { created: new Date(Date.UTC(2024, 0, 1, 12, 0, 0) + seconds * 1000).toISOString() };
}

const STRICT = { mtls: { mode: 'STRICT' } };
const PERMISSIVE = { mtls: { mode: 'PERMISSIVE' } };
const DISABLE = { mtls: { mode: 'DISABLE' } };
const UNSET = { mtls: { mode: 'UNSET' } };
const APP_FOO = { matchLabels: { app: 'foo' } };

function resolve(policies: readonly PeerAuthentication[], workload: WorkloadLabels = FOO, root = ROOT) {
  return resolveInboundMtls(indexPeerAuthentications(policies, root), workload);
}

function nameOf(policy: PeerAuthentication | undefined): string | undefined {
  return policy === undefined ? undefined : refName(policy.meta);
}

/** The chain without source locations, so a table can spell it out. */
function chainOf(steps: readonly ChainStep[]) {
  return steps.map((s) => ({
    level: s.level,
    policy: s.policy === undefined ? undefined : refName(s.policy),
    ...(s.port !== undefined ? { port: s.port } : {}),
    declared: s.declared,
    effect: s.effect,
    result: s.result,
  }));
}

function ignoredOf(r: InboundResolution) {
  return r.ignored.map((i) => ({
    policy: refName(i.policy),
    reason: i.reason,
    winner: i.winner === undefined ? undefined : refName(i.winner),
  }));
}

/** A PeerAuthentication the API server would refuse, shaped as `src/config` hands it to the index. */
function rejected(
  namespace: string,
  name: string,
  spec: {
    readonly selector?: { readonly matchLabels?: Record<string, string> };
    readonly [field: string]: unknown;
  },
): RejectedPolicy {
  const v = validatePeerAuthentication(paRaw(namespace, name, spec));
  assert.equal(v.value, undefined, `${namespace}/${name} should be invalid`);
  return {
    policy: { kind: 'PeerAuthentication', namespace, name },
    errors: v.diagnostics.filter((d) => d.severity === 'error').map((d) => d.message),
    selector: spec.selector?.matchLabels,
  };
}

interface ModeCase {
  readonly name: string;
  readonly policies: () => PeerAuthentication[];
  readonly workload?: WorkloadLabels;
  readonly root?: string;
  readonly mode: ResolvedMtlsMode;
  /** `namespace/name` of the policy chosen at each level; undefined when none. */
  readonly mesh?: string;
  readonly namespace?: string;
  readonly selected?: string;
}

const modeCases: readonly ModeCase[] = [
  // Summary table and TestComposePeerAuthentication / TestInboundMTLSSettings.
  {
    name: 'no policy at all is PERMISSIVE [no config; No policy - behave as permissive]',
    policies: () => [],
    mode: 'PERMISSIVE',
  },
  {
    name: 'a mesh policy alone decides [mesh only]',
    policies: () => [pa(ROOT, 'default', STRICT)],
    mode: 'STRICT',
    mesh: 'istio-system/default',
  },
  {
    name: 'a mesh policy with mode UNSET is PERMISSIVE [inheritance: default mesh]',
    policies: () => [pa(ROOT, 'default', UNSET)],
    mode: 'PERMISSIVE',
    mesh: 'istio-system/default',
  },
  {
    name: 'a mesh policy without mtls is PERMISSIVE',
    policies: () => [pa(ROOT, 'default', {})],
    mode: 'PERMISSIVE',
    mesh: 'istio-system/default',
  },
  {
    name: 'a mesh policy with mtls: {} is PERMISSIVE',
    policies: () => [pa(ROOT, 'default', { mtls: {} })],
    mode: 'PERMISSIVE',
    mesh: 'istio-system/default',
  },
  {
    name: 'a mesh policy may have any name, not only default [ep_filters_test mtls-off-global]',
    policies: () => [pa(ROOT, 'mtls-off', DISABLE)],
    mode: 'DISABLE',
    mesh: 'istio-system/mtls-off',
  },
  {
    name: 'a namespace policy overrides the mesh policy [mesh vs namespace]',
    policies: () => [
      pa(ROOT, 'default', { selector: { matchLabels: {} }, ...STRICT }),
      pa(NS, 'default', PERMISSIVE),
    ],
    mode: 'PERMISSIVE',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
  },
  {
    name: 'a namespace policy with mode UNSET inherits the mesh mode',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'default', UNSET)],
    mode: 'STRICT',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
  },
  {
    name: 'a namespace policy without mtls inherits the mesh mode',
    policies: () => [pa(ROOT, 'default', DISABLE), pa(NS, 'default', {})],
    mode: 'DISABLE',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
  },
  {
    name: 'a namespace policy with mode UNSET and no mesh policy is PERMISSIVE',
    policies: () => [pa(NS, 'default', UNSET)],
    mode: 'PERMISSIVE',
    namespace: 'my-ns/default',
  },
  {
    name: 'a namespace DISABLE policy alone decides [Single policy - disable mode]',
    policies: () => [pa(NS, 'p', DISABLE)],
    mode: 'DISABLE',
    namespace: 'my-ns/p',
  },
  {
    name: 'a namespace PERMISSIVE policy alone decides [Single policy - permissive mode]',
    policies: () => [pa(NS, 'p', PERMISSIVE)],
    mode: 'PERMISSIVE',
    namespace: 'my-ns/p',
  },
  {
    name: 'a namespace STRICT policy alone decides [Single policy - strict mode]',
    policies: () => [pa(NS, 'p', STRICT)],
    mode: 'STRICT',
    namespace: 'my-ns/p',
  },
  {
    name: 'a namespace policy beats a mesh policy whatever their modes [workload vs mesh config]',
    policies: () => [pa(NS, 'default', PERMISSIVE), pa(ROOT, 'default', DISABLE)],
    mode: 'PERMISSIVE',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
  },
  {
    name: 'a workload policy without mtls under an empty namespace policy is PERMISSIVE [workload vs namespace config]',
    policies: () => [pa(NS, 'default', {}), pa(NS, 'foo', { selector: APP_FOO })],
    mode: 'PERMISSIVE',
    namespace: 'my-ns/default',
    selected: 'my-ns/foo',
  },
  {
    name: 'a workload policy without mtls inherits the mesh mode [inheritance: mesh to workload]',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'foo', { selector: APP_FOO })],
    mode: 'STRICT',
    mesh: 'istio-system/default',
    selected: 'my-ns/foo',
  },
  {
    name: 'a workload policy without mtls inherits the namespace mode [inheritance: namespace to workload]',
    policies: () => [pa(NS, 'default', STRICT), pa(NS, 'foo', { selector: APP_FOO })],
    mode: 'STRICT',
    namespace: 'my-ns/default',
    selected: 'my-ns/foo',
  },
  {
    name: 'UNSET passes the mesh mode through namespace and workload [inheritance: mesh to namespace to workload]',
    policies: () => [
      pa(ROOT, 'default', STRICT),
      pa(NS, 'default', UNSET),
      pa(NS, 'foo', { selector: APP_FOO }),
    ],
    mode: 'STRICT',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
    selected: 'my-ns/foo',
  },
  {
    name: 'a workload policy with mode UNSET inherits the namespace mode',
    policies: () => [
      pa(ROOT, 'default', STRICT),
      pa(NS, 'default', DISABLE),
      pa(NS, 'foo', { selector: APP_FOO, ...UNSET }),
    ],
    mode: 'DISABLE',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
    selected: 'my-ns/foo',
  },
  {
    name: 'a workload policy without mtls and no other policy is PERMISSIVE',
    policies: () => [pa(NS, 'foo', { selector: APP_FOO })],
    mode: 'PERMISSIVE',
    selected: 'my-ns/foo',
  },
  {
    name: 'the narrowest non-UNSET level wins: workload over namespace over mesh',
    policies: () => [
      pa(ROOT, 'default', PERMISSIVE),
      pa(NS, 'default', DISABLE),
      pa(NS, 'foo', { selector: APP_FOO, ...STRICT }),
    ],
    mode: 'STRICT',
    mesh: 'istio-system/default',
    namespace: 'my-ns/default',
    selected: 'my-ns/foo',
  },
  {
    name: 'a workload DISABLE policy overrides a STRICT mesh',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'foo', { selector: APP_FOO, ...DISABLE })],
    mode: 'DISABLE',
    mesh: 'istio-system/default',
    selected: 'my-ns/foo',
  },

  // Several policies at one level: oldest wins, then the name.
  {
    name: 'several mesh policies: the oldest wins, equal timestamps go to the first name [multiple mesh policy]',
    policies: () => [
      pa(ROOT, 'now', DISABLE, at(0)),
      pa(ROOT, 'second ago', PERMISSIVE, at(-1)),
      pa(ROOT, 'second later', STRICT, at(-1)),
    ],
    mode: 'PERMISSIVE',
    mesh: 'istio-system/second ago',
  },
  {
    name: 'several namespace policies: the oldest wins, equal timestamps go to the first name [multiple namespace policy]',
    policies: () => [
      pa(NS, 'now', DISABLE, at(0)),
      pa(NS, 'second ago', PERMISSIVE, at(-1)),
      pa(NS, 'second later', STRICT, at(-1)),
    ],
    mode: 'PERMISSIVE',
    namespace: 'my-ns/second ago',
  },
  {
    name: 'several matching workload policies: the oldest wins, equal timestamps go to the first name [multiple workload policy]',
    policies: () => [
      pa(NS, 'now', { selector: APP_FOO, ...DISABLE }, at(0)),
      pa(NS, 'second ago', { selector: APP_FOO, ...PERMISSIVE }, at(-1)),
      pa(NS, 'second later', { selector: { matchLabels: { stage: 'prod' } }, ...STRICT }, at(-1)),
    ],
    workload: { namespace: NS, labels: { app: 'foo', stage: 'prod' } },
    mode: 'PERMISSIVE',
    selected: 'my-ns/second ago',
  },
  {
    name: 'the older of two workload policies wins even when listed second [Multiple policies resolved to STRICT]',
    policies: () => [
      pa(NS, 'later', { selector: APP_FOO, ...DISABLE }, at(1)),
      pa(NS, 'now', { selector: APP_FOO, ...STRICT }, at(0)),
    ],
    mode: 'STRICT',
    selected: 'my-ns/now',
  },
  {
    name: 'the older of two workload policies wins even when its name sorts last [Multiple policies resolved to PERMISSIVE]',
    policies: () => [
      pa(NS, 'now', { selector: APP_FOO, ...DISABLE }, at(0)),
      pa(NS, 'earlier', { selector: APP_FOO, ...PERMISSIVE }, at(-1)),
    ],
    mode: 'PERMISSIVE',
    selected: 'my-ns/earlier',
  },
  {
    name: 'the older namespace policy wins even when its name sorts last',
    policies: () => [pa(NS, 'a-new', STRICT, at(10)), pa(NS, 'z-old', DISABLE, at(0))],
    mode: 'DISABLE',
    namespace: 'my-ns/z-old',
  },
  {
    name: 'timestamps in the same second are a tie, broken by name (creationTimestamp has one-second resolution)',
    policies: () => [
      pa(ROOT, 'b', STRICT, { created: '2024-01-01T12:00:00.100Z' }),
      pa(ROOT, 'a', DISABLE, { created: '2024-01-01T12:00:00.900Z' }),
    ],
    mode: 'DISABLE',
    mesh: 'istio-system/a',
  },
  {
    name: 'a policy without creationTimestamp is newer than one with a timestamp, whatever the names',
    policies: () => [pa(ROOT, 'a', STRICT), pa(ROOT, 'z', DISABLE, at(0))],
    mode: 'DISABLE',
    mesh: 'istio-system/z',
  },
  {
    name: 'namespace policies without creationTimestamp are ordered by name',
    policies: () => [pa(NS, 'b', STRICT), pa(NS, 'a', DISABLE)],
    mode: 'DISABLE',
    namespace: 'my-ns/a',
  },
  {
    name: 'workload policies without creationTimestamp come after timestamped ones, then by name',
    policies: () => [
      pa(NS, 'a', { selector: APP_FOO, ...STRICT }),
      pa(NS, 'c', { selector: APP_FOO, ...DISABLE }, at(5)),
      pa(NS, 'b', { selector: APP_FOO, ...PERMISSIVE }),
    ],
    mode: 'DISABLE',
    selected: 'my-ns/c',
  },

  // Root namespace.
  {
    name: 'a selector policy in the root namespace is ignored [ignore non-emptypb selector in root namespace]',
    policies: () => [pa(ROOT, 'default', { selector: APP_FOO, ...STRICT })],
    mode: 'PERMISSIVE',
  },
  {
    name: 'a selector policy in the root namespace is ignored even for a workload in the root namespace',
    policies: () => [
      pa(ROOT, 'mesh', DISABLE, at(0)),
      pa(ROOT, 'foo', { selector: APP_FOO, ...STRICT }, at(1)),
    ],
    workload: { namespace: ROOT, labels: { app: 'foo' } },
    mode: 'DISABLE',
    mesh: 'istio-system/mesh',
  },
  {
    name: 'a workload in the root namespace gets the mesh policy and no namespace policy',
    policies: () => [pa(ROOT, 'default', STRICT)],
    workload: { namespace: ROOT, labels: { app: 'istiod' } },
    mode: 'STRICT',
    mesh: 'istio-system/default',
  },
  {
    name: 'selector: {} in the root namespace is mesh-wide',
    policies: () => [pa(ROOT, 'any-name', { selector: {}, ...STRICT })],
    mode: 'STRICT',
    mesh: 'istio-system/any-name',
  },
  {
    name: 'matchLabels: {} in the root namespace is mesh-wide',
    policies: () => [pa(ROOT, 'default', { selector: { matchLabels: {} }, ...DISABLE })],
    mode: 'DISABLE',
    mesh: 'istio-system/default',
  },
  {
    name: 'a custom root namespace holds the mesh policy',
    policies: () => [pa('mesh-root', 'default', STRICT)],
    root: 'mesh-root',
    mode: 'STRICT',
    mesh: 'mesh-root/default',
  },
  {
    name: 'with a custom root namespace, a policy in istio-system is only that namespace’s policy',
    policies: () => [pa(ROOT, 'default', STRICT)],
    root: 'mesh-root',
    mode: 'PERMISSIVE',
  },
  {
    name: 'with a custom root namespace, istio-system is an ordinary namespace whose selector policies apply',
    policies: () => [pa('mesh-root', 'default', DISABLE), pa(ROOT, 'foo', { selector: APP_FOO, ...STRICT })],
    root: 'mesh-root',
    workload: { namespace: ROOT, labels: { app: 'foo' } },
    mode: 'STRICT',
    mesh: 'mesh-root/default',
    selected: 'istio-system/foo',
  },
  {
    name: 'a selector policy in a custom root namespace is ignored',
    policies: () => [pa('mesh-root', 'foo', { selector: APP_FOO, ...STRICT })],
    root: 'mesh-root',
    mode: 'PERMISSIVE',
  },

  // Selectors.
  {
    name: 'selector: {} in a namespace is namespace-wide',
    policies: () => [pa(ROOT, 'default', DISABLE), pa(NS, 'p', { selector: {}, ...STRICT })],
    mode: 'STRICT',
    mesh: 'istio-system/default',
    namespace: 'my-ns/p',
  },
  {
    name: 'matchLabels: {} in a namespace is namespace-wide and applies to a workload without labels',
    policies: () => [pa(NS, 'p', { selector: { matchLabels: {} }, ...STRICT })],
    workload: { namespace: NS, labels: {} },
    mode: 'STRICT',
    namespace: 'my-ns/p',
  },
  {
    name: 'selector: {} competes with a namespace policy without selector, and the older one wins',
    policies: () => [
      pa(NS, 'default', STRICT, at(1)),
      pa(NS, 'empty-selector', { selector: {}, ...DISABLE }, at(0)),
    ],
    mode: 'DISABLE',
    namespace: 'my-ns/empty-selector',
  },
  {
    name: 'a non-empty selector never matches a workload without labels',
    policies: () => [pa(NS, 'default', PERMISSIVE), pa(NS, 'foo', { selector: APP_FOO, ...STRICT })],
    workload: { namespace: NS, labels: {} },
    mode: 'PERMISSIVE',
    namespace: 'my-ns/default',
  },
  {
    name: 'a selector matches a workload whose labels are a superset',
    policies: () => [pa(NS, 'foo', { selector: APP_FOO, ...STRICT })],
    workload: { namespace: NS, labels: { app: 'foo', version: 'v1' } },
    mode: 'STRICT',
    selected: 'my-ns/foo',
  },
  {
    name: 'a selector with a label the workload lacks does not match',
    policies: () => [
      pa(NS, 'foo-v2', { selector: { matchLabels: { app: 'foo', version: 'v2' } }, ...STRICT }),
    ],
    workload: { namespace: NS, labels: { app: 'foo', version: 'v1' } },
    mode: 'PERMISSIVE',
  },
  {
    name: 'a selector matches label values exactly, case included',
    policies: () => [pa(NS, 'foo', { selector: { matchLabels: { app: 'Foo' } }, ...STRICT })],
    mode: 'PERMISSIVE',
  },
  {
    name: 'policies in another namespace never apply, even with a matching selector',
    policies: () => [pa('other', 'default', STRICT), pa('other', 'foo', { selector: APP_FOO, ...DISABLE })],
    mode: 'PERMISSIVE',
  },
];

describe('resolveInboundMtls: workload mode and the policies chosen', () => {
  for (const c of modeCases) {
    test(c.name, () => {
      const r = resolve(c.policies(), c.workload ?? FOO, c.root ?? ROOT);
      assert.deepEqual(
        {
          mode: r.workloadMode,
          mesh: nameOf(r.meshPolicy),
          namespace: nameOf(r.namespacePolicy),
          selected: nameOf(r.workloadPolicy),
        },
        { mode: c.mode, mesh: c.mesh, namespace: c.namespace, selected: c.selected },
      );
      // Without port entries every port takes the workload mode.
      if (r.portLevel.size === 0) assert.equal(modeForPort(r, 8080).mode, c.mode);
    });
  }

  test('the root namespace defaults to istio-system', () => {
    assert.equal(DEFAULT_ROOT_NAMESPACE, 'istio-system');
    const index = indexPeerAuthentications([pa('istio-system', 'default', STRICT)]);
    assert.equal(index.rootNamespace, 'istio-system');
    assert.equal(resolveInboundMtls(index, FOO).workloadMode, 'STRICT');
  });

  test('the input order of policies does not change the result', () => {
    const policies = [
      pa(ROOT, 'm2', DISABLE, at(2)),
      pa(ROOT, 'm1', STRICT, at(1)),
      pa(NS, 'n2', DISABLE, at(2)),
      pa(NS, 'n1', UNSET, at(1)),
      pa(NS, 'w2', { selector: APP_FOO, ...PERMISSIVE }, at(2)),
      pa(NS, 'w1', { selector: APP_FOO, portLevelMtls: { 8080: { mode: 'DISABLE' } } }, at(1)),
    ];
    const forward = resolve(policies);
    const backward = resolve([...policies].reverse());
    for (const r of [forward, backward]) {
      assert.equal(r.workloadMode, 'STRICT');
      assert.deepEqual(
        [nameOf(r.meshPolicy), nameOf(r.namespacePolicy), nameOf(r.workloadPolicy)],
        ['istio-system/m1', 'my-ns/n1', 'my-ns/w1'],
      );
      assert.equal(modeForPort(r, 8080).mode, 'DISABLE');
    }
  });
});

interface PortCase {
  readonly name: string;
  readonly policies: () => PeerAuthentication[];
  readonly workload?: WorkloadLabels;
  readonly workloadMode: ResolvedMtlsMode;
  /** Expected `modeForPort` for each port asked. */
  readonly ports: Readonly<
    Record<number, { mode: ResolvedMtlsMode; decidedBy: 'port' | 'workload'; declared?: string }>
  >;
}

const portCases: readonly PortCase[] = [
  {
    name: 'port entries UNSET and {} take the workload’s resolved mode [port level: 90 UNSET and 100 {} → STRICT]',
    policies: () => [
      pa(ROOT, 'default', STRICT),
      pa(NS, 'foo', {
        selector: APP_FOO,
        portLevelMtls: { 80: { mode: 'DISABLE' }, 90: { mode: 'UNSET' }, 100: {} },
      }),
    ],
    workloadMode: 'STRICT',
    ports: {
      80: { mode: 'DISABLE', decidedBy: 'port', declared: 'DISABLE' },
      90: { mode: 'STRICT', decidedBy: 'port', declared: 'UNSET' },
      100: { mode: 'STRICT', decidedBy: 'port', declared: 'UNSET' },
      8080: { mode: 'STRICT', decidedBy: 'workload' },
    },
  },
  {
    name: 'a port entry overrides the workload policy’s own mode [Port level hit]',
    policies: () => [
      pa(NS, 'foo', { selector: APP_FOO, ...DISABLE, portLevelMtls: { 8080: { mode: 'STRICT' } } }),
    ],
    workloadMode: 'DISABLE',
    ports: {
      8080: { mode: 'STRICT', decidedBy: 'port', declared: 'STRICT' },
      9090: { mode: 'DISABLE', decidedBy: 'workload' },
    },
  },
  {
    name: 'a port not listed takes the workload mode [Port level miss]',
    policies: () => [pa(NS, 'foo', { selector: APP_FOO, portLevelMtls: { 7070: { mode: 'STRICT' } } })],
    workloadMode: 'PERMISSIVE',
    ports: {
      8080: { mode: 'PERMISSIVE', decidedBy: 'workload' },
      7070: { mode: 'STRICT', decidedBy: 'port', declared: 'STRICT' },
    },
  },
  {
    name: 'a port entry UNSET inherits a mode the workload itself inherited from the namespace',
    policies: () => [
      pa(ROOT, 'default', STRICT),
      pa(NS, 'default', DISABLE),
      pa(NS, 'foo', {
        selector: APP_FOO,
        portLevelMtls: { 8080: { mode: 'UNSET' }, 9090: { mode: 'PERMISSIVE' } },
      }),
    ],
    workloadMode: 'DISABLE',
    ports: {
      8080: { mode: 'DISABLE', decidedBy: 'port', declared: 'UNSET' },
      9090: { mode: 'PERMISSIVE', decidedBy: 'port', declared: 'PERMISSIVE' },
    },
  },
  {
    name: 'a port entry with no value (8080: null) is UNSET and inherits',
    policies: () => [
      pa(NS, 'foo', {
        selector: APP_FOO,
        ...STRICT,
        portLevelMtls: { 8080: null, 9090: { mode: 'DISABLE' } },
      }),
    ],
    workloadMode: 'STRICT',
    ports: {
      8080: { mode: 'STRICT', decidedBy: 'port', declared: 'UNSET' },
      9090: { mode: 'DISABLE', decidedBy: 'port', declared: 'DISABLE' },
    },
  },
  {
    name: 'port entries are read only from the chosen workload policy, not from an older-losing one',
    policies: () => [
      pa(NS, 'old', { selector: APP_FOO, ...STRICT }, at(0)),
      pa(NS, 'new', { selector: APP_FOO, ...STRICT, portLevelMtls: { 8080: { mode: 'DISABLE' } } }, at(1)),
    ],
    workloadMode: 'STRICT',
    ports: { 8080: { mode: 'STRICT', decidedBy: 'workload' } },
  },
  {
    name: 'port entries of a workload policy whose selector does not match do not apply',
    policies: () => [
      pa(NS, 'bar', {
        selector: { matchLabels: { app: 'bar' } },
        portLevelMtls: { 8080: { mode: 'DISABLE' } },
      }),
      pa(NS, 'default', STRICT),
    ],
    workloadMode: 'STRICT',
    ports: { 8080: { mode: 'STRICT', decidedBy: 'workload' } },
  },
  {
    name: 'port entries of a selector policy in the root namespace do not apply',
    policies: () => [
      pa(ROOT, 'default', STRICT),
      pa(ROOT, 'foo', { selector: APP_FOO, portLevelMtls: { 8080: { mode: 'DISABLE' } } }),
    ],
    workloadMode: 'STRICT',
    ports: { 8080: { mode: 'STRICT', decidedBy: 'workload' } },
  },
  {
    name: 'a port entry keyed by the container port is found by the container port, not the Service port',
    policies: () => [
      pa(NS, 'foo', { selector: APP_FOO, ...STRICT, portLevelMtls: { 8080: { mode: 'DISABLE' } } }),
    ],
    workloadMode: 'STRICT',
    ports: {
      8080: { mode: 'DISABLE', decidedBy: 'port', declared: 'DISABLE' },
      80: { mode: 'STRICT', decidedBy: 'workload' },
    },
  },
];

describe('modeForPort: portLevelMtls of the workload policy', () => {
  for (const c of portCases) {
    test(c.name, () => {
      const r = resolve(c.policies(), c.workload ?? FOO);
      assert.equal(r.workloadMode, c.workloadMode);
      for (const [port, expected] of Object.entries(c.ports)) {
        assert.deepEqual(modeForPort(r, Number(port)), { port: Number(port), ...expected }, `port ${port}`);
      }
    });
  }

  test('portLevel lists exactly the chosen policy’s entries, resolved', () => {
    const r = resolve([
      pa(ROOT, 'default', STRICT),
      pa(NS, 'foo', {
        selector: APP_FOO,
        portLevelMtls: { 80: { mode: 'DISABLE' }, 90: { mode: 'UNSET' }, 100: {} },
      }),
    ]);
    assert.deepEqual(
      [...r.portLevel.values()].sort((a, b) => a.port - b.port),
      [
        { port: 80, mode: 'DISABLE', decidedBy: 'port', declared: 'DISABLE' },
        { port: 90, mode: 'STRICT', decidedBy: 'port', declared: 'UNSET' },
        { port: 100, mode: 'STRICT', decidedBy: 'port', declared: 'UNSET' },
      ],
    );
  });

  test('without a workload policy there are no port entries', () => {
    assert.equal(resolve([pa(ROOT, 'default', STRICT), pa(NS, 'default', DISABLE)]).portLevel.size, 0);
  });
});

interface ChainCase {
  readonly name: string;
  readonly policies: () => PeerAuthentication[];
  readonly workload?: WorkloadLabels;
  readonly port: number;
  readonly chain: readonly ReturnType<typeof chainOf>[number][];
}

const DEFAULT_STEP = {
  level: 'default',
  policy: undefined,
  declared: undefined,
  effect: 'sets',
  result: 'PERMISSIVE',
} as const;

const chainCases: readonly ChainCase[] = [
  {
    name: 'with no policy every level says none and the default PERMISSIVE stands',
    policies: () => [],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'namespace', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'workload', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
    ],
  },
  {
    name: 'a level that says UNSET or has no mtls inherits; a level with a mode sets it',
    policies: () => [
      pa(ROOT, 'default', STRICT),
      pa(NS, 'default', UNSET),
      pa(NS, 'foo', { selector: APP_FOO }),
    ],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: 'istio-system/default', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
      {
        level: 'namespace',
        policy: 'my-ns/default',
        declared: 'UNSET',
        effect: 'inherits',
        result: 'STRICT',
      },
      { level: 'workload', policy: 'my-ns/foo', declared: undefined, effect: 'inherits', result: 'STRICT' },
    ],
  },
  {
    name: 'a mesh policy with mode UNSET inherits the default, and later levels set',
    policies: () => [pa(ROOT, 'default', UNSET), pa(NS, 'foo', { selector: APP_FOO, ...DISABLE })],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      {
        level: 'mesh',
        policy: 'istio-system/default',
        declared: 'UNSET',
        effect: 'inherits',
        result: 'PERMISSIVE',
      },
      { level: 'namespace', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'workload', policy: 'my-ns/foo', declared: 'DISABLE', effect: 'sets', result: 'DISABLE' },
    ],
  },
  {
    name: 'a level that sets the same mode as its parent still says sets',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'default', STRICT)],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: 'istio-system/default', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
      { level: 'namespace', policy: 'my-ns/default', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
      { level: 'workload', policy: undefined, declared: undefined, effect: 'none', result: 'STRICT' },
    ],
  },
  {
    name: 'a port with its own entry adds a port step that sets the mode',
    policies: () => [
      pa(NS, 'default', STRICT),
      pa(NS, 'foo', { selector: APP_FOO, portLevelMtls: { 8080: { mode: 'DISABLE' } } }),
    ],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'namespace', policy: 'my-ns/default', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
      { level: 'workload', policy: 'my-ns/foo', declared: undefined, effect: 'inherits', result: 'STRICT' },
      {
        level: 'port',
        policy: 'my-ns/foo',
        port: 8080,
        declared: 'DISABLE',
        effect: 'sets',
        result: 'DISABLE',
      },
    ],
  },
  {
    name: 'a port entry UNSET adds a port step that inherits the workload mode',
    policies: () => [pa(NS, 'foo', { selector: APP_FOO, ...STRICT, portLevelMtls: { 9000: {} } })],
    port: 9000,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'namespace', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'workload', policy: 'my-ns/foo', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
      {
        level: 'port',
        policy: 'my-ns/foo',
        port: 9000,
        declared: 'UNSET',
        effect: 'inherits',
        result: 'STRICT',
      },
    ],
  },
  {
    name: 'a port without an entry has no port step',
    policies: () => [
      pa(NS, 'foo', { selector: APP_FOO, ...STRICT, portLevelMtls: { 9000: { mode: 'DISABLE' } } }),
    ],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'namespace', policy: undefined, declared: undefined, effect: 'none', result: 'PERMISSIVE' },
      { level: 'workload', policy: 'my-ns/foo', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
    ],
  },
  {
    name: 'the chain names only the winners when several policies compete at each level',
    policies: () => [
      pa(ROOT, 'old', DISABLE, at(0)),
      pa(ROOT, 'new', STRICT, at(1)),
      pa(NS, 'old', UNSET, at(0)),
      pa(NS, 'new', STRICT, at(1)),
      pa(NS, 'w-old', { selector: APP_FOO, ...PERMISSIVE }, at(0)),
      pa(NS, 'w-new', { selector: APP_FOO, ...STRICT }, at(1)),
    ],
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: 'istio-system/old', declared: 'DISABLE', effect: 'sets', result: 'DISABLE' },
      { level: 'namespace', policy: 'my-ns/old', declared: 'UNSET', effect: 'inherits', result: 'DISABLE' },
      {
        level: 'workload',
        policy: 'my-ns/w-old',
        declared: 'PERMISSIVE',
        effect: 'sets',
        result: 'PERMISSIVE',
      },
    ],
  },
  {
    name: 'for a workload in the root namespace the namespace level is empty and root selector policies are absent',
    policies: () => [pa(ROOT, 'default', STRICT), pa(ROOT, 'foo', { selector: APP_FOO, ...DISABLE })],
    workload: { namespace: ROOT, labels: { app: 'foo' } },
    port: 8080,
    chain: [
      DEFAULT_STEP,
      { level: 'mesh', policy: 'istio-system/default', declared: 'STRICT', effect: 'sets', result: 'STRICT' },
      { level: 'namespace', policy: undefined, declared: undefined, effect: 'none', result: 'STRICT' },
      { level: 'workload', policy: undefined, declared: undefined, effect: 'none', result: 'STRICT' },
    ],
  },
];

describe('chainForPort: the decision chain', () => {
  for (const c of chainCases) {
    test(c.name, () => {
      const r = resolve(c.policies(), c.workload ?? FOO);
      const chain = chainForPort(r, c.port);
      assert.deepEqual(chainOf(chain), c.chain);
      // The chain ends where the answer is.
      assert.equal(chain.at(-1)?.result, modeForPort(r, c.port).mode);
      // The workload chain is the port chain without its port step.
      assert.deepEqual(
        chainOf(r.chain),
        c.chain.filter((s) => s.level !== 'port'),
      );
    });
  }

  test('chain steps carry the deciding policy with its source location', () => {
    const r = resolve([pa(ROOT, 'default', STRICT)]);
    assert.deepEqual(r.chain[1]?.policy, {
      kind: 'PeerAuthentication',
      namespace: 'istio-system',
      name: 'default',
      location: { file: 'test.yaml', line: 1 },
    });
  });
});

interface IgnoredCase {
  readonly name: string;
  readonly policies: () => PeerAuthentication[];
  readonly rejected?: () => RejectedPolicy[];
  readonly workload?: WorkloadLabels;
  readonly root?: string;
  readonly ignored: readonly { policy: string; reason: IgnoreReason; winner: string | undefined }[];
  readonly notMatching?: readonly { policy: string; selector: string }[];
}

const ignoredCases: readonly IgnoredCase[] = [
  {
    name: 'a single policy per level ignores nothing',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'default', STRICT)],
    ignored: [],
  },
  {
    name: 'newer mesh policies are reported with the older one as winner',
    policies: () => [pa(ROOT, 'b', STRICT, at(0)), pa(ROOT, 'a', DISABLE, at(1)), pa(ROOT, 'c', PERMISSIVE)],
    ignored: [
      { policy: 'istio-system/a', reason: 'NEWER_MESH_POLICY', winner: 'istio-system/b' },
      { policy: 'istio-system/c', reason: 'NEWER_MESH_POLICY', winner: 'istio-system/b' },
    ],
  },
  {
    name: 'newer mesh policies are reported for workloads in the root namespace too',
    policies: () => [pa(ROOT, 'a', STRICT), pa(ROOT, 'b', DISABLE)],
    workload: { namespace: ROOT, labels: {} },
    ignored: [{ policy: 'istio-system/b', reason: 'NEWER_MESH_POLICY', winner: 'istio-system/a' }],
  },
  {
    name: 'newer namespace policies are reported, including selector: {} ones',
    policies: () => [pa(NS, 'default', STRICT, at(0)), pa(NS, 'also', { selector: {}, ...DISABLE }, at(1))],
    ignored: [{ policy: 'my-ns/also', reason: 'NEWER_NAMESPACE_POLICY', winner: 'my-ns/default' }],
  },
  {
    name: 'newer namespace policies of another namespace are not reported',
    policies: () => [pa('other', 'a', STRICT), pa('other', 'b', DISABLE)],
    ignored: [],
  },
  {
    name: 'newer matching workload policies are reported with the winner [multiple workload policy]',
    policies: () => [
      pa(NS, 'now', { selector: APP_FOO, ...DISABLE }, at(0)),
      pa(NS, 'second ago', { selector: APP_FOO, ...PERMISSIVE }, at(-1)),
      pa(NS, 'second later', { selector: { matchLabels: { stage: 'prod' } }, ...STRICT }, at(-1)),
    ],
    workload: { namespace: NS, labels: { app: 'foo', stage: 'prod' } },
    ignored: [
      { policy: 'my-ns/second later', reason: 'NEWER_WORKLOAD_POLICY', winner: 'my-ns/second ago' },
      { policy: 'my-ns/now', reason: 'NEWER_WORKLOAD_POLICY', winner: 'my-ns/second ago' },
    ],
  },
  {
    name: 'workload policies that do not match are listed as not matching, not as ignored',
    policies: () => [
      pa(NS, 'foo', { selector: APP_FOO, ...STRICT }),
      pa(NS, 'bar', { selector: { matchLabels: { app: 'bar', tier: 'db' } }, ...DISABLE }),
    ],
    ignored: [],
    notMatching: [{ policy: 'my-ns/bar', selector: 'app=bar,tier=db' }],
  },
  {
    name: 'a workload without labels is matched by no selector policy of its namespace',
    policies: () => [pa(NS, 'foo', { selector: APP_FOO, ...STRICT })],
    workload: { namespace: NS, labels: {} },
    ignored: [],
    notMatching: [{ policy: 'my-ns/foo', selector: 'app=foo' }],
  },
  {
    name: 'a matching selector policy in the root namespace is reported as SELECTOR_IN_ROOT_NAMESPACE',
    policies: () => [pa(ROOT, 'foo', { selector: APP_FOO, ...STRICT })],
    ignored: [{ policy: 'istio-system/foo', reason: 'SELECTOR_IN_ROOT_NAMESPACE', winner: undefined }],
  },
  {
    name: 'a matching selector policy in the root namespace is reported for a workload in the root namespace',
    policies: () => [pa(ROOT, 'foo', { selector: APP_FOO, ...STRICT })],
    workload: { namespace: ROOT, labels: { app: 'foo' } },
    ignored: [{ policy: 'istio-system/foo', reason: 'SELECTOR_IN_ROOT_NAMESPACE', winner: undefined }],
  },
  {
    name: 'a selector policy in the root namespace that does not match the workload is not reported',
    policies: () => [pa(ROOT, 'bar', { selector: { matchLabels: { app: 'bar' } }, ...STRICT })],
    ignored: [],
  },
  {
    name: 'a selector policy in a custom root namespace is reported as SELECTOR_IN_ROOT_NAMESPACE',
    policies: () => [pa('mesh-root', 'foo', { selector: APP_FOO, ...STRICT })],
    root: 'mesh-root',
    ignored: [{ policy: 'mesh-root/foo', reason: 'SELECTOR_IN_ROOT_NAMESPACE', winner: undefined }],
  },
  {
    name: 'an invalid namespace-wide policy in the workload’s namespace is reported as INVALID',
    policies: () => [],
    rejected: () => [rejected(NS, 'default', { mtls: { mode: 'ENFORCED' } })],
    ignored: [{ policy: 'my-ns/default', reason: 'INVALID', winner: undefined }],
  },
  {
    name: 'an invalid selector policy matching the workload is reported as INVALID',
    policies: () => [pa(NS, 'default', STRICT)],
    rejected: () => [rejected(NS, 'foo', { selector: APP_FOO, mtls: { mode: 'strict' } })],
    ignored: [{ policy: 'my-ns/foo', reason: 'INVALID', winner: undefined }],
  },
  {
    name: 'an invalid policy with selector: {} counts as namespace-wide and is reported as INVALID',
    policies: () => [],
    rejected: () => [rejected(NS, 'wide', { selector: {}, portLevelMtls: { 8080: { mode: 'DISABLE' } } })],
    ignored: [{ policy: 'my-ns/wide', reason: 'INVALID', winner: undefined }],
  },
  {
    name: 'an invalid selector policy that does not match the workload is not reported',
    policies: () => [],
    rejected: () => [
      rejected(NS, 'bar', { selector: { matchLabels: { app: 'bar' } }, mtls: { mode: 'ENFORCED' } }),
    ],
    ignored: [],
  },
  {
    name: 'an invalid policy in another namespace is not reported',
    policies: () => [],
    rejected: () => [rejected('other', 'default', { mtls: { mode: 'ENFORCED' } })],
    ignored: [],
  },
  {
    name: 'an invalid mesh-wide policy in the root namespace is reported as INVALID for a workload in any namespace',
    policies: () => [],
    rejected: () => [rejected(ROOT, 'default', { mtls: { mode: 'strict' } })],
    ignored: [{ policy: 'istio-system/default', reason: 'INVALID', winner: undefined }],
  },
  {
    name: 'an invalid mesh-wide policy is reported as INVALID for a workload in the root namespace',
    policies: () => [],
    rejected: () => [rejected(ROOT, 'default', { mtls: { mode: 'strict' } })],
    workload: { namespace: ROOT, labels: { app: 'foo' } },
    ignored: [{ policy: 'istio-system/default', reason: 'INVALID', winner: undefined }],
  },
];

describe('resolveInboundMtls: ignored and non-matching policies', () => {
  for (const c of ignoredCases) {
    test(c.name, () => {
      const index = indexPeerAuthentications(c.policies(), c.root ?? ROOT, c.rejected?.() ?? []);
      const r = resolveInboundMtls(index, c.workload ?? FOO);
      assert.deepEqual(
        ignoredOf(r).sort((a, b) => a.policy.localeCompare(b.policy)),
        [...c.ignored].sort((a, b) => a.policy.localeCompare(b.policy)),
      );
      assert.deepEqual(
        r.notMatching.map((n) => ({ policy: refName(n.policy), selector: n.selector })),
        c.notMatching ?? [],
      );
    });
  }

  test('an invalid policy never takes part in resolution', () => {
    const index = indexPeerAuthentications([pa(ROOT, 'default', DISABLE)], ROOT, [
      rejected(NS, 'default', { mtls: { mode: 'ENFORCED' } }),
    ]);
    const r = resolveInboundMtls(index, FOO);
    assert.equal(r.workloadMode, 'DISABLE');
    assert.equal(r.namespacePolicy, undefined);
  });

  test('an INVALID entry carries the API server’s errors in its message', () => {
    const index = indexPeerAuthentications([], ROOT, [
      rejected(NS, 'default', { mtls: { mode: 'ENFORCED' } }),
    ]);
    const [entry] = resolveInboundMtls(index, FOO).ignored;
    assert.ok(entry);
    assert.match(entry.message, /ENFORCED/);
  });

  test('a NEWER_* message names the winner and why it is older', () => {
    const r = resolve([pa(NS, 'b', STRICT, at(0)), pa(NS, 'a', DISABLE, at(1))]);
    const [entry] = r.ignored;
    assert.ok(entry);
    assert.match(entry.message, /my-ns\/b/);
    assert.match(entry.message, /2024-01-01T12:00:00\.000Z, before 2024-01-01T12:00:01\.000Z/);
  });

  test('a NEWER_* message for a name tie-break says the timestamps are equal', () => {
    const r = resolve([pa(NS, 'b', STRICT, at(0)), pa(NS, 'a', DISABLE, at(0))]);
    const [entry] = r.ignored;
    assert.ok(entry);
    assert.equal(refName(entry.policy), 'my-ns/b');
    assert.match(entry.message, /same creationTimestamp/);
  });
});

describe('indexPeerAuthentications', () => {
  test('sorts by creationTimestamp, then name, then namespace; no timestamp last', () => {
    const index = indexPeerAuthentications([
      pa('b-ns', 'p', STRICT),
      pa('a-ns', 'p', STRICT),
      pa('a-ns', 'o', STRICT),
      pa('z-ns', 'z', STRICT, at(1)),
      pa('y-ns', 'y', STRICT, { created: '2024-01-01T12:00:02.500Z' }),
      pa('x-ns', 'x', STRICT, at(2)),
      pa('w-ns', 'w', STRICT, at(-100)),
    ]);
    assert.deepEqual(
      index.all.map((p) => refName(p.meta)),
      ['w-ns/w', 'z-ns/z', 'x-ns/x', 'y-ns/y', 'a-ns/o', 'a-ns/p', 'b-ns/p'],
    );
  });

  test('lists the policies whose order had to be assumed', () => {
    const index = indexPeerAuthentications([
      pa(NS, 'b', STRICT),
      pa(NS, 'a', STRICT, at(0)),
      pa(ROOT, 'c', STRICT),
    ]);
    assert.deepEqual(
      index.withoutTimestamp.map((r) => refName(r)),
      ['my-ns/b', 'istio-system/c'],
    );
  });

  test('keeps root-namespace selector policies apart from the mesh policy', () => {
    const index = indexPeerAuthentications([
      pa(ROOT, 'foo', { selector: APP_FOO, ...STRICT }),
      pa(ROOT, 'default', DISABLE),
    ]);
    assert.equal(nameOf(index.mesh), 'istio-system/default');
    assert.deepEqual(
      index.rootSelected.map((p) => refName(p.meta)),
      ['istio-system/foo'],
    );
    assert.deepEqual(index.ignoredMesh, []);
  });
});

interface NamespaceModeCase {
  readonly name: string;
  readonly policies: () => PeerAuthentication[];
  readonly namespace?: string;
  readonly root?: string;
  readonly mode: ResolvedMtlsMode | 'UNKNOWN';
}

const namespaceModeCases: readonly NamespaceModeCase[] = [
  { name: 'no namespace or mesh policy is UNKNOWN', policies: () => [], mode: 'UNKNOWN' },
  {
    name: 'only a mesh policy gives the mesh mode',
    policies: () => [pa(ROOT, 'default', STRICT)],
    mode: 'STRICT',
  },
  {
    name: 'only a mesh policy with mode UNSET gives PERMISSIVE',
    policies: () => [pa(ROOT, 'default', UNSET)],
    mode: 'PERMISSIVE',
  },
  {
    name: 'only a mesh policy without mtls gives PERMISSIVE',
    policies: () => [pa(ROOT, 'default', {})],
    mode: 'PERMISSIVE',
  },
  {
    name: 'a namespace policy with mode UNSET and no mesh policy gives PERMISSIVE',
    policies: () => [pa(NS, 'default', UNSET)],
    mode: 'PERMISSIVE',
  },
  {
    name: 'a namespace policy without mtls and no mesh policy gives PERMISSIVE',
    policies: () => [pa(NS, 'default', {})],
    mode: 'PERMISSIVE',
  },
  {
    name: 'a namespace policy with mode UNSET inherits the mesh mode',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'default', UNSET)],
    mode: 'STRICT',
  },
  {
    name: 'a namespace policy with a mode overrides the mesh mode',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'default', DISABLE)],
    mode: 'DISABLE',
  },
  {
    name: 'a namespace-wide policy of another namespace does not count',
    policies: () => [pa('other', 'default', STRICT)],
    mode: 'UNKNOWN',
  },
  {
    name: 'a workload selector policy does not count',
    policies: () => [pa(NS, 'foo', { selector: APP_FOO, ...STRICT })],
    mode: 'UNKNOWN',
  },
  {
    name: 'a selector policy in the root namespace does not count as mesh policy',
    policies: () => [pa(ROOT, 'foo', { selector: APP_FOO, ...STRICT })],
    mode: 'UNKNOWN',
  },
  {
    name: 'selector: {} counts as namespace-wide',
    policies: () => [pa(ROOT, 'default', STRICT), pa(NS, 'p', { selector: {}, ...DISABLE })],
    mode: 'DISABLE',
  },
  {
    name: 'among several namespace-wide policies the oldest decides',
    policies: () => [pa(NS, 'a', STRICT, at(1)), pa(NS, 'b', DISABLE, at(0))],
    mode: 'DISABLE',
  },
  {
    name: 'the root namespace gets the mesh mode',
    policies: () => [pa(ROOT, 'default', DISABLE)],
    namespace: ROOT,
    mode: 'DISABLE',
  },
  {
    name: 'a custom root namespace holds the mesh mode',
    policies: () => [pa('mesh-root', 'default', STRICT), pa(ROOT, 'default', DISABLE)],
    root: 'mesh-root',
    mode: 'STRICT',
  },
];

describe('namespaceMtlsMode (GetNamespaceMutualTLSMode)', () => {
  for (const c of namespaceModeCases) {
    test(c.name, () => {
      const index = indexPeerAuthentications(c.policies(), c.root ?? ROOT);
      assert.equal(namespaceMtlsMode(index, c.namespace ?? NS), c.mode);
    });
  }

  test('the inbound mode is PERMISSIVE where the namespace mode is UNKNOWN', () => {
    const index = indexPeerAuthentications([]);
    assert.equal(namespaceMtlsMode(index, NS), 'UNKNOWN');
    assert.equal(resolveInboundMtls(index, FOO).workloadMode, 'PERMISSIVE');
  });
});
