/**
 * What a connection's first bytes say, without consuming them: a TLS ClientHello (with its ALPN
 * list and SNI) or anything else. This is Envoy's tls_inspector in miniature: only the ClientHello
 * is read; a malformed one counts as "not TLS", as the inspector treats it.
 */

export type Detection =
  | { readonly kind: 'tls'; readonly alpn: readonly string[]; readonly sni: string | undefined }
  | { readonly kind: 'plaintext' }
  /** Too few bytes yet to decide. */
  | { readonly kind: 'need-more' };

/** The largest ClientHello kmtls waits for (several TLS records). */
export const MAX_CLIENT_HELLO_BYTES = 64 * 1024;

const PLAINTEXT: Detection = { kind: 'plaintext' };
const NEED_MORE: Detection = { kind: 'need-more' };

/** Reassembles the handshake bytes carried by consecutive handshake records. */
function handshakeBytes(buf: Buffer): Buffer | 'need-more' | 'invalid' {
  const parts: Buffer[] = [];
  let total = 0;
  let at = 0;
  let needed = -1;
  while (true) {
    if (buf.length < at + 5) return buf.length >= MAX_CLIENT_HELLO_BYTES ? 'invalid' : 'need-more';
    if (buf[at] !== 0x16 || buf[at + 1] !== 0x03) return 'invalid';
    const len = buf.readUInt16BE(at + 3);
    if (len === 0 || len > 16384 + 2048) return 'invalid';
    if (buf.length < at + 5 + len) return buf.length >= MAX_CLIENT_HELLO_BYTES ? 'invalid' : 'need-more';
    parts.push(buf.subarray(at + 5, at + 5 + len));
    total += len;
    at += 5 + len;
    if (needed < 0 && total >= 4) {
      const first = Buffer.concat(parts);
      if (first[0] !== 0x01) return 'invalid';
      needed = 4 + first.readUIntBE(1, 3);
      if (needed > MAX_CLIENT_HELLO_BYTES) return 'invalid';
    }
    if (needed >= 0 && total >= needed) return Buffer.concat(parts).subarray(0, needed);
  }
}

/** Reads ALPN and SNI from a complete ClientHello handshake message; undefined when malformed. */
function parseClientHello(hs: Buffer): { alpn: string[]; sni: string | undefined } | undefined {
  let at = 4 + 2 + 32; // type + length, client_version, random
  const need = (n: number) => at + n <= hs.length;
  if (!need(1)) return undefined;
  at += 1 + hs[at]!; // session_id
  if (!need(2)) return undefined;
  at += 2 + hs.readUInt16BE(at); // cipher_suites
  if (!need(1)) return undefined;
  at += 1 + hs[at]!; // compression_methods
  if (at === hs.length) return { alpn: [], sni: undefined }; // no extensions (TLS 1.0-style hello)
  if (!need(2)) return undefined;
  const extEnd = at + 2 + hs.readUInt16BE(at);
  if (extEnd > hs.length) return undefined;
  at += 2;
  const alpn: string[] = [];
  let sni: string | undefined;
  while (at + 4 <= extEnd) {
    const type = hs.readUInt16BE(at);
    const len = hs.readUInt16BE(at + 2);
    const body = at + 4;
    if (body + len > extEnd) return undefined;
    if (type === 16 && len >= 2) {
      let p = body + 2;
      const listEnd = body + 2 + hs.readUInt16BE(body);
      if (listEnd > body + len) return undefined;
      while (p < listEnd) {
        const n = hs[p]!;
        if (n === 0 || p + 1 + n > listEnd) return undefined;
        alpn.push(hs.toString('latin1', p + 1, p + 1 + n));
        p += 1 + n;
      }
    } else if (type === 0 && len >= 5 && hs[body + 2] === 0) {
      const n = hs.readUInt16BE(body + 3);
      if (body + 5 + n <= body + len) sni = hs.toString('latin1', body + 5, body + 5 + n);
    }
    at = body + len;
  }
  return { alpn, sni };
}

/** Classifies the bytes received so far on a new connection. */
export function detectTransport(buf: Buffer): Detection {
  if (buf.length === 0) return NEED_MORE;
  if (buf[0] !== 0x16) return PLAINTEXT;
  if (buf.length < 3) return NEED_MORE;
  if (buf[1] !== 0x03) return PLAINTEXT;
  const hs = handshakeBytes(buf);
  if (hs === 'need-more') return NEED_MORE;
  if (hs === 'invalid') return PLAINTEXT;
  const hello = parseClientHello(hs);
  return hello ? { kind: 'tls', alpn: hello.alpn, sni: hello.sni } : PLAINTEXT;
}
