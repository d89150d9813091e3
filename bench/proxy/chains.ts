/**
 * The chains the sidecar bench drives, all on 127.0.0.1: the backend alone (direct), and the same
 * backend behind two proxies, client side → server side, with mutual TLS between them, built from
 * kmtls, from nginx (stream) and from haproxy. Every chain uses the same two certificates, issued by
 * `kmtls ca issue` for two service accounts.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type ChainCerts,
  haproxyClientConf,
  haproxyServerConf,
  kmtlsClientConfig,
  kmtlsServerConfig,
  nginxBackendConf,
  nginxClientConf,
  nginxServerConf,
  type SideCerts,
} from './configs.js';
import type { Started } from './processes.js';
import { childPids, freePort, startProcess, waitForPort } from './processes.js';
import type { NginxTool, Tools } from './tools.js';

/**
 * `kmtls-info`: kmtls with `--log-level info` (an access-log line per connection). `nginx-full`,
 * `haproxy-full`: a second client side without TLS session reuse, in front of the same server side,
 * so that every new connection is a full handshake. `node-relay`: the floor under any Node sidecar
 * (bench/proxy/node-relay.mjs), so that what Node costs can be told from what kmtls adds.
 */
export type ChainId =
  | 'direct'
  | 'kmtls'
  | 'kmtls-info'
  | 'node-relay'
  | 'nginx'
  | 'haproxy'
  | 'nginx-full'
  | 'haproxy-full';
export type SidecarRole = 'client' | 'server';

/** One proxy of a chain: the processes whose CPU and memory count for it. */
export interface Sidecar {
  readonly role: SidecarRole;
  /** Read when measuring: nginx's worker is a child of the master. */
  pids(): number[];
}

export interface Chain {
  readonly id: ChainId;
  /** Where the load generators connect: the client side, or the backend for `direct`. */
  readonly entryPort: number;
  /** Where the server side listens (mTLS), for chains with sidecars. */
  readonly serverPort?: number;
  readonly sidecars: readonly Sidecar[];
  /** Processes to check are still alive. */
  readonly processes: readonly Started[];
}

export interface Backend {
  readonly kind: 'nginx' | 'node';
  readonly port: number;
  readonly process: Started;
}

function firstPem(text: string): string {
  const m = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/.exec(text);
  if (m === null) throw new Error('BUG: kmtls ca issue wrote no certificate');
  return m[0].endsWith('\n') ? m[0] : `${m[0]}\n`;
}

/** A throwaway CA and one certificate per side, made with the kmtls CLI as a user would. */
export function issueCerts(dir: string, repoRoot: string): ChainCerts {
  const kmtls = (...args: string[]) =>
    execFileSync(process.execPath, [path.join(repoRoot, 'bin/kmtls.js'), ...args], {
      cwd: dir,
      encoding: 'utf8',
    });
  const state = path.join(dir, 'ca-state');
  kmtls('ca', 'init', '--state-dir', state);
  const side = (sa: SidecarRole): SideCerts => {
    const out = path.join(dir, `certs-${sa}`);
    kmtls(
      'ca',
      'issue',
      '--namespace',
      'bench',
      '--service-account',
      sa,
      '--out-dir',
      out,
      '--state-dir',
      state,
    );
    const leafPem = firstPem(readFileSync(path.join(out, 'cert-chain.pem'), 'utf8'));
    const keyPem = readFileSync(path.join(out, 'key.pem'), 'utf8');
    const leaf = path.join(out, 'leaf.pem');
    const combined = path.join(out, 'leaf-and-key.pem');
    writeFileSync(leaf, leafPem);
    writeFileSync(combined, leafPem + keyPem);
    return {
      dir: out,
      identity: `spiffe://cluster.local/ns/bench/sa/${sa}`,
      leaf,
      key: path.join(out, 'key.pem'),
      combined,
    };
  };
  const client = side('client');
  const server = side('server');
  return { root: path.join(client.dir, 'root-cert.pem'), client, server };
}

