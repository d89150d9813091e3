// tcp-echo: a TCP server on every declared port that sends back every byte it receives.
// A client that half-closes (ends its side) still gets the rest of its echo, then the server ends too.
// One log line per connection, when it closes.
//
// Usage: node examples/apps/tcp-echo.mjs [PORT...]   (see examples/apps/README.md)
import net from 'node:net';
import { listen, listenPorts, log, onShutdown } from './lib.mjs';

const servers = [];
const sockets = new Set();

for (const ports of listenPorts(process.argv.slice(2))) {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    const from = `${socket.remoteAddress}:${socket.remotePort}`;
    let bytes = 0;
    let failure = '';
    socket.on('data', (chunk) => {
      bytes += chunk.length;
    });
    socket.on('error', (err) => {
      failure = ` (${err.code ?? err.message})`;
    });
    socket.on('close', () => {
      sockets.delete(socket);
      log(`<- connection from ${from} on ${ports.containerPort}: ${bytes} bytes echoed${failure}`);
    });
    // pipe ends our side once the client has ended its side and the echo is flushed.
    socket.pipe(socket);
  });
  listen(server, ports, 'tcp-echo');
  servers.push(server);
}

onShutdown(async () => {
  const closed = servers.map((s) => new Promise((done) => s.close(() => done())));
  for (const s of sockets) s.destroy();
  await Promise.all(closed);
});
