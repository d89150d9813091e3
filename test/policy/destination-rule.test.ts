/**
 * DestinationRule lookup, merging and TLS precedence (Istio's push_context.go `setDestinationRules`,
 * `destinationRule`, `mergeDestinationRule`, sidecar.go `SidecarScope.DestinationRule`,
 * util.go `MergeSubsetTrafficPolicy`, mtls_checker.go `tlsModeForDestinationRule`), and validation
 * as Istio's CRD schema and webhook do it.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type {
  DestinationRule,
  DiagnosticCode,
  MergedDestinationRule,
  TlsLevel,
} from '../../src/policy/index.js';
import {
  clusterTlsFor,
  endpointTlsModeFor,
  findDestinationRule,
  indexDestinationRules,
  resolveRuleHost,
  validateDestinationRule,
} from '../../src/policy/index.js';
import { dr, meta } from '../helpers/builders.js';

const ROOT = 'istio-system';
const REVIEWS = 'reviews.bookinfo.svc.cluster.local';

/** Names of the rules that make up the rule a client sees, or undefined. */
function lookup(
  rules: DestinationRule[],
  client: { namespace: string; labels?: Record<string, string> },
  host: string = REVIEWS,
  /** `null` for a host whose Service namespace is unknown. */
  serviceNamespace: string | null = 'bookinfo',
): { names: string[] | undefined; foundIn: string | undefined; rule: MergedDestinationRule | undefined } {
  const index = indexDestinationRules(rules, ROOT);
  const found = findDestinationRule(
    index,
    client.namespace,
    client.labels ?? {},
    host,
    serviceNamespace ?? undefined,
  );
  return {
    names: found.rule?.rules.map((r) => `${r.meta.namespace}/${r.meta.name}`),
    foundIn: found.foundIn,
    rule: found.rule,
  };
}

const tls = (mode: string) => ({ tls: { mode } });
const mutualTls = { tls: { mode: 'MUTUAL', clientCertificate: '/c.pem', privateKey: '/k.pem' } };

describe('resolveRuleHost', () => {
  const cases: [string, string, string, string][] = [
    ['a short name is completed with the rule namespace', 'reviews', 'bookinfo', REVIEWS],
    ['a name with a dot is taken literally', 'reviews.bookinfo', 'other', 'reviews.bookinfo'],
    ['a FQDN is taken literally', REVIEWS, 'other', REVIEWS],
    ['the bare wildcard stays the wildcard', '*', 'bookinfo', '*'],
    [
      'a wildcard host is taken literally',
      '*.bookinfo.svc.cluster.local',
      'x',
      '*.bookinfo.svc.cluster.local',
    ],
    ['an IPv6 address is not completed', 'fe80::1', 'bookinfo', 'fe80::1'],
    ['a short name that looks like hex is still a short name', 'db', 'data', 'db.data.svc.cluster.local'],
    ['an all-digit short name is still a short name', '123', 'data', '123.data.svc.cluster.local'],
  ];
  for (const [name, host, ns, want] of cases) {
    test(name, () => assert.equal(resolveRuleHost(host, ns, 'cluster.local'), want));
  }
  test('the cluster domain is configurable', () => {
    assert.equal(resolveRuleHost('reviews', 'bookinfo', 'corp.example'), 'reviews.bookinfo.svc.corp.example');
  });
  test('indexDestinationRules completes a short host so that it matches the FQDN', () => {
    assert.deepEqual(
      lookup(
        [dr('data', 'db', { host: 'db', trafficPolicy: tls('DISABLE') })],
        { namespace: 'data' },
        'db.data.svc.cluster.local',
        'data',
      ).names,
      ['data/db'],
    );
  });
});

