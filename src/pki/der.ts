/**
 * Just enough DER (ITU-T X.690) to build and read X.509 certificates and PKCS#10 requests on the
 * issuance hot path, synchronously and without an object model. Writers return complete TLVs;
 * the reader walks a buffer without copying. Anything outside DER's definite-length form is refused.
 */

export class DerError extends Error {
  override readonly name = 'DerError';
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

function lengthBytes(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const bytes: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) bytes.unshift(n & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function tlv(tag: number, content: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([tag]), lengthBytes(content.length), content]);
}

export function sequence(...parts: Uint8Array[]): Buffer {
  return tlv(TAG.SEQUENCE, Buffer.concat(parts));
}

export function set(...parts: Uint8Array[]): Buffer {
  return tlv(TAG.SET, Buffer.concat(parts));
}

/** `[n] EXPLICIT`: a constructed context tag around a complete TLV. */
export function explicit(n: number, inner: Uint8Array): Buffer {
  return tlv(0xa0 | n, inner);
}

/** `[n] IMPLICIT` for a primitive type: the content with a context tag. */
export function implicitPrimitive(n: number, content: Uint8Array): Buffer {
  return tlv(0x80 | n, content);
}

const oidCache = new Map<string, Buffer>();

function base128(value: number): number[] {
  const chunk: number[] = [value & 0x7f];
  for (let n = Math.floor(value / 128); n > 0; n = Math.floor(n / 128)) chunk.unshift((n & 0x7f) | 0x80);
  return chunk;
}

/**
 * An OBJECT IDENTIFIER from dotted form (X.690 8.19): the first two arcs combine into one
 * sub-identifier (40·X + Y, itself base-128, so `2.999` takes two bytes). Cached, since the same few
 * OIDs recur in every certificate.
 */
export function oid(dotted: string): Buffer {
  const cached = oidCache.get(dotted);
  if (cached) return cached;
  if (!/^[0-9]+(\.[0-9]+)+$/.test(dotted)) throw new DerError(`bad OID: ${JSON.stringify(dotted)}`);
  const arcs = dotted.split('.').map(Number);
  const [first, second] = arcs as [number, number];
  if (first > 2 || (first < 2 && second >= 40) || arcs.some((a) => !Number.isSafeInteger(a))) {
    throw new DerError(
      `bad OID: ${JSON.stringify(dotted)} (the first arc is 0, 1 or 2; under 0 and 1 the second is below 40)`,
    );
  }
  const body = [...base128(40 * first + second), ...arcs.slice(2).flatMap(base128)];
  const out = tlv(TAG.OID, Buffer.from(body));
  oidCache.set(dotted, out);
  return out;
}

