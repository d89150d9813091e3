/**
 * TLS peers kmtls did not write, run as child processes: `openssl` and Python's `ssl` module. Every
 * run has a deadline (a hung peer fails the test, it never hangs the suite) and is killed in
 * `t.after` if the test ends first. Temporary files live in a directory removed in `t.after`.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';

export interface PeerRun {
  /** Exit status; null when the process ended by a signal. */
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export const PEER_TIMEOUT_MS = 5_000;

/** Runs a program to completion, feeding it `input`; rejects if it cannot start or outlives `timeoutMs`. */
export function runPeer(
  t: TestContext,
  command: string,
  args: readonly string[],
  opts: { input?: string; timeoutMs?: number; cwd?: string } = {},
): Promise<PeerRun> {
  const timeoutMs = opts.timeoutMs ?? PEER_TIMEOUT_MS;
  const child = spawn(command, args, { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    // A deadline, not a wait: the run normally ends long before it.
    const deadline = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    // The peer may exit before reading its input (a refused handshake): that is not our failure.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    child.on('error', (err) => {
      clearTimeout(deadline);
      reject(new Error(`peer did not start: ${command} (${err.message})`, { cause: err }));
    });
    child.on('close', (code) => {
      clearTimeout(deadline);
      if (timedOut) {
        reject(
          new Error(
            `peer timed out: ${command} ${args.join(' ')} (no exit after ${timeoutMs}ms)\nstdout: ${stdout}\nstderr: ${stderr}`,
          ),
        );
      } else {
        resolve({ code, stdout, stderr });
      }
    });
  });
}

/** A fresh temporary directory, removed after the test. */
export async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kmtls-interop-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes files into a fresh temporary directory, removed after the test; returns name → absolute path. */
export async function writeTempFiles<K extends string>(
  t: TestContext,
  files: Readonly<Record<K, string>>,
): Promise<Readonly<Record<K, string>>> {
  const dir = await tempDir(t);
  const paths = {} as Record<K, string>;
  for (const name of Object.keys(files) as K[]) {
    paths[name] = path.join(dir, name);
    await writeFile(paths[name], files[name], { mode: 0o600 });
  }
  return paths;
}