describe('findDestinationRule: where the rule comes from', () => {
  const inClient = dr('frontend', 'reviews', { host: REVIEWS, trafficPolicy: tls('DISABLE') });
  const inService = dr('bookinfo', 'reviews', { host: 'reviews', trafficPolicy: tls('ISTIO_MUTUAL') });
  const inRoot = dr(ROOT, 'reviews', { host: REVIEWS, trafficPolicy: tls('SIMPLE') });

  const cases: {
    name: string;
    rules: DestinationRule[];
    client: string;
    want: string[] | undefined;
    foundIn?: string;
  }[] = [
    {
      name: "the client's own namespace comes first",
      rules: [inClient, inService, inRoot],
      client: 'frontend',
      want: ['frontend/reviews'],
      foundIn: 'client-namespace',
    },
    {
      name: "then the service's namespace",
      rules: [inService, inRoot],
      client: 'frontend',
      want: ['bookinfo/reviews'],
      foundIn: 'service-namespace',
    },
    {
      name: 'then the root namespace',
      rules: [inRoot],
      client: 'frontend',
      want: [`${ROOT}/reviews`],
      foundIn: 'root-namespace',
    },
    {
      name: 'a rule in another, unrelated namespace is never used',
      rules: [dr('other', 'reviews', { host: REVIEWS, trafficPolicy: tls('DISABLE') })],
      client: 'frontend',
      want: undefined,
    },
    {
      name: 'the first namespace with any host match wins: a broad wildcard in the client namespace beats an exact rule elsewhere',
      rules: [
        dr('frontend', 'all', { host: '*.svc.cluster.local', trafficPolicy: tls('DISABLE') }),
        inService,
      ],
      client: 'frontend',
      want: ['frontend/all'],
      foundIn: 'client-namespace',
    },
    {
      name: "exportTo '.' hides a rule from other namespaces",
      rules: [
        dr('bookinfo', 'private', { host: 'reviews', exportTo: ['.'], trafficPolicy: tls('DISABLE') }),
        inRoot,
      ],
      client: 'frontend',
      want: [`${ROOT}/reviews`],
      foundIn: 'root-namespace',
    },
    {
      name: "exportTo '.' still applies in its own namespace",
      rules: [
        dr('bookinfo', 'private', { host: 'reviews', exportTo: ['.'], trafficPolicy: tls('DISABLE') }),
        inRoot,
      ],
      client: 'bookinfo',
      want: ['bookinfo/private'],
      foundIn: 'client-namespace',
    },
    {
      name: 'exportTo naming the client namespace makes it visible there',
      rules: [
        dr('bookinfo', 'shared', { host: 'reviews', exportTo: ['frontend'], trafficPolicy: tls('DISABLE') }),
      ],
      client: 'frontend',
      want: ['bookinfo/shared'],
      foundIn: 'service-namespace',
    },
    {
      name: 'exportTo naming another namespace hides it from this client',
      rules: [
        dr('bookinfo', 'shared', { host: 'reviews', exportTo: ['backend'], trafficPolicy: tls('DISABLE') }),
      ],
      client: 'frontend',
      want: undefined,
    },
    {
      name: "exportTo naming only another namespace hides it even from the rule's own namespace",
      rules: [
        dr('bookinfo', 'shared', { host: 'reviews', exportTo: ['backend'], trafficPolicy: tls('DISABLE') }),
      ],
      client: 'bookinfo',
      want: undefined,
    },
    {
      name: "exportTo '*' makes it visible everywhere",
      rules: [dr('bookinfo', 'public', { host: 'reviews', exportTo: ['*'], trafficPolicy: tls('DISABLE') })],
      client: 'frontend',
      want: ['bookinfo/public'],
    },
    {
      name: "a root-namespace rule with exportTo '.' applies to clients in the root namespace only",
      rules: [dr(ROOT, 'private', { host: REVIEWS, exportTo: ['.'], trafficPolicy: tls('DISABLE') })],
      client: 'frontend',
      want: undefined,
    },
    {
      name: "a root-namespace client uses a root rule with exportTo '.'",
      rules: [
        dr(ROOT, 'private', { host: REVIEWS, exportTo: ['.'], trafficPolicy: tls('DISABLE') }),
        inService,
      ],
      client: ROOT,
      want: [`${ROOT}/private`],
      foundIn: 'client-namespace',
    },
    {
      name: "a root-namespace client looks at the service namespace before the root's public rules",
      rules: [inRoot, inService],
      client: ROOT,
      want: ['bookinfo/reviews'],
      foundIn: 'service-namespace',
    },
    {
      name: 'a short host is completed with the rule namespace, not the client namespace',
      rules: [dr('frontend', 'reviews', { host: 'reviews', trafficPolicy: tls('DISABLE') })],
      client: 'frontend',
      want: undefined,
    },
    {
      name: "'reviews.bookinfo' is taken literally and does not match the FQDN",
      rules: [dr('frontend', 'reviews', { host: 'reviews.bookinfo', trafficPolicy: tls('DISABLE') })],
      client: 'frontend',
      want: undefined,
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const got = lookup(c.rules, { namespace: c.client });
      assert.deepEqual(got.names, c.want);
      if (c.foundIn !== undefined) assert.equal(got.foundIn, c.foundIn);
      if (c.want === undefined) assert.equal(got.foundIn, undefined);
    });
  }

  test('without a known service namespace only the client and root namespaces are searched', () => {
    assert.deepEqual(lookup([inService, inRoot], { namespace: 'frontend' }, REVIEWS, null).names, [
      `${ROOT}/reviews`,
    ]);
  });
});

