import type { Socket } from 'node:net';
import type { ProxyConfig } from '../mesh/index.js';
import type { Clock } from '../pki/index.js';
import type { ProxyIdentity } from './certs.js';
import type { ConnectionRecord, ProxyObserver, RefusalReason } from './events.js';

/** A connection the proxy carries, so a policy change can find and drain it. */
export interface LiveConnection {
  readonly record: ConnectionRecord;
  /** Closes the connection now, recording why. */
  close(reason: RefusalReason, message: string): void;
}

/** What listeners share: the current config and identity, time, reporting and connection accounting. */
export interface ProxyRuntime {
  readonly clock: Clock;
  readonly observer: ProxyObserver;
  config(): ProxyConfig;
  /** Undefined until a certificate is loaded: mTLS is then refused, plaintext paths still work. */
  identity(): ProxyIdentity | undefined;
  nextId(): number;
  /** Registers a live connection; returns the function that unregisters it. */
  track(c: LiveConnection): () => void;
  connectionCount(): number;
}

/** Copies bytes both ways, counting them, and closes each side when the other ends. */
export function splice(a: Socket, b: Socket, record: ConnectionRecord, onClose: () => void): void {
  let closed = false;
  const finish = () => {
    if (closed) return;
    closed = true;
    a.destroy();
    b.destroy();
    onClose();
  };
  a.on('data', (d: Buffer) => {
    record.bytesReceived += d.length;
  });
  b.on('data', (d: Buffer) => {
    record.bytesSent += d.length;
  });
  a.pipe(b);
  b.pipe(a);
  a.on('error', finish);
  b.on('error', finish);
  a.on('close', finish);
  b.on('close', finish);
}
