import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { InterceptionOptions } from '../../src/kube/iptables.js';
import {
  buildInterceptionRules,
  buildIpv6Rules,
  DEFAULT_INTERCEPTION,
  interceptionFromAnnotations,
  parseInterception,
  renderIp6tablesRestore,
  renderIptablesRestore,
} from '../../src/kube/iptables.js';
import { ip6tablesCommand } from '../../src/kube/iptables-apply.js';

/** The OUTPUT chain's fixed middle: Istio's loopback and owner rules for uid/gid 1337. */
const LOOPBACK_RULES = [
  '-A KMTLS_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN',
  '-A KMTLS_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j KMTLS_IN_REDIRECT',
  '-A KMTLS_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN',
  '-A KMTLS_OUTPUT -m owner --uid-owner 1337 -j RETURN',
  '-A KMTLS_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j KMTLS_IN_REDIRECT',
  '-A KMTLS_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN',
  '-A KMTLS_OUTPUT -m owner --gid-owner 1337 -j RETURN',
  '-A KMTLS_OUTPUT -d 127.0.0.1/32 -j RETURN',
];

function options(over: Partial<InterceptionOptions>): InterceptionOptions {
  return { ...DEFAULT_INTERCEPTION, ...over };
}

test('the defaults are Istio’s: every inbound port but the proxy’s own, every outbound address', () => {
  assert.equal(
    renderIptablesRestore(DEFAULT_INTERCEPTION),
    [
      '*nat',
      ':KMTLS_INBOUND - [0:0]',
      ':KMTLS_IN_REDIRECT - [0:0]',
      ':KMTLS_OUTPUT - [0:0]',
      ':KMTLS_REDIRECT - [0:0]',
      '-A KMTLS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006',
      '-A KMTLS_REDIRECT -p tcp -j REDIRECT --to-ports 15001',
      '-A PREROUTING -p tcp -j KMTLS_INBOUND',
      '-A KMTLS_INBOUND -p tcp --dport 15000 -j RETURN',
      '-A KMTLS_INBOUND -p tcp --dport 15006 -j RETURN',
      '-A KMTLS_INBOUND -p tcp --dport 15001 -j RETURN',
      '-A KMTLS_INBOUND -p tcp --dport 15020 -j RETURN',
      '-A KMTLS_INBOUND -p tcp --dport 15021 -j RETURN',
      '-A KMTLS_INBOUND -p tcp -j KMTLS_IN_REDIRECT',
      '-A OUTPUT -p tcp -j KMTLS_OUTPUT',
      ...LOOPBACK_RULES,
      '-A KMTLS_OUTPUT -j KMTLS_REDIRECT',
      'COMMIT',
      '',
    ].join('\n'),
  );
});

test('listed inbound ports only; excluded outbound ports before the loopback rules; CIDRs after', () => {
  const rules = buildInterceptionRules(
    options({
      includeInboundPorts: [8080, 9090],
      excludeInboundPorts: [22],
      excludeOutboundPorts: [25, 3306],
      excludeOutboundCidrs: ['169.254.169.254/32', 'fd00::/8'],
      includeOutboundCidrs: ['10.96.0.0/12', '10.244.0.0/16'],
    }),
  );
  assert.deepEqual(rules, [
    '-A KMTLS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006',
    '-A KMTLS_REDIRECT -p tcp -j REDIRECT --to-ports 15001',
    '-A PREROUTING -p tcp -j KMTLS_INBOUND',
    // A list of included ports makes exclusions moot, as in Istio.
    '-A KMTLS_INBOUND -p tcp --dport 8080 -j KMTLS_IN_REDIRECT',
    '-A KMTLS_INBOUND -p tcp --dport 9090 -j KMTLS_IN_REDIRECT',
    '-A OUTPUT -p tcp -j KMTLS_OUTPUT',
    '-A KMTLS_OUTPUT -p tcp --dport 25 -j RETURN',
    '-A KMTLS_OUTPUT -p tcp --dport 3306 -j RETURN',
    ...LOOPBACK_RULES,
    // IPv6 ranges have no IPv4 rule.
    '-A KMTLS_OUTPUT -d 169.254.169.254/32 -j RETURN',
    '-A KMTLS_OUTPUT -d 10.96.0.0/12 -j KMTLS_REDIRECT',
    '-A KMTLS_OUTPUT -d 10.244.0.0/16 -j KMTLS_REDIRECT',
  ]);
});

