import type {
  ClientTlsMode,
  ClientTlsSettings,
  DestinationRule,
  PortTrafficPolicy,
  Subset,
  TrafficPolicy,
} from './model.js';
import { CLIENT_TLS_MODES } from './model.js';
import type { Path, RawResource } from './raw.js';
import { Checker } from './raw.js';
import type { Validated } from './validate-peer-authentication.js';
import { checkWorkloadSelector } from './validate-peer-authentication.js';

const TRAFFIC_POLICY_FIELDS = [
  'loadBalancer',
  'connectionPool',
  'outlierDetection',
  'tls',
  'portLevelSettings',
  'tunnel',
  'proxyProtocol',
  'retryBudget',
];
const PORT_POLICY_FIELDS = ['port', 'loadBalancer', 'connectionPool', 'outlierDetection', 'tls'];
const TLS_FIELDS = [
  'mode',
  'clientCertificate',
  'privateKey',
  'caCertificates',
  'credentialName',
  'subjectAltNames',
  'sni',
  'insecureSkipVerify',
  'caCrl',
];
// Istio's labels.IsDNS1123Label: upper case allowed, at most 63 characters.
const DNS1123_LABEL = /^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$/;

/** Istio's `ValidateWildcardDomain`: a DNS name whose first label alone may be `*`. */
export function checkWildcardDomain(host: string): string | undefined {
  if (host === '') return 'empty domain name not allowed';
  if (host.length > 255) return `domain name ${JSON.stringify(host)} too long (max 255)`;
  if (host === '*') return undefined;
  const labels = host.split('.');
  for (const [i, label] of labels.entries()) {
    // Istio's ValidateDNS1123Labels allows a trailing dot (`istio.io.`).
    if (i > 0 && i === labels.length - 1 && label === '') continue;
    if (
      i === 0 &&
      (label === '*' || (label.startsWith('*') && label.length > 1 && /^\*[-a-z0-9]*$/i.test(label)))
    )
      continue;
    if (!/^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$/.test(label)) {
      return `domain name ${JSON.stringify(host)} invalid (label ${JSON.stringify(label)} invalid)`;
    }
  }
  const tld = labels[labels.length - 1] ?? '';
  if (labels.length > 1 && /^[0-9]+$/.test(tld)) {
    return `domain name ${JSON.stringify(host)} invalid (top level domain ${JSON.stringify(tld)} cannot be all-numeric)`;
  }
  return undefined;
}