function startNginx(name: string, nginx: NginxTool, dir: string, conf: string): Started {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'nginx.conf');
  writeFileSync(file, conf);
  return startProcess(
    name,
    nginx.bin,
    ['-p', dir, '-c', file, '-e', path.join(dir, 'error.log')],
    path.join(dir, 'out.log'),
  );
}

const nginxSidecar = (role: SidecarRole, master: Started): Sidecar => ({
  role,
  // The master is counted with its worker: both are what the sidecar costs.
  pids: () => [master.pid, ...childPids(master.pid)],
});

const singleProcess = (role: SidecarRole, p: Started): Sidecar => ({ role, pids: () => [p.pid] });

/** A chain whose two sides were just started: ready once both listen. */
async function startedChain(
  id: ChainId,
  clientPort: number,
  serverPort: number,
  client: Started,
  server: Started,
  sidecar: (role: SidecarRole, p: Started) => Sidecar = singleProcess,
): Promise<Chain> {
  await waitForPort(serverPort, server);
  await waitForPort(clientPort, client);
  return {
    id,
    entryPort: clientPort,
    serverPort,
    sidecars: [sidecar('client', client), sidecar('server', server)],
    processes: [client, server],
  };
}

export async function startBackend(tools: Tools, dir: string, repoRoot: string): Promise<Backend> {
  const port = await freePort();
  const backendDir = path.join(dir, 'backend');
  mkdirSync(backendDir, { recursive: true });
  const p = tools.nginx
    ? startNginx('backend (nginx)', tools.nginx, backendDir, nginxBackendConf(backendDir, port))
    : startProcess(
        'backend (node)',
        process.execPath,
        ['--import', 'tsx', path.join(repoRoot, 'bench/proxy/backend-main.ts'), String(port)],
        path.join(backendDir, 'out.log'),
      );
  await waitForPort(port, p);
  return { kind: tools.nginx ? 'nginx' : 'node', port, process: p };
}

export function directChain(backend: Backend): Chain {
  return { id: 'direct', entryPort: backend.port, sidecars: [], processes: [backend.process] };
}

/** Two `kmtls proxy` processes, as a user runs them: client outbound ISTIO_MUTUAL → server inbound STRICT. */
export async function startKmtlsChain(
  id: 'kmtls' | 'kmtls-info',
  dir: string,
  repoRoot: string,
  certs: ChainCerts,
  backend: Backend,
  logLevel: 'warn' | 'info',
  /** Node flags for the client sidecar only (the bench's workaround preload, when it needs one). */
  clientNodeArgs: readonly string[] = [],
): Promise<Chain> {
  const chainDir = path.join(dir, id);
  mkdirSync(chainDir, { recursive: true });
  const clientPort = await freePort();
  const serverPort = await freePort();
  const start = (role: SidecarRole, config: object, cert: SideCerts) => {
    const file = path.join(chainDir, `${role}.json`);
    writeFileSync(file, JSON.stringify(config, null, 2));
    return startProcess(
      `${id} ${role} sidecar`,
      process.execPath,
      [
        ...(role === 'client' ? clientNodeArgs : []),
        path.join(repoRoot, 'bin/kmtls.js'),
        'proxy',
        '--config',
        file,
        '--cert-dir',
        cert.dir,
        '--log-level',
        logLevel,
      ],
      path.join(chainDir, `${role}.log`),
    );
  };
  const server = start('server', kmtlsServerConfig(serverPort, backend.port, certs), certs.server);
  const client = start('client', kmtlsClientConfig(clientPort, serverPort, certs), certs.client);
  return startedChain(id, clientPort, serverPort, client, server);
}

export async function startNginxChain(
  nginx: NginxTool,
  dir: string,
  certs: ChainCerts,
  backend: Backend,
): Promise<Chain> {
  const clientPort = await freePort();
  const serverPort = await freePort();
  const serverDir = path.join(dir, 'nginx-server');
  const clientDir = path.join(dir, 'nginx-client');
  const server = startNginx(
    'nginx server sidecar',
    nginx,
    serverDir,
    nginxServerConf(serverDir, nginx.loadStream, serverPort, backend.port, certs),
  );
  const client = startNginx(
    'nginx client sidecar',
    nginx,
    clientDir,
    nginxClientConf(clientDir, nginx.loadStream, clientPort, serverPort, certs, {
      verifyServer: false,
      sessionReuse: true,
    }),
  );
  return startedChain('nginx', clientPort, serverPort, client, server, nginxSidecar);
}

