import { loadManifests } from '../config/index.js';
import type { MeshSnapshot } from '../mesh/index.js';
import { buildMeshSnapshot } from '../mesh/index.js';
import type { Diagnostic } from '../policy/index.js';
import type { ManifestFlags } from './args.js';
import type { CommandIo } from './io.js';

export interface Loaded {
  readonly snapshot: MeshSnapshot;
  readonly diagnostics: readonly Diagnostic[];
  readonly files: readonly string[];
}

/** Loads the manifests named by the flags and builds the snapshot every command works on. */
export async function loadSnapshot(flags: ManifestFlags, io: CommandIo): Promise<Loaded> {
  const loaded = await loadManifests(flags.files, { readStdin: io.readStdin });
  const snapshot = buildMeshSnapshot(loaded.resources, { rootNamespace: flags.rootNamespace });
  return { snapshot, diagnostics: loaded.diagnostics, files: loaded.files };
}
