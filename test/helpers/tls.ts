/**
 * Real mutual-TLS handshakes on 127.0.0.1 for PKI tests: a node:tls server that requires and
 * verifies a client certificate, and a client that verifies the server. Hostname checks are off,
 * since mesh certificates carry only a SPIFFE URI; identity is checked by the caller.
 */
import type { KeyObject } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';

export interface TlsSide {
  /** The certificate chain to present, PEM, leaf first. */
  readonly chainPem: string;
  readonly key: KeyObject;
  /** The roots to trust, PEM. */
  readonly trustPem: string;
}

export interface HandshakeResult {
  readonly ok: boolean;
  /** What failed, from whichever side noticed first. */
  readonly error?: string;
  /** The peer's SPIFFE URIs as each side saw them. */
  readonly serverSawClient?: string;
  readonly clientSawServer?: string;
}

function keyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

export async function mutualHandshake(server: TlsSide, client: TlsSide): Promise<HandshakeResult> {
  let serverError: string | undefined;
  let serverSawClient: string | undefined;
  const srv = tls.createServer(
    {
      cert: server.chainPem,
      key: keyPem(server.key),
      ca: server.trustPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    },
    (socket) => {
      serverSawClient = socket.getPeerCertificate().subjectaltname;
      socket.end('ok');
    },
  );
  srv.on('tlsClientError', (err) => {
    serverError = err.message;
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;
  try {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      cert: client.chainPem,
      key: keyPem(client.key),
      ca: client.trustPem,
      rejectUnauthorized: true,
      checkServerIdentity: () => undefined,
      minVersion: 'TLSv1.2',
    });
    const result = await new Promise<HandshakeResult>((resolve) => {
      let data = '';
      let clientSawServer: string | undefined;
      socket.on('secureConnect', () => {
        clientSawServer = socket.getPeerCertificate().subjectaltname;
      });
      socket.on('data', (d: Buffer) => {
        data += d.toString();
      });
      socket.on('error', (err) => resolve({ ok: false, error: serverError ?? err.message }));
      socket.on('close', () => {
        if (data === 'ok')
          resolve({
            ok: true,
            ...(serverSawClient ? { serverSawClient } : {}),
            ...(clientSawServer ? { clientSawServer } : {}),
          });
        else resolve({ ok: false, error: serverError ?? 'connection closed before the server answered' });
      });
    });
    return result;
  } finally {
    srv.close();
  }
}