describe('findDestinationRule: host specificity', () => {
  const exact = dr('bookinfo', 'exact', { host: REVIEWS, trafficPolicy: tls('DISABLE') });
  const narrow = dr('bookinfo', 'narrow', {
    host: '*.bookinfo.svc.cluster.local',
    trafficPolicy: tls('DISABLE'),
  });
  const broad = dr('bookinfo', 'broad', { host: '*.cluster.local', trafficPolicy: tls('DISABLE') });
  const all = dr('bookinfo', 'all', { host: '*', trafficPolicy: tls('DISABLE') });
  const cases: [string, DestinationRule[], string | undefined, string | undefined][] = [
    ['an exact host beats every wildcard', [all, broad, narrow, exact], REVIEWS, 'bookinfo/exact'],
    ['the longest matching wildcard wins', [all, broad, narrow], REVIEWS, 'bookinfo/narrow'],
    ["'*' matches any host but loses to a longer wildcard", [all, broad], REVIEWS, 'bookinfo/broad'],
    ["'*' alone matches any host", [all], 'ratings.other.svc.cluster.local', 'bookinfo/all'],
    [
      'a wildcard does not match its own suffix without a label',
      [narrow],
      'bookinfo.svc.cluster.local',
      undefined,
    ],
    ['a wildcard does not match another namespace', [narrow], 'reviews.other.svc.cluster.local', undefined],
  ];
  for (const [name, rules, host, want] of cases) {
    test(name, () => {
      assert.deepEqual(lookup(rules, { namespace: 'bookinfo' }, host, 'bookinfo').names?.[0], want);
    });
  }
});

describe('indexDestinationRules: several rules for the same host in one namespace', () => {
  const older = dr(
    'bookinfo',
    'b-older',
    {
      host: 'reviews',
      trafficPolicy: { loadBalancer: { simple: 'ROUND_ROBIN' } },
      subsets: [{ name: 'v1', labels: { version: 'v1' } }],
    },
    { created: '2024-01-01T00:00:00Z' },
  );
  const newer = dr(
    'bookinfo',
    'a-newer',
    {
      host: 'reviews',
      trafficPolicy: tls('DISABLE'),
      subsets: [
        { name: 'v1', labels: { version: 'one' } },
        { name: 'v2', labels: { version: 'v2' } },
      ],
    },
    { created: '2024-02-01T00:00:00Z' },
  );

  test("the oldest rule's trafficPolicy wins whole, even without tls; subsets are united, the first of a name wins", () => {
    const { rule, names } = lookup([newer, older], { namespace: 'bookinfo' });
    assert.deepEqual(names, ['bookinfo/b-older', 'bookinfo/a-newer']);
    assert.equal(rule?.policyFrom?.meta.name, 'b-older');
    assert.equal(rule?.trafficPolicy?.tls, undefined);
    assert.deepEqual([...(rule?.subsets.keys() ?? [])], ['v1', 'v2']);
    assert.deepEqual(rule?.subsets.get('v1')?.subset.labels, { version: 'v1' });
    assert.equal(rule?.subsets.get('v2')?.from.meta.name, 'a-newer');
    assert.equal(clusterTlsFor(rule, 9080, undefined).tls, undefined);
  });

  test('an older rule without trafficPolicy lets the next rule supply it', () => {
    const subsetsOnly = dr(
      'bookinfo',
      'subsets',
      { host: 'reviews', subsets: [{ name: 'v1' }] },
      { created: '2023-01-01T00:00:00Z' },
    );
    const { rule } = lookup([newer, subsetsOnly], { namespace: 'bookinfo' });
    assert.equal(rule?.policyFrom?.meta.name, 'a-newer');
    const cluster = clusterTlsFor(rule, 9080, undefined);
    assert.equal(cluster.tls?.mode, 'DISABLE');
    assert.equal(cluster.from?.name, 'a-newer');
  });

  test('without creationTimestamp the name decides which rule is older', () => {
    const a = dr('bookinfo', 'a', { host: 'reviews', trafficPolicy: tls('SIMPLE') });
    const b = dr('bookinfo', 'b', { host: 'reviews', trafficPolicy: tls('DISABLE') });
    assert.equal(lookup([b, a], { namespace: 'bookinfo' }).rule?.trafficPolicy?.tls?.mode, 'SIMPLE');
  });

  test('rules in different namespaces are never merged', () => {
    const elsewhere = dr('frontend', 'reviews', { host: REVIEWS, subsets: [{ name: 'v9' }] });
    const { rule } = lookup([older, elsewhere], { namespace: 'frontend' });
    assert.deepEqual([...(rule?.subsets.keys() ?? [])], ['v9']);
  });
});

