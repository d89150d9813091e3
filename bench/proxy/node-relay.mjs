// The floor under any sidecar written on Node: the least two Node processes must do to carry a TCP
// connection over mTLS, and nothing else. No policy, no identity check beyond OpenSSL's chain
// verification, no access log, no metrics, no timeouts: `tls` plus `stream.pipe` both ways, with
// the same certificates, TLS versions and session resumption as the kmtls chain. The bench runs it
// beside kmtls so that BENCHMARKS.md can tell what Node itself costs from what kmtls adds.
//
//   node node-relay.mjs client LISTEN_PORT SERVER_PORT CERT KEY ROOT
//   node node-relay.mjs server LISTEN_PORT BACKEND_PORT CERT KEY ROOT
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

const [role, listenPort, targetPort, certFile, keyFile, rootFile] = process.argv.slice(2);
if (!rootFile || (role !== 'client' && role !== 'server')) {
  console.error('usage: node-relay.mjs client|server LISTEN_PORT TARGET_PORT CERT KEY ROOT');
  process.exit(2);
}
const material = {
  cert: readFileSync(certFile),
  key: readFileSync(keyFile),
  ca: readFileSync(rootFile),
  minVersion: 'TLSv1.2',
};

function pipeBoth(a, b) {
  a.pipe(b);
  b.pipe(a);
  const close = () => {
    a.destroy();
    b.destroy();
  };
  for (const s of [a, b]) {
    s.on('error', close);
    s.on('close', close);
  }
}

if (role === 'client') {
  const context = tls.createSecureContext(material);
  // One cached session toward the one server, as kmtls keeps one per endpoint.
  let session;
  net
    .createServer({ noDelay: true }, (downstream) => {
      const upstream = tls.connect({
        host: '127.0.0.1',
        port: Number(targetPort),
        secureContext: context,
        ALPNProtocols: ['istio'],
        // A SPIFFE certificate names no host: OpenSSL checks the chain, the name is not checked.
        checkServerIdentity: () => undefined,
        ...(session ? { session } : {}),
      });
      upstream.setNoDelay(true);
      upstream.on('session', (s) => {
        session = s;
      });
      pipeBoth(downstream, upstream);
    })
    .listen(Number(listenPort), '127.0.0.1');
} else {
  tls
    .createServer({ ...material, requestCert: true, rejectUnauthorized: true }, (upstream) => {
      upstream.setNoDelay(true);
      const backend = net.connect({ host: '127.0.0.1', port: Number(targetPort), noDelay: true });
      pipeBoth(upstream, backend);
    })
    .listen(Number(listenPort), '127.0.0.1');
}
