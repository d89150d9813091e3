import type { FSWatcher } from 'node:fs';
import { watch } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { MeshResources } from '../mesh/index.js';
import type { Diagnostic } from '../policy/index.js';
import { hasErrors } from '../policy/index.js';
import { listManifestFiles } from './load.js';
import { readResources } from './resources.js';
import type { ManifestObject } from './yaml-source.js';
import { parseManifestText } from './yaml-source.js';

/** A file whose latest text was refused: what is wrong, and whether an older good version still serves. */
export interface FileError {
  readonly file: string;
  readonly diagnostics: readonly Diagnostic[];
  /** True when an earlier good version of the file keeps serving; false when it never had one. */
  readonly servingLastGood: boolean;
  /** When the bad version was first seen (ms since the epoch). */
  readonly sinceMs: number;
}

/** One consistent view of the directory: the resources of every file's last good version. */
export interface SourceState {
  /** Increments whenever the resources change. */
  readonly generation: number;
  readonly resources: MeshResources;
  readonly files: readonly string[];
  readonly errors: readonly FileError[];
  /** Warnings and notes of the files that are served. */
  readonly diagnostics: readonly Diagnostic[];
  /** When the change behind this generation was noticed (ms since the epoch). */
  readonly changedAtMs: number;
}

/** Where the resources come from: a directory now, the Kubernetes API in a cluster. */
export interface ResourceSource {
  current(): SourceState;
  /** Calls `listener` after every change of `current()`; returns an unsubscribe. */
  subscribe(listener: (state: SourceState) => void): () => void;
  close(): void;
}

interface FileEntry {
  readonly text: string;
  /** The last version without errors; undefined if the file never had one. */
  readonly good:
    | {
        readonly text: string;
        readonly objects: readonly ManifestObject[];
        readonly diagnostics: readonly Diagnostic[];
      }
    | undefined;
  readonly error: FileError | undefined;
}

/**
 * A directory of manifests, watched. Each file is judged on its own, as the API server judges each
 * object: a version with errors (broken YAML, a policy the API server would refuse, a broken object)
 * is reported and the file's last good version keeps serving until it is fixed. A deleted file's
 * objects go away. Bursts of events (an editor's save is several) are folded into one rescan.
 */
