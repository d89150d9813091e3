import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Diagnostic } from '../policy/index.js';
import { diagnostic } from '../policy/index.js';
import type { ReadResult } from './resources.js';
import { readResources } from './resources.js';
import type { ManifestObject } from './yaml-source.js';
import { parseManifestText } from './yaml-source.js';

const MANIFEST_EXTENSIONS = new Set(['.yaml', '.yml', '.json']);

export interface LoadResult extends ReadResult {
  /** Every file read, in the order read. */
  readonly files: readonly string[];
}

export interface LoadOptions {
  /** Reads standard input for the path `-`. */
  readonly readStdin?: () => Promise<string>;
}

/** Reads all of standard input as UTF-8. */
export async function readStdinText(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Files below a directory, depth first in name order, skipping hidden entries and node_modules. */
export async function listManifestFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const out: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.') || e.name === 'node_modules') continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listManifestFiles(full)));
    else if (e.isFile() && MANIFEST_EXTENSIONS.has(path.extname(e.name).toLowerCase())) out.push(full);
  }
  return out;
}

function errnoReason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'ENOENT':
      return 'no such file or directory';
    case 'EACCES':
      return 'permission denied';
    case 'EISDIR':
      return 'is a directory';
    default:
      return e.message ?? String(err);
  }
}

/**
 * Loads manifests from files, directories (recursively: .yaml, .yml, .json) and `-` for stdin.
 * Never throws for bad input: unreadable paths and broken YAML become located diagnostics, and
 * everything readable is still read.
 */
export async function loadManifests(
  paths: readonly string[],
  options: LoadOptions = {},
): Promise<LoadResult> {
  const diagnostics: Diagnostic[] = [];
  const objects: ManifestObject[] = [];
  const files: string[] = [];
  const readOne = async (file: string, text: string) => {
    files.push(file);
    const parsed = parseManifestText(text, file);
    objects.push(...parsed.objects);
    diagnostics.push(...parsed.diagnostics);
  };
  for (const p of paths) {
    if (p === '-') {
      await readOne('<stdin>', await (options.readStdin ?? readStdinText)());
      continue;
    }
    try {
      const s = await stat(p);
      const list = s.isDirectory() ? await listManifestFiles(p) : [p];
      if (s.isDirectory() && list.length === 0) {
        diagnostics.push(
          diagnostic(
            'KMTLS_MANIFEST_NO_FILES',
            `no manifests in directory: ${p} (looked for .yaml, .yml and .json files)`,
            {
              location: { file: p, line: 1 },
            },
          ),
        );
      }
      for (const file of list) {
        try {
          await readOne(file, await readFile(file, 'utf8'));
        } catch (err) {
          diagnostics.push(
            diagnostic('KMTLS_MANIFEST_UNREADABLE', `cannot read manifest: ${file} (${errnoReason(err)})`, {
              location: { file, line: 1 },
            }),
          );
        }
      }
    } catch (err) {
      diagnostics.push(
        diagnostic('KMTLS_MANIFEST_UNREADABLE', `cannot read manifest: ${p} (${errnoReason(err)})`, {
          location: { file: p, line: 1 },
        }),
      );
    }
  }
  const read = readResources(objects);
  return { ...read, diagnostics: [...diagnostics, ...read.diagnostics], files };
}
