#!/usr/bin/env node
// The processes of the interception test that run inside network namespaces (`ip netns exec NS node
// netns-agent.mjs JSON`): servers that report what they saw, and one-shot clients that print one JSON
// line with what they got back. Plain JavaScript so that each spawn starts fast.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

const cmd = JSON.parse(process.argv[2] ?? '{}');
const DEADLINE_MS = 5_000;

function credentials(dir) {
  return {
    cert: readFileSync(path.join(dir, 'cert-chain.pem')),
    key: readFileSync(path.join(dir, 'key.pem')),
    ca: readFileSync(path.join(dir, 'root-cert.pem')),
  };
}

function uriOf(cert) {
  const san = cert?.subjectaltname ?? '';
  return (
    san
      .split(', ')
      .find((s) => s.startsWith('URI:'))
      ?.slice(4) ?? null
  );
}

function print(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function serve() {
  const servers = [];
  for (const s of cmd.http ?? []) {
    const server = http.createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          app: s.name,
          xfcc: req.headers['x-forwarded-client-cert'] ?? null,
          remote: req.socket.remoteAddress,
        }),
      );
    });
    servers.push([server, s]);
  }
  for (const s of cmd.tcpEcho ?? []) {
    const server = net.createServer((c) => {
      c.setEncoding('utf8');
      let buf = '';
      c.on('data', (d) => {
        buf += d;
        if (buf.includes('\n')) c.end(`${s.name} line=${buf.split('\n')[0]}\n`);
      });
      c.on('error', () => {});
    });
    servers.push([server, s]);
  }
  for (const s of cmd.tlsEcho ?? []) {
    const server = tls.createServer(
      { ...credentials(s.certDir), requestCert: true, rejectUnauthorized: true },
      (c) => {
        c.setEncoding('utf8');
        let buf = '';
        c.on('data', (d) => {
          buf += d;
          if (buf.includes('\n'))
            c.end(`${s.name} peer=${uriOf(c.getPeerCertificate())} line=${buf.split('\n')[0]}\n`);
        });
        c.on('error', () => {});
      },
    );
    server.on('tlsClientError', () => {});
    servers.push([server, s]);
  }
  await Promise.all(
    servers.map(
      ([server, s]) =>
        new Promise((resolve, reject) => {
          server.once('error', reject);
          server.listen(s.port, s.host, resolve);
        }),
    ),
  );
  print({ listening: true });
  process.on('SIGTERM', () => process.exit(0));
}

/** Connects (TLS with the mesh ALPN when asked), sends `payload`, prints what came back before close. */
function client(payload, parse) {
  const done = (value) => {
    print(value);
    process.exit(0);
  };
  setTimeout(() => done({ error: 'deadline' }), DEADLINE_MS).unref();
  const socket = cmd.tls
    ? tls.connect({
        host: cmd.host,
        port: cmd.port,
        ...credentials(cmd.tls),
        ALPNProtocols: cmd.alpn ?? ['istio-peer-exchange', 'istio'],
        rejectUnauthorized: false,
      })
    : net.connect({ host: cmd.host, port: cmd.port });
  let answer = '';
  socket.setEncoding('utf8');
  socket.once(cmd.tls ? 'secureConnect' : 'connect', () => socket.write(payload));
  socket.on('data', (d) => {
    answer += d;
  });
  socket.on('error', (err) => done({ error: err.code ?? err.message, answer }));
  socket.on('close', () => done(answer === '' ? { error: 'closed' } : parse(answer)));
}

switch (cmd.op) {
  case 'serve':
    await serve();
    break;
  case 'http':
    client(`GET ${cmd.path ?? '/'} HTTP/1.1\r\nhost: ${cmd.host}\r\nconnection: close\r\n\r\n`, (text) => {
      const status = Number(text.split(' ')[1]);
      const body = text.slice(text.indexOf('\r\n\r\n') + 4);
      try {
        return { status, body: JSON.parse(body) };
      } catch {
        return { status, text };
      }
    });
    break;
  case 'line':
    client(`${cmd.line}\n`, (text) => ({ answer: text.trim() }));
    break;
  default:
    print({ error: `unknown op ${cmd.op}` });
    process.exit(2);
}