describe('findDestinationRule: rules with a workloadSelector', () => {
  const catchAll = dr('frontend', 'catch-all', {
    host: REVIEWS,
    trafficPolicy: tls('ISTIO_MUTUAL'),
    subsets: [{ name: 'v1', labels: { version: 'v1' } }],
  });
  const forApp1 = dr('frontend', 'for-app1', {
    host: REVIEWS,
    workloadSelector: { matchLabels: { app: 'app1' } },
    trafficPolicy: tls('SIMPLE'),
  });

  test('a matching selector rule wins over the catch-all for that client', () => {
    assert.equal(
      lookup([catchAll, forApp1], { namespace: 'frontend', labels: { app: 'app1' } }).rule?.rules[0]?.meta
        .name,
      'for-app1',
    );
  });

  test('a client the selector does not match gets the catch-all', () => {
    assert.deepEqual(lookup([catchAll, forApp1], { namespace: 'frontend', labels: { app: 'app2' } }).names, [
      'frontend/catch-all',
    ]);
  });

  test('a selector rule is never exported, whatever its exportTo says', () => {
    const exported = dr('bookinfo', 'sel', {
      host: 'reviews',
      exportTo: ['*'],
      workloadSelector: { matchLabels: { app: 'app1' } },
      trafficPolicy: tls('SIMPLE'),
    });
    assert.deepEqual(lookup([exported], { namespace: 'frontend', labels: { app: 'app1' } }).names, undefined);
  });

  test('DR without workloadselector in dst NS applied if src NS only contains DRs with selectors', () => {
    const inService = dr('bookinfo', 'reviews', { host: 'reviews', trafficPolicy: tls('DISABLE') });
    const got = lookup([forApp1, inService], { namespace: 'frontend', labels: { app: 'other' } });
    assert.deepEqual(got.names, ['bookinfo/reviews']);
    assert.equal(got.foundIn, 'service-namespace');
  });

  test('the catch-all is merged into the selector rule: its subsets, and its trafficPolicy when the selector rule has none', () => {
    const subsetFree = dr('frontend', 'for-app1', {
      host: REVIEWS,
      workloadSelector: { matchLabels: { app: 'app1' } },
      subsets: [{ name: 'v2', labels: { version: 'v2' } }],
    });
    const { rule, names } = lookup([catchAll, subsetFree], {
      namespace: 'frontend',
      labels: { app: 'app1' },
    });
    assert.deepEqual(names, ['frontend/for-app1', 'frontend/catch-all']);
    assert.deepEqual([...(rule?.subsets.keys() ?? [])], ['v2', 'v1']);
    assert.equal(rule?.selector?.app, 'app1');
    assert.equal(clusterTlsFor(rule, 9080, 'v1').tls?.mode, 'ISTIO_MUTUAL');
  });

  test("the selector rule's own trafficPolicy stays whole when the catch-all is merged in", () => {
    const { rule } = lookup([catchAll, forApp1], { namespace: 'frontend', labels: { app: 'app1' } });
    assert.equal(rule?.trafficPolicy?.tls?.mode, 'SIMPLE');
    assert.ok(rule?.subsets.has('v1'));
  });

  test('rules with the same selector merge, the oldest policy first; rules with other selectors stay apart', () => {
    const first = dr(
      'frontend',
      'first',
      { host: REVIEWS, workloadSelector: { matchLabels: { app: 'app2' } }, trafficPolicy: tls('DISABLE') },
      { created: '2024-01-01T00:00:00Z' },
    );
    const second = dr(
      'frontend',
      'second',
      {
        host: REVIEWS,
        workloadSelector: { matchLabels: { app: 'app2' } },
        trafficPolicy: tls('SIMPLE'),
        subsets: [{ name: 'v3' }],
      },
      { created: '2024-01-02T00:00:00Z' },
    );
    const { rule, names } = lookup([second, first, forApp1, catchAll], {
      namespace: 'frontend',
      labels: { app: 'app2' },
    });
    assert.deepEqual(names, ['frontend/first', 'frontend/second', 'frontend/catch-all']);
    assert.equal(rule?.trafficPolicy?.tls?.mode, 'DISABLE');
    assert.deepEqual([...(rule?.subsets.keys() ?? [])], ['v3', 'v1']);
  });

  test('when two selector rules match the client, the oldest wins', () => {
    const older = dr(
      'frontend',
      'z-older',
      { host: REVIEWS, workloadSelector: { matchLabels: { app: 'app1' } }, trafficPolicy: tls('DISABLE') },
      { created: '2024-01-01T00:00:00Z' },
    );
    const newer = dr(
      'frontend',
      'a-newer',
      { host: REVIEWS, workloadSelector: { matchLabels: { tier: 'web' } }, trafficPolicy: tls('SIMPLE') },
      { created: '2024-03-01T00:00:00Z' },
    );
    const got = lookup([newer, older], { namespace: 'frontend', labels: { app: 'app1', tier: 'web' } });
    assert.equal(got.rule?.rules[0]?.meta.name, 'z-older');
  });
});