const NODE_RELAY = fileURLToPath(new URL('./node-relay.mjs', import.meta.url));

/** Two processes of bench/proxy/node-relay.mjs: mTLS with the same certificates, and nothing else. */
export async function startNodeRelayChain(dir: string, certs: ChainCerts, backend: Backend): Promise<Chain> {
  const chainDir = path.join(dir, 'node-relay');
  mkdirSync(chainDir, { recursive: true });
  const clientPort = await freePort();
  const serverPort = await freePort();
  const start = (role: SidecarRole, listen: number, target: number, cert: SideCerts) =>
    startProcess(
      `node relay ${role} side`,
      process.execPath,
      [NODE_RELAY, role, String(listen), String(target), cert.leaf, cert.key, certs.root],
      path.join(chainDir, `${role}.log`),
    );
  const server = start('server', serverPort, backend.port, certs.server);
  const client = start('client', clientPort, serverPort, certs.client);
  return startedChain('node-relay', clientPort, serverPort, client, server);
}

export async function startHaproxyChain(
  haproxy: string,
  dir: string,
  certs: ChainCerts,
  backend: Backend,
): Promise<Chain> {
  const clientPort = await freePort();
  const serverPort = await freePort();
  const chainDir = path.join(dir, 'haproxy');
  mkdirSync(chainDir, { recursive: true });
  const start = (role: SidecarRole, conf: string) => {
    const file = path.join(chainDir, `${role}.cfg`);
    writeFileSync(file, conf);
    // -db: foreground, one process (no master-worker), so its pid is the proxy's.
    return startProcess(
      `haproxy ${role} sidecar`,
      haproxy,
      ['-db', '-f', file],
      path.join(chainDir, `${role}.log`),
    );
  };
  const server = start('server', haproxyServerConf(serverPort, backend.port, certs));
  const client = start('client', haproxyClientConf(clientPort, serverPort, certs, true));
  return startedChain('haproxy', clientPort, serverPort, client, server);
}

/** A second client side, without session reuse, in front of the server side of `base`. */
export async function startFullHandshakeVariant(
  base: Chain,
  tools: Tools,
  dir: string,
  certs: ChainCerts,
): Promise<Chain> {
  const server = base.sidecars.find((s) => s.role === 'server');
  const serverProcess = base.processes[base.processes.length - 1];
  if (base.serverPort === undefined || server === undefined || serverProcess === undefined)
    throw new Error(`BUG: chain ${base.id} has no server side`);
  const port = await freePort();
  let client: Started;
  let sidecar: Sidecar;
  let id: ChainId;
  if (base.id === 'nginx' && tools.nginx) {
    id = 'nginx-full';
    const d = path.join(dir, 'nginx-client-full');
    client = startNginx(
      'nginx client sidecar, no session reuse',
      tools.nginx,
      d,
      nginxClientConf(d, tools.nginx.loadStream, port, base.serverPort, certs, {
        verifyServer: false,
        sessionReuse: false,
      }),
    );
    sidecar = nginxSidecar('client', client);
  } else if (base.id === 'haproxy' && tools.haproxy) {
    id = 'haproxy-full';
    const file = path.join(dir, 'haproxy', 'client-full.cfg');
    writeFileSync(file, haproxyClientConf(port, base.serverPort, certs, false));
    client = startProcess(
      'haproxy client sidecar, no session reuse',
      tools.haproxy.bin,
      ['-db', '-f', file],
      path.join(dir, 'haproxy', 'client-full.log'),
    );
    sidecar = singleProcess('client', client);
  } else {
    throw new Error(`BUG: no full-handshake variant of ${base.id}`);
  }
  await waitForPort(port, client);
  return {
    id,
    entryPort: port,
    serverPort: base.serverPort,
    sidecars: [sidecar, server],
    processes: [client, serverProcess],
  };
}
