// Bench-only preload for a `kmtls proxy` client sidecar (node --import): drops the cached TLS session
// that src/proxy/outbound.ts offers on each new connection, so every connection is a full handshake.
//
// Why: as of this bench, a client sidecar's second and later connections fail. Against a kmtls
// server the resumption is refused ("session id context uninitialized": the server context asks for
// a client certificate but has no session id context); against a server that resumes (nginx,
// haproxy), the resumed handshake carries no certificate, and the outbound's own chain check then
// refuses it. bench/proxy.ts uses this file only when it sees that failure, and says so in
// BENCHMARKS.md. Plain JavaScript, so that no loader runs inside the measured process.
import tls from 'node:tls';

const connect = tls.connect;
tls.connect = (options, ...rest) => {
  if (options !== null && typeof options === 'object' && 'session' in options) {
    const { session: _dropped, ...fresh } = options;
    return connect(fresh, ...rest);
  }
  return connect(options, ...rest);
};