function checkTls(c: Checker, value: unknown, path: Path): ClientTlsSettings | undefined {
  const tls = c.object(value, path);
  if (tls === undefined) return undefined;
  c.unknownFields(tls, TLS_FIELDS, path);
  let mode: ClientTlsMode = 'DISABLE';
  const rawMode = c.string(tls.mode, [...path, 'mode']);
  if (rawMode !== undefined) {
    if ((CLIENT_TLS_MODES as readonly string[]).includes(rawMode)) {
      mode = rawMode as ClientTlsMode;
    } else {
      const near = CLIENT_TLS_MODES.find((m) => m === rawMode.toUpperCase());
      c.report(
        'KMTLS_DR_INVALID_TLS_MODE',
        [...path, 'mode'],
        `unsupported TLS mode: ${JSON.stringify(rawMode)} (supported values: ${CLIENT_TLS_MODES.join(', ')}; case-sensitive)`,
        near ? { hint: `write ${near}` } : {},
      );
    }
  }
  const str = (k: string) => c.string(tls[k], [...path, k]);
  const clientCertificate = str('clientCertificate');
  const privateKey = str('privateKey');
  const caCertificates = str('caCertificates');
  const credentialName = str('credentialName');
  const caCrl = str('caCrl');
  const sni = str('sni');
  const insecureSkipVerify = c.boolean(tls.insecureSkipVerify, [...path, 'insecureSkipVerify']);
  const sanList = c.array(tls.subjectAltNames, [...path, 'subjectAltNames']);
  const subjectAltNames = sanList
    ?.map((s, i) => c.string(s, [...path, 'subjectAltNames', i]))
    .filter((s): s is string => s !== undefined);

  // Istio's agent.ValidateTLS, in its order.
  if (insecureSkipVerify === true) {
    if (mode === 'SIMPLE' && (caCertificates || credentialName || subjectAltNames?.length)) {
      c.report(
        'KMTLS_DR_TLS_FIELDS',
        path,
        'cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true',
      );
    }
    if (mode === 'MUTUAL' && (caCertificates || subjectAltNames?.length)) {
      c.report(
        'KMTLS_DR_TLS_FIELDS',
        path,
        'cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true',
      );
    }
  }
  if ((mode === 'SIMPLE' || mode === 'MUTUAL') && credentialName) {
    if (clientCertificate || caCertificates || privateKey || caCrl) {
      c.report(
        'KMTLS_DR_TLS_FIELDS',
        path,
        'cannot specify client certificates or CA certificate or CA CRL If credentialName is set',
      );
    }
  } else if (mode === 'MUTUAL') {
    if (!clientCertificate)
      c.report('KMTLS_DR_MUTUAL_WITHOUT_CERTS', path, 'client certificate required for mutual tls');
    if (!privateKey) c.report('KMTLS_DR_MUTUAL_WITHOUT_CERTS', path, 'private key required for mutual tls');
  }
  if (mode === 'ISTIO_MUTUAL' && (clientCertificate || privateKey || caCertificates || credentialName)) {
    // Istio's webhook accepts this, but the API says these fields must be empty and the proxy
    // ignores them: the mesh certificate is used. A warning, not an error, to stay exact.
    c.report(
      'KMTLS_DR_ISTIO_MUTUAL_WITH_CERTS',
      path,
      'certificate fields are ignored with ISTIO_MUTUAL (the mesh certificate is used)',
      { hint: 'remove them, or use MUTUAL to send your own certificate' },
    );
  }
  return {
    mode,
    ...(clientCertificate !== undefined ? { clientCertificate } : {}),
    ...(privateKey !== undefined ? { privateKey } : {}),
    ...(caCertificates !== undefined ? { caCertificates } : {}),
    ...(credentialName !== undefined ? { credentialName } : {}),
    ...(subjectAltNames !== undefined ? { subjectAltNames } : {}),
    ...(sni !== undefined ? { sni } : {}),
    ...(insecureSkipVerify !== undefined ? { insecureSkipVerify } : {}),
  };
}

function checkTrafficPolicy(c: Checker, value: unknown, path: Path): TrafficPolicy | undefined {
  const tp = c.object(value, path);
  if (tp === undefined) return undefined;
  c.unknownFields(tp, TRAFFIC_POLICY_FIELDS, path);
  if (!TRAFFIC_POLICY_FIELDS.some((f) => tp[f] !== undefined && tp[f] !== null)) {
    c.report('KMTLS_DR_EMPTY_TRAFFIC_POLICY', path, 'traffic policy must have at least one field');
  }
  const tls = checkTls(c, tp.tls, [...path, 'tls']);
  const portLevelSettings: PortTrafficPolicy[] = [];
  const list = c.array(tp.portLevelSettings, [...path, 'portLevelSettings']) ?? [];
  list.forEach((item, i) => {
    const at = [...path, 'portLevelSettings', i];
    const entry = c.object(item, at);
    if (entry === undefined) {
      c.report('KMTLS_DR_PORT_SETTING_WITHOUT_PORT', at, 'traffic policy may not be null');
      return;
    }
    c.unknownFields(entry, PORT_POLICY_FIELDS, at);
    const port = c.object(entry.port, [...at, 'port']);
    const number = port ? c.integer(port.number, [...at, 'port', 'number']) : undefined;
    if (port === undefined) {
      c.report('KMTLS_DR_PORT_SETTING_WITHOUT_PORT', at, 'portTrafficPolicy must have valid port');
    } else if (number !== undefined && (number < 0 || number > 4294967295)) {
      c.report('KMTLS_DR_PORT_RANGE', [...at, 'port', 'number'], `port number out of range: ${number}`);
    }
    if (
      !['loadBalancer', 'connectionPool', 'outlierDetection', 'tls'].some(
        (f) => entry[f] !== undefined && entry[f] !== null,
      )
    ) {
      c.report('KMTLS_DR_EMPTY_TRAFFIC_POLICY', at, 'port traffic policy must have at least one field');
    }
    const portTls = checkTls(c, entry.tls, [...at, 'tls']);
    portLevelSettings.push({ port: number ?? 0, tls: portTls });
  });
  const lb = c.object(tp.loadBalancer, [...path, 'loadBalancer']);
  return { tls, portLevelSettings, loadBalancerPassthrough: lb?.simple === 'PASSTHROUGH' };
}