describe('clusterTlsFor: GetPortLevelTrafficPolicy + MergeSubsetTrafficPolicy precedence', () => {
  function ruleOf(spec: Record<string, unknown>): MergedDestinationRule {
    const r = findDestinationRule(
      indexDestinationRules([dr('bookinfo', 'reviews', { host: 'reviews', ...spec })], ROOT),
      'bookinfo',
      {},
      REVIEWS,
      'bookinfo',
    ).rule;
    assert.ok(r);
    return r;
  }
  const port = (number: number, extra: Record<string, unknown>) => ({ port: { number }, ...extra });
  const cases: {
    name: string;
    spec: Record<string, unknown>;
    subset?: string;
    mode: string | undefined;
    level: TlsLevel | undefined;
  }[] = [
    { name: 'no trafficPolicy: auto mTLS', spec: {}, mode: undefined, level: undefined },
    { name: "the rule's tls", spec: { trafficPolicy: tls('SIMPLE') }, mode: 'SIMPLE', level: 'destination' },
    {
      name: "the rule's port entry replaces its tls",
      spec: { trafficPolicy: { ...tls('SIMPLE'), portLevelSettings: [port(9080, tls('DISABLE'))] } },
      mode: 'DISABLE',
      level: 'destination-port',
    },
    {
      name: "the rule's port entry replaces its tls even without tls of its own",
      spec: {
        trafficPolicy: {
          ...tls('SIMPLE'),
          portLevelSettings: [port(9080, { loadBalancer: { simple: 'RANDOM' } })],
        },
      },
      mode: undefined,
      level: 'destination-port',
    },
    {
      name: 'a port entry for another port is ignored',
      spec: { trafficPolicy: { ...tls('SIMPLE'), portLevelSettings: [port(80, tls('DISABLE'))] } },
      mode: 'SIMPLE',
      level: 'destination',
    },
    {
      name: 'the first of two entries for the same port wins',
      spec: { trafficPolicy: { portLevelSettings: [port(9080, tls('DISABLE')), port(9080, tls('SIMPLE'))] } },
      mode: 'DISABLE',
      level: 'destination-port',
    },
    {
      name: "a subset without trafficPolicy keeps the rule's tls",
      spec: { trafficPolicy: tls('SIMPLE'), subsets: [{ name: 'v1' }] },
      subset: 'v1',
      mode: 'SIMPLE',
      level: 'destination',
    },
    {
      name: "a subset policy without tls keeps the rule's port entry",
      spec: {
        trafficPolicy: { portLevelSettings: [port(9080, tls('DISABLE'))] },
        subsets: [{ name: 'v1', trafficPolicy: { loadBalancer: { simple: 'RANDOM' } } }],
      },
      subset: 'v1',
      mode: 'DISABLE',
      level: 'destination-port',
    },
    {
      name: "the subset's tls beats the rule's port entry",
      spec: {
        trafficPolicy: { portLevelSettings: [port(9080, tls('DISABLE'))] },
        subsets: [{ name: 'v1', trafficPolicy: tls('ISTIO_MUTUAL') }],
      },
      subset: 'v1',
      mode: 'ISTIO_MUTUAL',
      level: 'subset',
    },
    {
      name: "the subset's port entry beats the subset's tls",
      spec: {
        subsets: [
          { name: 'v1', trafficPolicy: { ...tls('DISABLE'), portLevelSettings: [port(9080, mutualTls)] } },
        ],
      },
      subset: 'v1',
      mode: 'MUTUAL',
      level: 'subset-port',
    },
    {
      name: "the subset's port entry without tls removes every tls above it",
      spec: {
        trafficPolicy: tls('SIMPLE'),
        subsets: [
          {
            name: 'v1',
            trafficPolicy: {
              ...tls('DISABLE'),
              portLevelSettings: [port(9080, { loadBalancer: { simple: 'RANDOM' } })],
            },
          },
        ],
      },
      subset: 'v1',
      mode: undefined,
      level: 'subset-port',
    },
    {
      name: 'another subset does not apply',
      spec: { trafficPolicy: tls('SIMPLE'), subsets: [{ name: 'v2', trafficPolicy: tls('DISABLE') }] },
      subset: 'v1',
      mode: 'SIMPLE',
      level: 'destination',
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const got = clusterTlsFor(ruleOf(c.spec), 9080, c.subset);
      assert.equal(got.tls?.mode, c.mode);
      assert.equal(got.level, c.level);
      assert.equal(got.from?.name, c.level === undefined ? undefined : 'reviews');
    });
  }

  test('without a rule there is nothing to apply', () => {
    assert.deepEqual(clusterTlsFor(undefined, 9080, undefined), {
      tls: undefined,
      level: undefined,
      from: undefined,
    });
  });

  test('a subset merged in from a newer rule is attributed to that rule', () => {
    const base = dr(
      'bookinfo',
      'base',
      { host: 'reviews', trafficPolicy: tls('SIMPLE') },
      { created: '2024-01-01T00:00:00Z' },
    );
    const extra = dr(
      'bookinfo',
      'extra',
      { host: 'reviews', subsets: [{ name: 'v1', trafficPolicy: tls('DISABLE') }] },
      { created: '2024-02-01T00:00:00Z' },
    );
    const rule = findDestinationRule(
      indexDestinationRules([base, extra], ROOT),
      'bookinfo',
      {},
      REVIEWS,
      'bookinfo',
    ).rule;
    assert.equal(clusterTlsFor(rule, 9080, 'v1').from?.name, 'extra');
    assert.equal(clusterTlsFor(rule, 9080, undefined).from?.name, 'base');
  });
});