/** A non-negative INTEGER from its big-endian magnitude (a 0x00 is prepended when the top bit is set). */
export function unsignedInteger(magnitude: Uint8Array): Buffer {
  // An empty magnitude is zero; X.690 8.3.1 forbids an INTEGER without content octets.
  if (magnitude.length === 0) return tlv(TAG.INTEGER, Buffer.from([0]));
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  const needsPad = (trimmed[0] ?? 0) & 0x80;
  return tlv(TAG.INTEGER, needsPad ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

export function smallInteger(n: number): Buffer {
  if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw new DerError(`integer out of range: ${n}`);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return unsignedInteger(Buffer.from(bytes.length ? bytes : [0]));
}

export function boolean(value: boolean): Buffer {
  return tlv(TAG.BOOLEAN, Buffer.from([value ? 0xff : 0x00]));
}

export function octetString(content: Uint8Array): Buffer {
  return tlv(TAG.OCTET_STRING, content);
}

export function bitString(content: Uint8Array, unusedBits = 0): Buffer {
  return tlv(TAG.BIT_STRING, Buffer.concat([Buffer.from([unusedBits]), content]));
}

export function utf8String(s: string): Buffer {
  return tlv(TAG.UTF8_STRING, Buffer.from(s, 'utf8'));
}

/** The bytes of a 7-bit ASCII string (IA5); anything else is refused rather than mangled. */
export function asciiBytes(s: string): Buffer {
  for (let i = 0; i < s.length; i++)
    if (s.charCodeAt(i) > 0x7f) throw new DerError('IA5String must be ASCII');
  return Buffer.from(s, 'ascii');
}

export function ia5String(s: string): Buffer {
  return tlv(TAG.IA5_STRING, asciiBytes(s));
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Z. */
export function time(date: Date): Buffer {
  const y = date.getUTCFullYear();
  const rest = `${pad(date.getUTCMonth() + 1)}${pad(date.getUTCDate())}${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}${pad(date.getUTCSeconds())}Z`;
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(`${pad(y % 100)}${rest}`, 'ascii'));
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(`${pad(y, 4)}${rest}`, 'ascii'));
}

/** One element of a DER buffer; offsets are into the buffer it was read from. */
export interface DerNode {
  readonly tag: number;
  /** Where the TLV starts (the tag byte). */
  readonly start: number;
  /** Where the content starts. */
  readonly contentStart: number;
  /** One past the last content byte. */
  readonly end: number;
}

/** Reads the TLV at `offset`; refuses indefinite lengths, non-minimal lengths and overruns. */
export function readNode(buf: Uint8Array, offset: number, limit = buf.length): DerNode {
  if (offset + 2 > limit) throw new DerError(`truncated at byte ${offset}`);
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError(`multi-byte tags are not supported (byte ${offset})`);
  const first = buf[offset + 1]!;
  let length: number;
  let header = 2;
  if (first < 0x80) {
    length = first;
  } else {
    const count = first & 0x7f;
    if (count === 0) throw new DerError(`indefinite length at byte ${offset}`);
    if (count > 4) throw new DerError(`length too large at byte ${offset}`);
    if (offset + 2 + count > limit) throw new DerError(`truncated length at byte ${offset}`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[offset + 2 + i]!;
    if (length < 0x80 || buf[offset + 2] === 0) throw new DerError(`non-minimal length at byte ${offset}`);
    header += count;
  }
  const contentStart = offset + header;
  const end = contentStart + length;
  if (end > limit) throw new DerError(`element at byte ${offset} runs past its container`);
  return { tag, start: offset, contentStart, end };
}

/** The elements inside a constructed node, in order. */
export function childrenOf(buf: Uint8Array, node: DerNode): DerNode[] {
  const out: DerNode[] = [];
  for (let at = node.contentStart; at < node.end; ) {
    const child = readNode(buf, at, node.end);
    out.push(child);
    at = child.end;
  }
  return out;
}

/** Reads a whole buffer as exactly one element of the expected tag. */
export function readRoot(buf: Uint8Array, tag: number): DerNode {
  const node = readNode(buf, 0);
  if (node.tag !== tag)
    throw new DerError(`expected tag 0x${tag.toString(16)}, found 0x${node.tag.toString(16)}`);
  if (node.end !== buf.length) throw new DerError(`${buf.length - node.end} trailing bytes`);
  return node;
}

export function expectTag(node: DerNode | undefined, tag: number, what: string): DerNode {
  if (node === undefined) throw new DerError(`missing ${what}`);
  if (node.tag !== tag)
    throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, found 0x${node.tag.toString(16)}`);
  return node;
}

export function contentOf(buf: Uint8Array, node: DerNode): Buffer {
  return Buffer.from(buf.buffer, buf.byteOffset + node.contentStart, node.end - node.contentStart);
}

export function bytesOf(buf: Uint8Array, node: DerNode): Buffer {
  return Buffer.from(buf.buffer, buf.byteOffset + node.start, node.end - node.start);
}

export function decodeOid(content: Uint8Array): string {
  if (content.length === 0) throw new DerError('empty OID');
  const values: number[] = [];
  let value = 0;
  for (let i = 0; i < content.length; i++) {
    const b = content[i]!;
    value = value * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      values.push(value);
      value = 0;
    } else if (i === content.length - 1) {
      throw new DerError('truncated OID');
    }
  }
  // The first sub-identifier holds the first two arcs: 40·X + Y, with X at most 2.
  const head = values[0]!;
  const x = head < 40 ? 0 : head < 80 ? 1 : 2;
  return [x, head - 40 * x, ...values.slice(1)].join('.');
}