/**
 * Validates a DestinationRule as Istio's CRD schema and webhook do, for the parts that matter to
 * TLS: host, traffic policies at every level, subsets, exportTo, workloadSelector.
 */
export function validateDestinationRule(raw: RawResource): Validated<DestinationRule> {
  const c = new Checker(raw);
  const spec = c.object(raw.spec, ['spec']) ?? {};
  c.unknownFields(spec, ['host', 'trafficPolicy', 'subsets', 'exportTo', 'workloadSelector'], ['spec']);
  const host = c.string(spec.host, ['spec', 'host']);
  if (host === undefined) {
    c.report('KMTLS_DR_MISSING_HOST', ['spec'], 'spec.host is required');
  } else {
    const problem = checkWildcardDomain(host);
    if (problem) c.report('KMTLS_DR_MISSING_HOST', ['spec', 'host'], problem);
  }
  const trafficPolicy = checkTrafficPolicy(c, spec.trafficPolicy, ['spec', 'trafficPolicy']);
  const subsets: Subset[] = [];
  const seen = new Set<string>();
  (c.array(spec.subsets, ['spec', 'subsets']) ?? []).forEach((item, i) => {
    const at = ['spec', 'subsets', i];
    const s = c.object(item, at);
    if (s === undefined) {
      c.report('KMTLS_DR_SUBSET_NAME', at, 'subset may not be null');
      return;
    }
    c.unknownFields(s, ['name', 'labels', 'trafficPolicy'], at);
    const name = c.string(s.name, [...at, 'name']) ?? '';
    if (name === '') c.report('KMTLS_DR_SUBSET_NAME', at, 'subset name cannot be empty');
    else if (!DNS1123_LABEL.test(name))
      c.report('KMTLS_DR_SUBSET_NAME', [...at, 'name'], `subset name is invalid: ${name}`);
    if (seen.has(name))
      c.report('KMTLS_DR_DUPLICATE_SUBSET', [...at, 'name'], `duplicate subset names: ${name}`);
    seen.add(name);
    const labels = c.stringMap(s.labels, [...at, 'labels']) ?? {};
    subsets.push({
      name,
      labels,
      trafficPolicy: checkTrafficPolicy(c, s.trafficPolicy, [...at, 'trafficPolicy']),
    });
  });
  const exportTo = (c.array(spec.exportTo, ['spec', 'exportTo']) ?? [])
    .map((e, i) => c.string(e, ['spec', 'exportTo', i]))
    .filter((e): e is string => e !== undefined);
  const workloadSelector =
    spec.workloadSelector === undefined
      ? undefined
      : checkWorkloadSelector(c, spec.workloadSelector, ['spec', 'workloadSelector']);

  if (c.hasErrors() || host === undefined) return { value: undefined, diagnostics: c.diagnostics };
  return {
    value: {
      kind: 'DestinationRule',
      apiVersion: raw.apiVersion,
      meta: raw.meta,
      host,
      trafficPolicy,
      subsets,
      exportTo,
      workloadSelector,
      locate: raw.locate,
    },
    diagnostics: c.diagnostics,
  };
}