describe('endpointTlsModeFor: tlsModeForDestinationRule', () => {
  function ruleOf(spec: Record<string, unknown>): MergedDestinationRule {
    const r = findDestinationRule(
      indexDestinationRules([dr('bookinfo', 'reviews', { host: 'reviews', ...spec })], ROOT),
      'bookinfo',
      {},
      REVIEWS,
      'bookinfo',
    ).rule;
    assert.ok(r);
    return r;
  }
  const cases: { name: string; spec: Record<string, unknown>; subset?: string; want: string | undefined }[] =
    [
      { name: "the rule's tls", spec: { trafficPolicy: tls('DISABLE') }, want: 'DISABLE' },
      {
        name: 'a port entry with tls overrides',
        spec: {
          trafficPolicy: {
            ...tls('DISABLE'),
            portLevelSettings: [{ port: { number: 9080 }, ...tls('ISTIO_MUTUAL') }],
          },
        },
        want: 'ISTIO_MUTUAL',
      },
      {
        name: 'a port entry without tls does not override',
        spec: {
          trafficPolicy: {
            ...tls('DISABLE'),
            portLevelSettings: [{ port: { number: 9080 }, loadBalancer: { simple: 'RANDOM' } }],
          },
        },
        want: 'DISABLE',
      },
      {
        name: 'the first entry for the port that has tls counts, even after one without tls',
        spec: {
          trafficPolicy: {
            ...tls('DISABLE'),
            portLevelSettings: [
              { port: { number: 9080 }, loadBalancer: { simple: 'RANDOM' } },
              { port: { number: 9080 }, ...tls('ISTIO_MUTUAL') },
            ],
          },
        },
        want: 'ISTIO_MUTUAL',
      },
      {
        name: 'no tls anywhere',
        spec: { trafficPolicy: { loadBalancer: { simple: 'RANDOM' } } },
        want: undefined,
      },
      {
        name: "with a subset, only the subset's policy counts",
        spec: {
          trafficPolicy: tls('DISABLE'),
          subsets: [{ name: 'v1', trafficPolicy: tls('ISTIO_MUTUAL') }],
        },
        subset: 'v1',
        want: 'ISTIO_MUTUAL',
      },
      {
        name: "a subset without tls does not fall back to the rule's tls",
        spec: {
          trafficPolicy: tls('DISABLE'),
          subsets: [{ name: 'v1', trafficPolicy: { loadBalancer: { simple: 'RANDOM' } } }],
        },
        subset: 'v1',
        want: undefined,
      },
      {
        name: 'a subset without trafficPolicy has no mode',
        spec: { trafficPolicy: tls('DISABLE'), subsets: [{ name: 'v1' }] },
        subset: 'v1',
        want: undefined,
      },
      {
        name: 'an unknown subset has no mode',
        spec: { trafficPolicy: tls('DISABLE') },
        subset: 'v9',
        want: undefined,
      },
    ];
  for (const c of cases) {
    test(c.name, () => assert.equal(endpointTlsModeFor(ruleOf(c.spec), 9080, c.subset), c.want));
  }
  test('without a rule there is no mode', () =>
    assert.equal(endpointTlsModeFor(undefined, 9080, undefined), undefined));
});

