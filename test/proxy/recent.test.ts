import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ConnectionRecord } from '../../src/proxy/index.js';
import { RecentConnections } from '../../src/proxy/index.js';

function plain(port: number, ip: string): ConnectionRecord {
  return {
    id: 1,
    direction: 'inbound',
    port,
    sourceAddress: `${ip}:40000`,
    outcome: 'accepted',
    transport: 'plaintext',
    bytesReceived: 0,
    bytesSent: 0,
    startMs: 0,
  };
}

test('the per-port and per-source tallies are capped: a port scan folds into `other`', () => {
  const r = new RecentConnections(8, 3, 2);
  for (const port of [1, 2, 3, 4, 5, 6]) r.connectionClosed(plain(port, '10.0.0.1'));
  for (const ip of ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4']) r.connectionClosed(plain(1, ip));
  const s = r.snapshot();
  assert.deepEqual(Object.keys(s.inbound), ['1', '2', '3', 'other']);
  assert.equal(s.inbound.other?.plaintext, 3);
  assert.deepEqual(s.inbound['1']?.plaintextSources, { '10.0.0.1': 2, '10.0.0.2': 1, other: 2 });
  assert.equal(s.recent.length, 8);
});