export class DirectorySource implements ResourceSource {
  private readonly files = new Map<string, FileEntry>();
  private state: SourceState;
  private readonly listeners = new Set<(s: SourceState) => void>();
  private readonly watchers = new Map<string, FSWatcher>();
  private watching = false;
  private scanning: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    readonly dir: string,
    private readonly now: () => number,
    private readonly debounceMs: number,
    private readonly settle: () => Promise<void>,
  ) {
    this.state = {
      generation: 0,
      resources: readResources([]).resources,
      files: [],
      errors: [],
      diagnostics: [],
      changedAtMs: now(),
    };
  }

  /** Reads the directory once and starts watching it. */
  static async open(
    dir: string,
    options: {
      now?: () => number;
      debounceMs?: number;
      watch?: boolean;
      /** How long to wait before believing that a file which had objects is now empty (default 100 ms). */
      settleMs?: number;
      /** Replaces the settle wait (tests); called before the emptied file is read again. */
      settle?: () => Promise<void>;
    } = {},
  ): Promise<DirectorySource> {
    const settleMs = options.settleMs ?? 100;
    const settle = options.settle ?? (() => new Promise<void>((r) => setTimeout(r, settleMs)));
    const source = new DirectorySource(dir, options.now ?? Date.now, options.debounceMs ?? 25, settle);
    await source.rescan();
    if (options.watch !== false) source.startWatching();
    return source;
  }

  current(): SourceState {
    return this.state;
  }

  subscribe(listener: (state: SourceState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.watching = false;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    if (this.timer) clearTimeout(this.timer);
    this.listeners.clear();
  }

  /** Reads every file again; resolves when the new state (if any) is published. */
  rescan(): Promise<void> {
    this.scanning = this.scanning.then(() => this.scan());
    return this.scanning;
  }

  /**
   * One non-recursive watch per directory. Node 20's recursive watch on Linux follows files by
   * inode, so it loses a file an editor saves by renaming a new one over it; a directory watch does not.
   */
  private startWatching(): void {
    this.watching = true;
    void this.watchDirectories();
  }

  private async watchDirectories(): Promise<void> {
    if (!this.watching) return;
    const dirs = new Set<string>();
    const walk = async (d: string) => {
      dirs.add(d);
      let entries: import('node:fs').Dirent[];
      try {
        entries = await readdir(d, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (e.isDirectory() && !e.name.startsWith('.') && e.name !== 'node_modules')
          await walk(path.join(d, e.name));
      }
    };
    await walk(this.dir);
    for (const [d, w] of this.watchers) {
      if (!dirs.has(d)) {
        w.close();
        this.watchers.delete(d);
      }
    }
    for (const d of dirs) {
      if (this.watchers.has(d)) continue;
      try {
        const w = watch(d, () => this.onEvent());
        w.on('error', () => {});
        this.watchers.set(d, w);
      } catch {
        // Gone already; the next scan looks again.
      }
    }
  }

  private onEvent(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.rescan().then(() => this.watchDirectories());
    }, this.debounceMs);
  }

  private async scan(): Promise<void> {
    const noticedAt = this.now();
    let list: string[];
    try {
      list = await listManifestFiles(this.dir);
    } catch {
      // The directory is gone or unreadable for a moment: keep serving what we have.
      return;
    }
    let changed = false;
    const seen = new Set(list);
    for (const file of [...this.files.keys()]) {
      if (!seen.has(file)) {
        this.files.delete(file);
        changed = true;
      }
    }
    for (const file of list) {
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch {
        continue; // Vanished between listing and reading; the next event rescans.
      }
      const prior = this.files.get(file);
      if (prior && prior.text === text) continue;
      let parsed = parseManifestText(text, file);
      if (
        (prior?.good?.objects.length ?? 0) > 0 &&
        parsed.objects.length === 0 &&
        !hasErrors(parsed.diagnostics)
      ) {
        // A file that had objects reads as empty: most likely an editor truncated it and has not
        // written the new text yet. Look again after a moment before letting its objects (a STRICT
        // policy, say) vanish; if it is still empty, the user really emptied it.
        await this.settle();
        try {
          text = await readFile(file, 'utf8');
        } catch {
          continue; // Gone now; the next scan sees the deletion.
        }
        if (prior && prior.text === text) continue;
        parsed = parseManifestText(text, file);
      }
      changed = true;
      const read = readResources(parsed.objects);
      const diagnostics = [...parsed.diagnostics, ...read.diagnostics];
      const refusedPolicies = read.resources.rejectedPeerAuthentications.length > 0;
      if (hasErrors(diagnostics) || refusedPolicies) {
        this.files.set(file, {
          text,
          good: prior?.good,
          error: {
            file,
            diagnostics: diagnostics.filter((d) => d.severity === 'error'),
            servingLastGood: prior?.good !== undefined,
            sinceMs: prior?.error?.sinceMs ?? noticedAt,
          },
        });
      } else {
        this.files.set(file, {
          text,
          good: { text, objects: parsed.objects, diagnostics },
          error: undefined,
        });
      }
    }
    if (!changed && this.state.generation > 0) return;
    const entries = [...this.files.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const served = entries.flatMap(([, e]) => (e.good ? [...e.good.objects] : []));
    const read = readResources(served);
    const previousServed = this.servedKey;
    // Only what is served counts: a file that never had a good version changes nothing served.
    this.servedKey = entries.flatMap(([f, e]) => (e.good ? [`${f}\0${e.good.text}`] : [])).join('\0\0');
    const errors = entries.flatMap(([, e]) => (e.error ? [e.error] : []));
    const resourcesChanged = previousServed !== this.servedKey;
    this.state = {
      generation: this.state.generation + (resourcesChanged || this.state.generation === 0 ? 1 : 0),
      resources: resourcesChanged || this.state.generation === 0 ? read.resources : this.state.resources,
      files: entries.map(([f]) => f),
      errors,
      diagnostics: [...entries.flatMap(([, e]) => e.good?.diagnostics ?? []), ...read.diagnostics],
      changedAtMs: resourcesChanged ? noticedAt : this.state.changedAtMs,
    };
    for (const l of this.listeners) l(this.state);
  }

  private servedKey = '';
}