describe('validateDestinationRule', () => {
  function validate(spec: unknown) {
    return validateDestinationRule({
      apiVersion: 'networking.istio.io/v1',
      kind: 'DestinationRule',
      meta: meta('bookinfo', 'reviews'),
      spec,
      locate: () => undefined,
    });
  }
  const codes = (spec: unknown) => validate(spec).diagnostics.map((d) => d.code);
  const withTls = (t: Record<string, unknown>) => ({ host: 'reviews', trafficPolicy: { tls: t } });

  const errors: { name: string; spec: unknown; want: DiagnosticCode[] }[] = [
    {
      name: 'a lower-case tls mode is refused (the enum is case-sensitive)',
      spec: withTls({ mode: 'istio_mutual' }),
      want: ['KMTLS_DR_INVALID_TLS_MODE'],
    },
    {
      name: 'an unknown tls mode is refused',
      spec: withTls({ mode: 'STRICT' }),
      want: ['KMTLS_DR_INVALID_TLS_MODE'],
    },
    {
      name: 'MUTUAL without clientCertificate and privateKey',
      spec: withTls({ mode: 'MUTUAL' }),
      want: ['KMTLS_DR_MUTUAL_WITHOUT_CERTS', 'KMTLS_DR_MUTUAL_WITHOUT_CERTS'],
    },
    {
      name: 'MUTUAL without privateKey',
      spec: withTls({ mode: 'MUTUAL', clientCertificate: '/c.pem' }),
      want: ['KMTLS_DR_MUTUAL_WITHOUT_CERTS'],
    },
    {
      name: 'SIMPLE with credentialName and caCertificates',
      spec: withTls({ mode: 'SIMPLE', credentialName: 'reviews-ca', caCertificates: '/ca.pem' }),
      want: ['KMTLS_DR_TLS_FIELDS'],
    },
    {
      name: 'MUTUAL with credentialName and clientCertificate',
      spec: withTls({ mode: 'MUTUAL', credentialName: 'reviews-cred', clientCertificate: '/c.pem' }),
      want: ['KMTLS_DR_TLS_FIELDS'],
    },
    {
      name: 'SIMPLE with insecureSkipVerify and subjectAltNames',
      spec: withTls({ mode: 'SIMPLE', insecureSkipVerify: true, subjectAltNames: ['reviews'] }),
      want: ['KMTLS_DR_TLS_FIELDS'],
    },
    {
      name: 'a missing host',
      spec: { trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } } },
      want: ['KMTLS_DR_MISSING_HOST'],
    },
    { name: 'an empty host', spec: { host: '' }, want: ['KMTLS_DR_MISSING_HOST'] },
    {
      name: 'a host with an empty label',
      spec: { host: 'reviews..bookinfo' },
      want: ['KMTLS_DR_MISSING_HOST'],
    },
    {
      name: 'a host with an underscore',
      spec: { host: 're_views.bookinfo' },
      want: ['KMTLS_DR_MISSING_HOST'],
    },
    {
      name: 'a wildcard outside the first label',
      spec: { host: 'reviews.*.svc.cluster.local' },
      want: ['KMTLS_DR_MISSING_HOST'],
    },
    {
      name: 'an all-numeric top-level domain',
      spec: { host: 'reviews.123' },
      want: ['KMTLS_DR_MISSING_HOST'],
    },
    {
      name: 'duplicate subset names',
      spec: { host: 'reviews', subsets: [{ name: 'v1' }, { name: 'v1' }] },
      want: ['KMTLS_DR_DUPLICATE_SUBSET'],
    },
    {
      name: 'a subset without name',
      spec: { host: 'reviews', subsets: [{ labels: { version: 'v1' } }] },
      want: ['KMTLS_DR_SUBSET_NAME'],
    },
    {
      name: 'a subset name that is no DNS label',
      spec: { host: 'reviews', subsets: [{ name: 'v_1' }] },
      want: ['KMTLS_DR_SUBSET_NAME'],
    },
    {
      name: 'a subset name longer than 63 characters',
      spec: { host: 'reviews', subsets: [{ name: 'v'.repeat(64) }] },
      want: ['KMTLS_DR_SUBSET_NAME'],
    },
    {
      name: 'a portLevelSettings entry without port',
      spec: { host: 'reviews', trafficPolicy: { portLevelSettings: [{ tls: { mode: 'DISABLE' } }] } },
      want: ['KMTLS_DR_PORT_SETTING_WITHOUT_PORT'],
    },
    {
      name: 'a portLevelSettings entry with only a port',
      spec: { host: 'reviews', trafficPolicy: { portLevelSettings: [{ port: { number: 9080 } }] } },
      want: ['KMTLS_DR_EMPTY_TRAFFIC_POLICY'],
    },
    {
      name: 'an empty trafficPolicy',
      spec: { host: 'reviews', trafficPolicy: {} },
      want: ['KMTLS_DR_EMPTY_TRAFFIC_POLICY'],
    },
    {
      name: 'an empty subset trafficPolicy',
      spec: { host: 'reviews', subsets: [{ name: 'v1', trafficPolicy: {} }] },
      want: ['KMTLS_DR_EMPTY_TRAFFIC_POLICY'],
    },
  ];
  for (const c of errors) {
    test(`refuses ${c.name}`, () => {
      const v = validate(c.spec);
      assert.deepEqual(
        v.diagnostics.map((d) => d.code),
        c.want,
      );
      assert.ok(v.diagnostics.every((d) => d.severity === 'error'));
      assert.equal(v.value, undefined);
    });
  }

  test('the invalid-mode error says how to spell it', () => {
    const [d] = validate(withTls({ mode: 'istio_mutual' })).diagnostics;
    assert.equal(d?.field, 'spec.trafficPolicy.tls.mode');
    assert.equal(d?.hint, 'write ISTIO_MUTUAL');
  });

  test('ISTIO_MUTUAL with certificate fields is accepted with a warning', () => {
    const v = validate(withTls({ mode: 'ISTIO_MUTUAL', clientCertificate: '/c.pem', privateKey: '/k.pem' }));
    assert.deepEqual(
      v.diagnostics.map((d) => [d.code, d.severity]),
      [['KMTLS_DR_ISTIO_MUTUAL_WITH_CERTS', 'warning']],
    );
    assert.equal(v.value?.trafficPolicy?.tls?.mode, 'ISTIO_MUTUAL');
  });

  const valid: { name: string; spec: unknown }[] = [
    {
      name: 'ISTIO_MUTUAL with sni and subjectAltNames',
      spec: withTls({ mode: 'ISTIO_MUTUAL', sni: 'reviews', subjectAltNames: ['spiffe://x/y'] }),
    },
    {
      name: 'MUTUAL with credentialName only',
      spec: withTls({ mode: 'MUTUAL', credentialName: 'reviews-cred' }),
    },
    {
      name: 'MUTUAL with clientCertificate and privateKey',
      spec: withTls({ mode: 'MUTUAL', clientCertificate: '/c.pem', privateKey: '/k.pem' }),
    },
    { name: 'the bare wildcard host', spec: { host: '*' } },
    { name: 'a wildcard host', spec: { host: '*.bookinfo.svc.cluster.local' } },
    { name: 'a host with upper-case letters', spec: { host: 'Reviews.Bookinfo' } },
    {
      name: 'a fully qualified host with a trailing dot',
      spec: { host: 'reviews.bookinfo.svc.cluster.local.' },
    },
    { name: 'an upper-case subset name', spec: { host: 'reviews', subsets: [{ name: 'V1' }] } },
    {
      name: 'a port selector without number',
      spec: {
        host: 'reviews',
        trafficPolicy: { portLevelSettings: [{ port: {}, tls: { mode: 'DISABLE' } }] },
      },
    },
  ];
  for (const c of valid) {
    test(`accepts ${c.name}`, () => {
      assert.deepEqual(codes(c.spec), []);
      assert.ok(validate(c.spec).value);
    });
  }

  test('the validated rule keeps what TLS decisions need', () => {
    const v = validate({
      host: 'reviews',
      trafficPolicy: {
        loadBalancer: { simple: 'PASSTHROUGH' },
        tls: {},
        portLevelSettings: [{ port: { number: 9080 }, connectionPool: { tcp: { maxConnections: 1 } } }],
      },
      subsets: [{ name: 'v1', labels: { version: 'v1' } }],
      exportTo: ['.'],
      workloadSelector: { matchLabels: { app: 'productpage' } },
    });
    assert.deepEqual(v.diagnostics, []);
    const rule = v.value;
    assert.ok(rule);
    assert.equal(rule.host, 'reviews');
    // `tls: {}` has the proto default mode, DISABLE.
    assert.equal(rule.trafficPolicy?.tls?.mode, 'DISABLE');
    assert.equal(rule.trafficPolicy?.loadBalancerPassthrough, true);
    assert.deepEqual(rule.trafficPolicy?.portLevelSettings, [{ port: 9080, tls: undefined }]);
    assert.deepEqual(rule.subsets, [{ name: 'v1', labels: { version: 'v1' }, trafficPolicy: undefined }]);
    assert.deepEqual(rule.exportTo, ['.']);
    assert.deepEqual(rule.workloadSelector, { matchLabels: { app: 'productpage' } });
  });
});
