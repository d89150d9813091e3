import { watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { parse as parseYaml } from 'yaml';
import { KmtlsError } from '../errors.js';
import type { ProxyConfig } from '../mesh/index.js';
import { controlPlaneIdentity, parseProxyConfig, proxyConfigSchema } from '../mesh/index.js';
import type { ProxyIdentity } from '../proxy/index.js';
import {
  APP_PROBERS_ENV,
  accessLog,
  buildIdentity,
  ControlPlaneClient,
  fanOut,
  ProxyMetrics,
  parseAddress,
  parseAppProbers,
  RecentConnections,
  Sidecar,
  startAdmin,
  startStatusServer,
} from '../proxy/index.js';
import { originalDstLookup } from '../proxy/original-dst.js';
import { parseCommandArgs } from './args.js';
import type { CommandIo } from './io.js';

export const PROXY_USAGE = `Usage:
  kmtls proxy --config FILE --cert-dir DIR [--log-level info]
  kmtls proxy --control-plane ADDR --pod NS/NAME --token-file FILE --ca-root FILE
              [--admin ADDR] [--status ADDR] [--transparent] [--trust-domain TD]
              [--control-plane-identity SPIFFE_ID] [--log-level info]

Standalone: FILE is a ProxyConfig (YAML or JSON; see docs/proxy.md). DIR holds cert-chain.pem,
key.pem and root-cert.pem (what kmtls ca issue writes). Both are watched: a valid change applies to
new connections at once; an invalid one is reported and the last good one stays.

With a control plane: the key is made in memory, the first certificate is requested with the
bootstrap token in FILE and renewed with the certificate itself; ProxyConfig versions arrive as a
stream. Without the control plane the proxy keeps serving its last config and certificate.
`;

async function readConfigText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_PROXY_CONFIG_INVALID',
      `cannot read proxy config ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}

function parseConfig(file: string, text: string): ProxyConfig {
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_PROXY_CONFIG_INVALID',
      `proxy config ${file} is not YAML/JSON: ${(err as Error).message.split('\n')[0]}`,
    );
  }
  const r = parseProxyConfig(value);
  if (!r.ok)
    throw new KmtlsError(
      'KMTLS_PROXY_CONFIG_INVALID',
      `invalid proxy config ${file}: ${r.problems.join('; ')}`,
    );
  return r.config;
}

async function readIdentity(dir: string): Promise<ProxyIdentity> {
  const read = async (name: string) => {
    try {
      return await readFile(path.join(dir, name), 'utf8');
    } catch (err) {
      throw new KmtlsError(
        'KMTLS_PROXY_CERTS_INVALID',
        `cannot read ${path.join(dir, name)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
  };
  return buildIdentity({
    chainPem: await read('cert-chain.pem'),
    keyPem: await read('key.pem'),
    bundlePem: await read('root-cert.pem'),
  });
}

/** Long-running: resolves with an exit code when SIGINT/SIGTERM stops the proxy. */
export async function runProxy(argv: readonly string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    config: { type: 'string' },
    'cert-dir': { type: 'string' },
    'control-plane': { type: 'string' },
    pod: { type: 'string' },
    'token-file': { type: 'string' },
    'ca-root': { type: 'string' },
    admin: { type: 'string' },
    status: { type: 'string' },
    transparent: { type: 'boolean' },
    'control-plane-identity': { type: 'string' },
    'trust-domain': { type: 'string' },
    'log-level': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout(PROXY_USAGE);
    return 0;
  }
  if (values['control-plane'] !== undefined) return runManagedProxy(values);
  if (!values.config || !values['cert-dir'])
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `kmtls proxy needs --config FILE and --cert-dir DIR\n\n${PROXY_USAGE}`,
    );
  const configFile = values.config;
  const certDir = values['cert-dir'];
  const root = pino({ level: values['log-level'] ?? 'info', base: null });
  const log = root.child({ component: 'proxy' });
  let configText = await readConfigText(configFile);
  const config = parseConfig(configFile, configText);
  let identity: ProxyIdentity | undefined;
  try {
    identity = await readIdentity(certDir);
  } catch (err) {
    // Not fatal: the proxy starts not ready and picks the certificate up when it appears.
    log.warn({ code: (err as KmtlsError).code, err: (err as Error).message }, 'no certificate yet');
  }
  const metrics = new ProxyMetrics(config.workload);
  const proxy = new Sidecar(config, {
    clock: { now: Date.now },
    observer: fanOut(metrics, accessLog(root.child({ component: 'access' }))),
    ...(identity ? { identity } : {}),
  });
  try {
    await proxy.start();
  } catch (err) {
    await proxy.stop();
    // A coded refusal (transparent mode without the original-dst addon) keeps its own code.
    if (err instanceof KmtlsError) throw err;
    throw new KmtlsError('KMTLS_PROXY_LISTEN', `cannot listen: ${(err as Error).message}`, { cause: err });
  }
  const admin = config.admin ? await startAdmin(proxy, metrics, parseAddress(config.admin)) : undefined;

  // Reload on change; a bad file is reported and the last good one keeps serving.
  let reloading = Promise.resolve();
  const reload = (what: 'config' | 'certs') => {
    reloading = reloading.then(async () => {
      try {
        if (what === 'config') {
          const text = await readConfigText(configFile);
          // The directory is watched: most events there leave the config as it was.
          if (text === configText) return;
          configText = text;
          await proxy.applyConfig(parseConfig(configFile, text));
          log.info({ version: proxy.config.version }, 'config applied');
        } else {
          const next = await readIdentity(certDir);
          proxy.setIdentity(next);
          log.info(
            {
              identity: next.identity,
              serial: next.serial.toLowerCase(),
              notAfter: next.notAfter.toISOString(),
            },
            'certificate loaded',
          );
        }
      } catch (err) {
        log.error(
          { code: (err as KmtlsError).code, err: (err as Error).message },
          `${what} change refused; keeping the last good one`,
        );
      }
    });
  };
  // The config's directory, not the file: a file replaced by rename (editors, ConfigMap volumes'
  // symlink swap) would leave a watch on the file itself attached to the old, deleted inode.
  const watchers = [
    watch(path.dirname(configFile), () => reload('config')),
    watch(certDir, () => reload('certs')),
  ];
  // A change made between the first read and the watches would be missed: look once more.
  reload('config');
  await reloading;
  log.info(
    {
      identity: identity?.identity,
      inbound: config.inbound.length,
      outbound: config.outbound.length,
      admin: config.admin,
      interception: config.interception,
    },
    'proxy started',
  );

  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  for (const w of watchers) w.close();
  await reloading;
  await proxy.stop();
  admin?.close();
  log.info('proxy stopped');
  return 0;
}