test('empty includes intercept nothing in that direction; custom ports and ids are used throughout', () => {
  const rules = buildInterceptionRules(
    options({
      proxyUid: 2000,
      proxyGid: 3000,
      inboundPort: 16006,
      outboundPort: 16001,
      includeInboundPorts: [],
      includeOutboundCidrs: [],
    }),
  );
  assert.ok(!rules.some((r) => r.includes('PREROUTING')), 'no inbound jump');
  assert.ok(!rules.some((r) => r.endsWith('-j KMTLS_REDIRECT')), 'no outbound redirect');
  assert.ok(rules.includes('-A KMTLS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006'));
  assert.ok(rules.includes('-A KMTLS_REDIRECT -p tcp -j REDIRECT --to-ports 16001'));
  assert.ok(rules.includes('-A KMTLS_OUTPUT -m owner --uid-owner 2000 -j RETURN'));
  assert.ok(rules.includes('-A KMTLS_OUTPUT -m owner --gid-owner 3000 -j RETURN'));
  // With '*', the non-default proxy ports are excluded too.
  const all = buildInterceptionRules(
    options({ inboundPort: 16006, outboundPort: 16001, excludeInboundPorts: [15000] }),
  );
  const excluded = all.filter((r) => r.startsWith('-A KMTLS_INBOUND') && r.endsWith('RETURN'));
  assert.deepEqual(
    excluded.map((r) => Number(r.split('--dport ')[1]?.split(' ')[0])),
    [15000, 15006, 15001, 15020, 15021, 16006, 16001],
  );
});

test('annotations: Istio’s names, lists with spaces and duplicates, defaults for what is absent', () => {
  const r = interceptionFromAnnotations({
    'traffic.sidecar.istio.io/includeInboundPorts': '8080, 9090,8080',
    'traffic.sidecar.istio.io/excludeOutboundPorts': '25',
    'traffic.sidecar.istio.io/excludeOutboundIPRanges': '169.254.169.254/32',
    'traffic.sidecar.istio.io/includeOutboundIPRanges': '*',
    'sidecar.istio.io/inject': 'true',
  });
  assert.ok(r.ok);
  assert.deepEqual(r.options, {
    ...DEFAULT_INTERCEPTION,
    includeInboundPorts: [8080, 9090],
    excludeOutboundPorts: [25],
    excludeOutboundCidrs: ['169.254.169.254/32'],
  });
  const none = interceptionFromAnnotations(undefined);
  assert.ok(none.ok);
  assert.deepEqual(none.options, DEFAULT_INTERCEPTION);
  const off = interceptionFromAnnotations({ 'traffic.sidecar.istio.io/includeOutboundIPRanges': '' });
  assert.ok(off.ok);
  assert.deepEqual(off.options.includeOutboundCidrs, []);
});

