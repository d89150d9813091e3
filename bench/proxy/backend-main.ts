/**
 * The backend when nginx is not installed: a Node HTTP server answering every request with a fixed
 * 200 "ok", in its own process. Port from argv.
 */
import http from 'node:http';

const port = Number(process.argv[2]);
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
  res.end('ok');
});
// Never close a keep-alive connection mid-run: every reconnect would be a new mTLS handshake.
server.keepAliveTimeout = 600_000;
server.listen(port, '127.0.0.1');
process.once('SIGTERM', () => server.close(() => process.exit(0)));