/** The sidecar under a control plane: certificate and config come from it. */
async function runManagedProxy(values: {
  'control-plane'?: string | undefined;
  pod?: string | undefined;
  'token-file'?: string | undefined;
  'ca-root'?: string | undefined;
  admin?: string | undefined;
  status?: string | undefined;
  transparent?: boolean | undefined;
  'control-plane-identity'?: string | undefined;
  'trust-domain'?: string | undefined;
  'log-level'?: string | undefined;
}): Promise<number> {
  const pod = values.pod;
  const tokenFile = values['token-file'];
  const caRoot = values['ca-root'];
  if (!pod || !/^[^/]+\/[^/]+$/.test(pod) || !tokenFile || !caRoot)
    throw new KmtlsError(
      'KMTLS_CLI_USAGE',
      `kmtls proxy --control-plane needs --pod NS/NAME, --token-file FILE and --ca-root FILE\n\n${PROXY_USAGE}`,
    );
  const address = parseAddress(values['control-plane'] ?? '');
  const [namespace, name] = pod.split('/') as [string, string];
  const trustDomain = values['trust-domain'] ?? 'cluster.local';
  const root = pino({ level: values['log-level'] ?? 'info', base: null });
  const log = root.child({ component: 'proxy', pod });
  let rootsPem: string;
  try {
    rootsPem = await readFile(caRoot, 'utf8');
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_PROXY_CERTS_INVALID',
      `cannot read ${caRoot}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  // Until the first config arrives the proxy listens nowhere but on its admin port.
  const placeholder = proxyConfigSchema.parse({
    version: '0',
    workload: { namespace, name, identity: `spiffe://${trustDomain}/ns/${namespace}/sa/unknown` },
    trustDomains: [trustDomain],
  });
  const metrics = new ProxyMetrics({ namespace, name });
  const recent = new RecentConnections();
  const clock = { now: Date.now };
  const proxy = new Sidecar(placeholder, {
    clock,
    observer: fanOut(metrics, recent, accessLog(root.child({ component: 'access', pod }))),
    configured: false,
  });
  const client = new ControlPlaneClient({
    address,
    pod,
    token: async () => (await readFile(tokenFile, 'utf8')).trim(),
    rootsPem,
    controlPlaneIdentity: values['control-plane-identity'] ?? controlPlaneIdentity(trustDomain),
    clock,
    log,
    applyConfig: async (config) => {
      if (config.workload.namespace !== namespace || config.workload.name !== name)
        throw new KmtlsError(
          'KMTLS_PROXY_CONFIG_INVALID',
          `config is for ${config.workload.namespace}/${config.workload.name}, not ${pod}`,
        );
      await proxy.applyConfig(config);
    },
    setIdentity: (identity) => proxy.setIdentity(identity),
  });
  const admin = values.admin
    ? await startAdmin(proxy, metrics, parseAddress(values.admin), {
        connections: recent,
        controlPlane: () => {
          const id = proxy.identity;
          return {
            ...client.status(),
            certificateTimeLeftSeconds: id
              ? Math.floor((id.notAfter.getTime() - clock.now()) / 1000)
              : undefined,
          };
        },
      })
    : undefined;
  // The status port: readiness for the kubelet, and the application's own probes run from here, so
  // the kubelet's plaintext probes keep working when the application's ports are STRICT.
  const status = values.status
    ? await startStatusServer({
        listen: parseAddress(values.status),
        probers: parseAppProbers(process.env[APP_PROBERS_ENV]),
        ready: () => proxy.isReady(),
      })
    : undefined;
  if (values.transparent) {
    // Fails now, with a coded error, rather than on the first redirected connection.
    originalDstLookup();
  }
  void client.start();
  log.info(
    { controlPlane: values['control-plane'], admin: values.admin, status: values.status },
    'proxy started',
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  client.stop();
  await proxy.stop();
  admin?.closeAllConnections();
  admin?.close();
  status?.closeAllConnections();
  status?.close();
  log.info('proxy stopped');
  return 0;
}