test('bad annotations: every one reported, coded, naming the annotation and the item', () => {
  const r = interceptionFromAnnotations({
    'traffic.sidecar.istio.io/excludeInboundPorts': '8080,http',
    'traffic.sidecar.istio.io/excludeOutboundPorts': '70000',
    'traffic.sidecar.istio.io/excludeOutboundIPRanges': '10.0.0.0',
    'traffic.sidecar.istio.io/includeOutboundIPRanges': '10.0.0.0/33',
    'traffic.sidecar.istio.io/includeInboundPorts': '0',
  });
  assert.ok(!r.ok);
  assert.deepEqual(
    r.errors.map((e) => [e.code, e.message]),
    [
      [
        'KMTLS_INJECT_BAD_ANNOTATION',
        'bad annotation traffic.sidecar.istio.io/includeInboundPorts: "0" ("0" is not a port (1..65535))',
      ],
      [
        'KMTLS_INJECT_BAD_ANNOTATION',
        'bad annotation traffic.sidecar.istio.io/excludeInboundPorts: "8080,http" ("http" is not a port (1..65535))',
      ],
      [
        'KMTLS_INJECT_BAD_ANNOTATION',
        'bad annotation traffic.sidecar.istio.io/excludeOutboundPorts: "70000" ("70000" is not a port (1..65535))',
      ],
      [
        'KMTLS_INJECT_BAD_ANNOTATION',
        'bad annotation traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0" ("10.0.0.0" is not a CIDR such as 10.0.0.0/8)',
      ],
      [
        'KMTLS_INJECT_BAD_ANNOTATION',
        'bad annotation traffic.sidecar.istio.io/includeOutboundIPRanges: "10.0.0.0/33" ("10.0.0.0/33" is not a CIDR such as 10.0.0.0/8)',
      ],
    ],
  );
  const star = interceptionFromAnnotations({ 'traffic.sidecar.istio.io/excludeOutboundPorts': '*' });
  assert.ok(!star.ok);
  assert.match(star.errors[0]!.message, /`\*` is not allowed here/);
});

test('flags: uid, gid defaulting to the uid, ports; equal inbound and outbound ports refused', () => {
  const nameOf = (k: string) => `--${k}`;
  const r = parseInterception(
    { proxyUid: '2000', inboundPort: '16006' },
    { code: 'KMTLS_CLI_USAGE', nameOf },
  );
  assert.ok(r.ok);
  assert.equal(r.options.proxyUid, 2000);
  assert.equal(r.options.proxyGid, 2000);
  assert.equal(r.options.inboundPort, 16006);
  const same = parseInterception({ inboundPort: '15001' }, { code: 'KMTLS_CLI_USAGE', nameOf });
  assert.ok(!same.ok);
  assert.equal(same.errors[0]!.code, 'KMTLS_CLI_USAGE');
  assert.match(same.errors[0]!.message, /must differ/);
  const uid = parseInterception({ proxyUid: '-1' }, { code: 'KMTLS_CLI_USAGE', nameOf });
  assert.ok(!uid.ok);
  assert.match(uid.errors[0]!.message, /--proxyUid: "-1" \(not a numeric uid\/gid\)/);
});

test('IPv6: new inbound TCP is reset on every intercepted port, loopback and excluded ports left open', () => {
  assert.equal(
    renderIp6tablesRestore(options({ excludeInboundPorts: [8083] })),
    [
      '*filter',
      ':KMTLS_INBOUND6 - [0:0]',
      '-A INPUT -p tcp -j KMTLS_INBOUND6',
      '-A KMTLS_INBOUND6 -i lo -j RETURN',
      ...[15000, 15006, 15001, 15020, 15021, 8083].map(
        (p) => `-A KMTLS_INBOUND6 -p tcp --dport ${p} -j RETURN`,
      ),
      '-A KMTLS_INBOUND6 -p tcp --syn -j REJECT --reject-with tcp-reset',
      'COMMIT',
      '',
    ].join('\n'),
  );
  assert.deepEqual(buildIpv6Rules(options({ includeInboundPorts: [8080, 9000] })), [
    '-A INPUT -p tcp -j KMTLS_INBOUND6',
    '-A KMTLS_INBOUND6 -i lo -j RETURN',
    '-A KMTLS_INBOUND6 -p tcp --dport 8080 --syn -j REJECT --reject-with tcp-reset',
    '-A KMTLS_INBOUND6 -p tcp --dport 9000 --syn -j REJECT --reject-with tcp-reset',
  ]);
  assert.equal(renderIp6tablesRestore(options({ includeInboundPorts: [] })), undefined);
  assert.equal(ip6tablesCommand('iptables'), 'ip6tables');
  assert.equal(ip6tablesCommand('iptables-legacy'), 'ip6tables-legacy');
  assert.equal(ip6tablesCommand('/usr/sbin/iptables-nft'), '/usr/sbin/ip6tables-nft');
});
