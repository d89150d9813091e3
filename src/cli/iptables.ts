import { KmtlsError } from '../errors.js';
import type { InterceptionText } from '../kube/iptables.js';
import {
  buildInterceptionRules,
  buildIpv6Rules,
  parseInterception,
  renderIp6tablesRestore,
  renderIptablesRestore,
} from '../kube/iptables.js';
import { applyInterception, cleanInterception } from '../kube/iptables-apply.js';
import { parseCommandArgs } from './args.js';
import type { CommandIo } from './io.js';

export const IPTABLES_USAGE = `Usage:
  kmtls iptables apply|clean|print [flags]

Transparent interception for a pod, as Istio's istio-iptables sets it up (nat table, REDIRECT):
inbound TCP goes to the sidecar's inbound port, outbound TCP to its outbound port; the proxy's own
uid/gid is never redirected. Run in the pod's network namespace, as root or with NET_ADMIN.
IPv6 is not intercepted: new inbound IPv6 TCP connections to intercepted ports are reset
(ip6tables, filter table) so they cannot bypass STRICT; without ip6tables, a warning.

  apply    replace kmtls's rules with these (one iptables-restore transaction)
  clean    remove kmtls's chains and the jumps to them (IPv4 nat, IPv6 filter)
  print    write the iptables-restore input (the ip6tables one as comments), apply nothing

Flags (Istio's defaults):
  --proxy-uid 1337                 --proxy-gid (the uid)
  --inbound-port 15006             --outbound-port 15001
  --include-inbound-ports '*'      comma-separated ports, '*' for all, '' for none
  --exclude-inbound-ports P,...    15000,15001,15006,15020,15021 are always excluded
  --exclude-outbound-ports P,...
  --exclude-outbound-cidrs C,...   e.g. 169.254.169.254/32
  --include-outbound-cidrs '*'     comma-separated CIDRs, '*' for all, '' for none
  --iptables iptables              iptables-legacy or iptables-nft to pick a backend
`;

const FLAG_OF: Record<keyof InterceptionText, string> = {
  proxyUid: '--proxy-uid',
  proxyGid: '--proxy-gid',
  inboundPort: '--inbound-port',
  outboundPort: '--outbound-port',
  includeInboundPorts: '--include-inbound-ports',
  excludeInboundPorts: '--exclude-inbound-ports',
  excludeOutboundPorts: '--exclude-outbound-ports',
  excludeOutboundCidrs: '--exclude-outbound-cidrs',
  includeOutboundCidrs: '--include-outbound-cidrs',
};

export async function runIptables(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    'proxy-uid': { type: 'string' },
    'proxy-gid': { type: 'string' },
    'inbound-port': { type: 'string' },
    'outbound-port': { type: 'string' },
    'include-inbound-ports': { type: 'string' },
    'exclude-inbound-ports': { type: 'string' },
    'exclude-outbound-ports': { type: 'string' },
    'exclude-outbound-cidrs': { type: 'string' },
    'include-outbound-cidrs': { type: 'string' },
    iptables: { type: 'string' },
    output: { type: 'string', short: 'o' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help || positionals[0] === 'help') {
    io.stdout(IPTABLES_USAGE);
    return 0;
  }
  const [action, ...extra] = positionals;
  if (action !== 'apply' && action !== 'clean' && action !== 'print')
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `kmtls iptables needs apply, clean or print${action ? `, not ${JSON.stringify(action)}` : ''}\n\n${IPTABLES_USAGE}`,
    );
  if (extra.length > 0)
    throw new KmtlsError('KMTLS_CLI_USAGE', `unexpected arguments: ${extra.join(' ')} (see --help)`);
  const output = values.output ?? 'text';
  if (output !== 'text' && output !== 'json')
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `unknown output format: ${JSON.stringify(output)} (use text or json)`,
    );
  const iptables = values.iptables ?? 'iptables';
  if (!/^[A-Za-z0-9_./-]+$/.test(iptables))
    throw new KmtlsError('KMTLS_CLI_USAGE', `not a command name: --iptables ${JSON.stringify(iptables)}`);

  if (action === 'clean') {
    const { removedRules, warnings } = await cleanInterception({ iptables });
    for (const w of warnings) io.stderr(`warning: ${w}\n`);
    if (output === 'json') io.stdout(`${JSON.stringify({ action, removedRules, warnings })}\n`);
    else io.stdout(`removed kmtls interception (${removedRules} jump rule(s))\n`);
    return 0;
  }

  const text: Record<string, string> = {};
  for (const [key, flag] of Object.entries(FLAG_OF)) {
    const value = (values as Record<string, string | undefined>)[flag.slice(2)];
    if (value !== undefined) text[key] = value;
  }
  const parsed = parseInterception(text, {
    code: 'KMTLS_CLI_USAGE',
    nameOf: (key) => FLAG_OF[key],
  });
  if (!parsed.ok)
    throw new KmtlsError('KMTLS_CLI_USAGE', parsed.errors.map((e) => e.message).join('; '), {
      cause: parsed.errors[0],
    });
  const options = parsed.options;
  if (action === 'print') {
    if (output === 'json')
      io.stdout(
        `${JSON.stringify({ options, rules: buildInterceptionRules(options), ipv6Rules: buildIpv6Rules(options) }, null, 2)}\n`,
      );
    else {
      io.stdout(renderIptablesRestore(options));
      const v6 = renderIp6tablesRestore(options);
      // Commented out, so the output still pipes into iptables-restore as it is.
      if (v6)
        io.stdout(
          `# ip6tables-restore --noflush input (IPv6 inbound rejection):\n${v6
            .trimEnd()
            .split('\n')
            .map((l) => `# ${l}`)
            .join('\n')}\n`,
        );
    }
    return 0;
  }
  const { ipv6, warnings } = await applyInterception(options, { iptables });
  for (const w of warnings) io.stderr(`warning: ${w}\n`);
  if (output === 'json') io.stdout(`${JSON.stringify({ action, options, ipv6, warnings })}\n`);
  else
    io.stdout(
      `applied kmtls interception: inbound -> ${options.inboundPort}, outbound -> ${options.outboundPort}, proxy uid ${options.proxyUid} gid ${options.proxyGid} exempt; IPv6 inbound ${ipv6 === 'rejected' ? 'rejected (not intercepted)' : ipv6 === 'none' ? 'needs no rules' : 'NOT blocked (see warning)'}\n`,
    );
  return 0;
}
