/**
 * Configuration text for the programs of the sidecar bench: the nginx backend, the nginx and haproxy
 * chains, and the kmtls ProxyConfigs. Pure functions of ports and file paths, so a config can be read
 * here as it will run. Every proxy listens on 127.0.0.1 only.
 */

/** The certificate files every chain uses: issued once by `kmtls ca issue`, for two service accounts. */
export interface ChainCerts {
  readonly root: string;
  readonly client: SideCerts;
  readonly server: SideCerts;
}

export interface SideCerts {
  /** What `kmtls ca issue` wrote: cert-chain.pem, key.pem, root-cert.pem. kmtls reads this directory. */
  readonly dir: string;
  readonly identity: string;
  /** The leaf alone: what kmtls presents (it drops the root from the chain), given to nginx too. */
  readonly leaf: string;
  readonly key: string;
  /** Leaf then key in one file, as haproxy's `crt` wants. */
  readonly combined: string;
}

/** Lines every nginx instance shares: in the foreground, one worker, files in its own directory. */
function nginxMain(dir: string, loadStream: string): string[] {
  return [
    ...(loadStream ? [loadStream] : []),
    'daemon off;',
    'master_process on;',
    // One worker: the same single core a kmtls proxy (one Node event loop) gets.
    'worker_processes 1;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log warn;`,
    'events { worker_connections 8192; }',
  ];
}

export function nginxBackendConf(dir: string, port: number): string {
  return [
    ...nginxMain(dir, ''),
    'http {',
    '  access_log off;',
    `  client_body_temp_path ${dir}/body;`,
    `  proxy_temp_path ${dir}/proxy;`,
    `  fastcgi_temp_path ${dir}/fastcgi;`,
    `  uwsgi_temp_path ${dir}/uwsgi;`,
    `  scgi_temp_path ${dir}/scgi;`,
    // Never close a keep-alive connection mid-run: every reconnect would be a new mTLS handshake.
    '  keepalive_requests 100000000;',
    '  keepalive_timeout 600s;',
    '  server {',
    `    listen 127.0.0.1:${port} backlog=4096;`,
    '    location / { return 200 "ok"; }',
    '  }',
    '}',
    '',
  ].join('\n');
}

/** How a client side originates: whether it verifies the server, whether it resumes TLS sessions. */
export interface ClientOptions {
  readonly verifyServer: boolean;
  readonly sessionReuse: boolean;
}

/**
 * The client side originates mTLS with the client's certificate. `verifyServer` must be off for kmtls
 * certificates: nginx checks `proxy_ssl_name` against DNS SANs or the CN whenever `proxy_ssl_verify`
 * is on, and a SPIFFE certificate has only a URI SAN, so the handshake would always fail.
 */
export function nginxClientConf(
  dir: string,
  loadStream: string,
  port: number,
  serverPort: number,
  certs: ChainCerts,
  options: ClientOptions,
): string {
  return [
    ...nginxMain(dir, loadStream),
    'stream {',
    '  server {',
    `    listen 127.0.0.1:${port} backlog=4096;`,
    `    proxy_pass 127.0.0.1:${serverPort};`,
    '    proxy_ssl on;',
    '    proxy_ssl_protocols TLSv1.2 TLSv1.3;',
    `    proxy_ssl_certificate ${certs.client.leaf};`,
    `    proxy_ssl_certificate_key ${certs.client.key};`,
    `    proxy_ssl_trusted_certificate ${certs.root};`,
    `    proxy_ssl_verify ${options.verifyServer ? 'on' : 'off'};`,
    '    proxy_ssl_verify_depth 2;',
    `    proxy_ssl_session_reuse ${options.sessionReuse ? 'on' : 'off'};`,
    '    proxy_timeout 600s;',
    '  }',
    '}',
    '',
  ].join('\n');
}

/** The server side terminates mTLS and requires a client certificate from the kmtls root. */
export function nginxServerConf(
  dir: string,
  loadStream: string,
  port: number,
  backendPort: number,
  certs: ChainCerts,
): string {
  return [
    ...nginxMain(dir, loadStream),
    'stream {',
    '  server {',
    `    listen 127.0.0.1:${port} ssl backlog=4096;`,
    '    ssl_protocols TLSv1.2 TLSv1.3;',
    `    ssl_certificate ${certs.server.leaf};`,
    `    ssl_certificate_key ${certs.server.key};`,
    `    ssl_client_certificate ${certs.root};`,
    '    ssl_verify_client on;',
    '    ssl_verify_depth 2;',
    `    proxy_pass 127.0.0.1:${backendPort};`,
    '    proxy_timeout 600s;',
    '  }',
    '}',
    '',
  ].join('\n');
}

function haproxyMain(): string[] {
  return [
    'global',
    // One thread: the same single core a kmtls proxy (one Node event loop) gets.
    '  nbthread 1',
    '  maxconn 8000',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 600s',
    '  timeout server 600s',
  ];
}

/** Client side: `verify required` against the kmtls root (haproxy checks no name without `verifyhost`). */
export function haproxyClientConf(
  port: number,
  serverPort: number,
  certs: ChainCerts,
  sessionReuse: boolean,
): string {
  const reuse = sessionReuse ? '' : ' no-ssl-reuse';
  return [
    ...haproxyMain(),
    'frontend client_side',
    `  bind 127.0.0.1:${port}`,
    '  default_backend server_side',
    'backend server_side',
    `  server s1 127.0.0.1:${serverPort} ssl crt ${certs.client.combined} ca-file ${certs.root} verify required${reuse}`,
    '',
  ].join('\n');
}

export function haproxyServerConf(port: number, backendPort: number, certs: ChainCerts): string {
  return [
    ...haproxyMain(),
    'frontend server_side',
    `  bind 127.0.0.1:${port} ssl crt ${certs.server.combined} ca-file ${certs.root} verify required`,
    '  default_backend app',
    'backend app',
    `  server app 127.0.0.1:${backendPort}`,
    '',
  ].join('\n');
}

const WORKLOAD_PORT = 8080;
const SERVICE = `server.bench.svc.cluster.local:${WORKLOAD_PORT}`;

/** Client sidecar: one outbound destination, ISTIO_MUTUAL, TCP, secure naming on the server's identity. */
export function kmtlsClientConfig(port: number, serverPort: number, certs: ChainCerts): object {
  return {
    version: 'bench',
    workload: { namespace: 'bench', name: 'client', identity: certs.client.identity },
    trustDomains: ['cluster.local'],
    outbound: [
      {
        name: SERVICE,
        listen: `127.0.0.1:${port}`,
        protocol: 'tcp',
        endpoints: [{ address: `127.0.0.1:${serverPort}`, tls: 'ISTIO_MUTUAL', workload: 'server' }],
        expectedIdentities: [certs.server.identity],
      },
    ],
  };
}

/** Server sidecar: one inbound port, STRICT, TCP, forwarding to the backend. */
export function kmtlsServerConfig(port: number, backendPort: number, certs: ChainCerts): object {
  return {
    version: 'bench',
    workload: { namespace: 'bench', name: 'server', identity: certs.server.identity },
    trustDomains: ['cluster.local'],
    inbound: [
      {
        port: WORKLOAD_PORT,
        listen: `127.0.0.1:${port}`,
        forward: `127.0.0.1:${backendPort}`,
        mode: 'STRICT',
        protocol: 'tcp',
        policy: 'bench/strict',
      },
    ],
  };
}