/** What a client peer presents and trusts, as a workload holds it (PEM). */
export interface ClientCredentials {
  /** Leaf first, then any intermediates (a trailing root is harmless). */
  readonly chainPem: string;
  readonly keyPem: string;
  /** The roots the client trusts. */
  readonly trustPem: string;
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/g;

/** The credentials as files: `chain.pem` (leaf and the rest), `leaf.pem`, `rest.pem`, `key.pem`, `trust.pem`. */
async function credentialFiles(t: TestContext, creds: ClientCredentials) {
  const blocks = creds.chainPem.match(PEM_BLOCK) ?? [];
  if (blocks.length === 0) throw new Error('BUG: client credentials without a certificate');
  return writeTempFiles(t, {
    'chain.pem': creds.chainPem,
    'leaf.pem': blocks[0]!,
    'rest.pem': blocks.slice(1).join(''),
    'key.pem': creds.keyPem,
    'trust.pem': creds.trustPem,
  });
}

/**
 * What a client peer reports. `handshake` means the client finished its side of the handshake and
 * verified the server; in TLS 1.3 that happens before the server has judged the client certificate.
 */
export interface ClientReport {
  readonly handshake: boolean;
  readonly protocol?: string;
  /** OpenSSL's X509_V_ERR_* number when the client refused the server's certificate. */
  readonly verifyError?: number;
  /** The SPIFFE URIs of the server certificate the client verified. */
  readonly serverUris: readonly string[];
  /** The server's one-line answer, if any. */
  readonly answer?: string;
  readonly raw: PeerRun;
}

function urisOf(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}

/**
 * `openssl s_client` with a client certificate, verifying the server against `ca` and failing the
 * handshake on any verification error. Sends `line`, then (-ign_eof) reads until the server closes.
 */
export async function opensslClient(
  t: TestContext,
  port: number,
  creds: ClientCredentials,
  opts: { line?: string; extraArgs?: readonly string[] } = {},
): Promise<ClientReport> {
  const files = await credentialFiles(t, creds);
  const hasRest = (creds.chainPem.match(PEM_BLOCK) ?? []).length > 1;
  const args = [
    's_client',
    '-connect',
    `127.0.0.1:${port}`,
    // -cert reads only the first certificate of a file; what follows the leaf goes in -cert_chain.
    '-cert',
    files['leaf.pem'],
    '-key',
    files['key.pem'],
    '-CAfile',
    files['trust.pem'],
    '-verify_return_error',
    '-showcerts',
    '-ign_eof',
    ...(hasRest ? ['-cert_chain', files['rest.pem']] : []),
    ...(opts.extraArgs ?? []),
  ];
  const raw = await runPeer(t, 'openssl', args, { input: `${opts.line ?? 'hello'}\n` });
  const verifyError = /verify error:num=(\d+):/.exec(raw.stderr + raw.stdout)?.[1];
  const protocol = /^New, (\S+), Cipher is/m.exec(raw.stdout)?.[1];
  const verified = /^Verify return code: 0 \(ok\)$/m.test(raw.stdout);
  // -showcerts prints the chain the server sent, leaf first.
  const leafPem = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(raw.stdout)?.[0];
  // Not anchored: s_client prints the session ticket it receives from a buffered BIO, and the
  // server's answer can land in the middle of that dump.
  const answer = /(OK spiffe:\/\/\S+|REFUSED [A-Z_]+)/.exec(raw.stdout)?.[1];
  return {
    handshake: protocol !== undefined && verified,
    ...(protocol !== undefined ? { protocol } : {}),
    ...(verifyError !== undefined ? { verifyError: Number(verifyError) } : {}),
    serverUris: leafPem ? urisOf(new X509Certificate(leafPem)) : [],
    ...(answer !== undefined ? { answer } : {}),
    raw,
  };
}

/** A TLS client in Python's standard library: verifies the server, presents a certificate chain. */
const PYTHON_CLIENT = `
import json, socket, ssl, sys
port, cert, key, ca, line = sys.argv[1:6]
out = {"handshake": False}
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=4) as raw:
        with ctx.wrap_socket(raw) as s:
            out["handshake"] = True
            out["protocol"] = s.version()
            out["serverUris"] = [v for k, v in s.getpeercert().get("subjectAltName", ()) if k == "URI"]
            s.sendall(line.encode() + b"\\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            out["answer"] = data.decode().strip()
except ssl.SSLCertVerificationError as e:
    out["verifyError"] = e.verify_code
    out["error"] = e.verify_message
except (ssl.SSLError, OSError) as e:
    out["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
`;

interface PythonOutput {
  handshake: boolean;
  protocol?: string;
  serverUris?: string[];
  answer?: string;
  verifyError?: number;
  error?: string;
}

/** Python's `ssl` client; load_cert_chain sends the whole chain file, leaf first. */
export async function pythonClient(
  t: TestContext,
  port: number,
  creds: ClientCredentials,
  opts: { line?: string } = {},
): Promise<ClientReport> {
  const files = await credentialFiles(t, creds);
  // -I: isolated from PYTHON* variables and user site-packages; only the standard library is used.
  const raw = await runPeer(t, 'python3', [
    '-I',
    '-c',
    PYTHON_CLIENT,
    String(port),
    files['chain.pem'],
    files['key.pem'],
    files['trust.pem'],
    opts.line ?? 'hello',
  ]);
  let out: PythonOutput;
  try {
    out = JSON.parse(raw.stdout) as PythonOutput;
  } catch (err) {
    throw new Error(`python client printed no report: ${raw.stdout} ${raw.stderr}`, { cause: err });
  }
  return {
    handshake: out.handshake,
    ...(out.protocol !== undefined ? { protocol: out.protocol } : {}),
    ...(out.verifyError !== undefined ? { verifyError: out.verifyError } : {}),
    serverUris: out.serverUris ?? [],
    ...(out.answer ? { answer: out.answer } : {}),
    raw,
  };
}
