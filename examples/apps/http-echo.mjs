// http-echo: an HTTP server on every declared port that answers who called it.
//
//   GET /anything  -> 200 {"pod","namespace","port","method","path","caller","xfcc"}
//   GET /healthz   -> 200 ok
//
// `caller` is the SPIFFE ID the sidecar verified (the URI= of the x-forwarded-client-cert header
// it adds), or null when the request came in plaintext. `port` is the containerPort it came to.
//
// Optional: CALL=url,url,... (http://host:port/path or tcp://host:port) makes it also call those
// every INTERVAL_MS (default 5000) and log the results, like http-client.mjs.
//
// Usage: node examples/apps/http-echo.mjs [PORT...]   (see examples/apps/README.md)
import http from 'node:http';
import {
  NAMESPACE,
  POD,
  callerFromXfcc,
  callPeriodically,
  listen,
  listenPorts,
  log,
  onShutdown,
  urlList,
} from './lib.mjs';

const servers = [];

for (const ports of listenPorts(process.argv.slice(2))) {
  const server = http.createServer((req, res) => {
    // Read (and drop) any request body before answering.
    req.resume();
    req.on('error', () => {});
    res.on('error', () => {});
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    }
    const xfcc = req.headers['x-forwarded-client-cert'] ?? null;
    const caller = callerFromXfcc(xfcc);
    const body = {
      pod: POD,
      namespace: NAMESPACE,
      port: ports.containerPort,
      method: req.method,
      path: req.url,
      caller,
      xfcc,
    };
    log(`<- ${req.method} ${req.url} on ${ports.containerPort} from ${caller ?? 'a plaintext caller'}`);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(body)}\n`);
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  listen(server, ports, 'http-echo');
  servers.push(server);
}

const urls = urlList(process.env.CALL);
const stopCalling = urls.length > 0 ? callPeriodically(urls) : () => {};

onShutdown(async () => {
  stopCalling();
  await Promise.all(
    servers.map(
      (s) =>
        new Promise((done) => {
          s.close(() => done());
          s.closeAllConnections();
        }),
    ),
  );
});
