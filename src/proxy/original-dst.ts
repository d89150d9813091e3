import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KmtlsError } from '../errors.js';

/** Where a redirected connection was going before iptables sent it to the sidecar. */
export interface OriginalDestination {
  readonly address: string;
  readonly port: number;
}

/** The native addon's face (native/original-dst/original_dst.c). */
interface OriginalDstAddon {
  getOriginalDst(fd: number): OriginalDestination | null;
}

export type OriginalDstLookup = (socket: net.Socket) => OriginalDestination | null;

const ADDON = path.join('native', 'original-dst', 'build', 'Release', 'original_dst.node');

type Loaded = { ok: true; addon: OriginalDstAddon } | { ok: false; why: string };

let loaded: Loaded | undefined;

/** The addon from the package root: two levels up from src/proxy, three from dist/src/proxy. */
function loadAddon(): Loaded {
  if (loaded) return loaded;
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.resolve(here, '..', '..', ADDON), path.resolve(here, '..', '..', '..', ADDON)];
  const file = candidates.find((c) => existsSync(c));
  if (!file) {
    loaded = {
      ok: false,
      why: `${ADDON} was not built (npm install builds it with node-gyp; run node scripts/build-addon.mjs)`,
    };
    return loaded;
  }
  try {
    loaded = { ok: true, addon: createRequire(import.meta.url)(file) as OriginalDstAddon };
  } catch (err) {
    loaded = { ok: false, why: `${file} does not load: ${(err as Error).message.split('\n')[0]}` };
  }
  return loaded;
}

/**
 * The function that reads a connection's original destination (getsockopt SO_ORIGINAL_DST, Linux),
 * or a KMTLS_PROXY_NO_ORIGINAL_DST error when the native addon is not there. Only transparent mode
 * asks for it, so a machine without a compiler loses nothing else.
 */
export function originalDstLookup(): OriginalDstLookup {
  const r = loadAddon();
  if (!r.ok)
    throw new KmtlsError(
      'KMTLS_PROXY_NO_ORIGINAL_DST',
      `transparent interception needs the original-dst addon: ${r.why}`,
    );
  const addon = r.addon;
  return (socket) => {
    // A TLSSocket or a socket handed over without a handle (already closed) has no descriptor.
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return null;
    return addon.getOriginalDst(fd);
  };
}
