import type { Node } from 'yaml';
import { isMap, isScalar, isSeq, LineCounter, parseAllDocuments } from 'yaml';
import type { Diagnostic, Locator, SourceLocation } from '../policy/index.js';
import { diagnostic, isRecord } from '../policy/index.js';

/** One Kubernetes object as found in a file, with a way to locate any of its fields. */
export interface ManifestObject {
  readonly body: Record<string, unknown>;
  readonly location: SourceLocation;
  readonly locate: Locator;
}

export interface ParsedText {
  readonly objects: readonly ManifestObject[];
  readonly diagnostics: readonly Diagnostic[];
}

/**
 * Parses one file's text: every YAML document, and every item of a `*List` kind, becomes an
 * object that knows its file and line. Pure: the caller reads the file.
 */
export function parseManifestText(text: string, file: string): ParsedText {
  const lineCounter = new LineCounter();
  const objects: ManifestObject[] = [];
  const diagnostics: Diagnostic[] = [];
  const at = (offset: number): SourceLocation => {
    const { line, col } = lineCounter.linePos(offset);
    return { file, line, column: col };
  };
  const docs = parseAllDocuments(text, { lineCounter, prettyErrors: false });
  // parseAllDocuments returns an EmptyStream (no documents) for an empty file.
  for (const doc of Array.isArray(docs) ? docs : []) {
    if (doc.errors.length > 0) {
      for (const err of doc.errors) {
        diagnostics.push(
          diagnostic('KMTLS_MANIFEST_YAML', `broken YAML: ${file} (${err.message.split('\n')[0]})`, {
            location: at(err.pos[0]),
          }),
        );
      }
      continue;
    }
    const root = doc.contents;
    if (root === null || (isScalar(root) && (root.value === null || root.value === undefined))) continue;
    const docLocation = at(root.range?.[0] ?? 0);
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (err) {
      diagnostics.push(
        diagnostic('KMTLS_MANIFEST_YAML', `broken YAML: ${file} (${(err as Error).message})`, {
          location: docLocation,
        }),
      );
      continue;
    }
    if (!isRecord(value)) {
      diagnostics.push(
        diagnostic(
          'KMTLS_MANIFEST_NOT_OBJECT',
          `not a Kubernetes object: a YAML document in ${file} is not a mapping`,
          {
            location: docLocation,
          },
        ),
      );
      continue;
    }
    const kind = value.kind;
    if (typeof kind === 'string' && kind.endsWith('List') && Array.isArray(value.items)) {
      value.items.forEach((item, i) => {
        const node = isMap(root) ? root.getIn(['items', i], true) : undefined;
        const itemLocation = nodeStart(node, at) ?? docLocation;
        if (!isRecord(item)) {
          diagnostics.push(
            diagnostic(
              'KMTLS_MANIFEST_NOT_OBJECT',
              `not a Kubernetes object: items[${i}] of a ${kind} in ${file}`,
              {
                location: itemLocation,
              },
            ),
          );
          return;
        }
        objects.push({
          body: item,
          location: itemLocation,
          locate: locatorFor(node as Node | undefined, at, itemLocation),
        });
      });
      continue;
    }
    objects.push({ body: value, location: docLocation, locate: locatorFor(root, at, docLocation) });
  }
  return { objects, diagnostics };
}

function nodeStart(node: unknown, at: (offset: number) => SourceLocation): SourceLocation | undefined {
  const range = (node as { range?: [number, number, number] } | undefined)?.range;
  return range ? at(range[0]) : undefined;
}

/**
 * Walks the YAML tree along a field path. Keys compare as strings, so `8080` in a path finds the
 * integer key 8080. A path that goes past what exists stops at the deepest node that does.
 */
function locatorFor(
  root: Node | undefined,
  at: (offset: number) => SourceLocation,
  fallback: SourceLocation,
): Locator {
  return (path) => {
    let node: unknown = root;
    let best = nodeStart(root, at) ?? fallback;
    for (const segment of path) {
      if (isMap(node)) {
        const pair = node.items.find(
          (p) => String(isScalar(p.key) ? p.key.value : p.key) === String(segment),
        );
        if (!pair) break;
        // Point at the key: that is the line a user edits.
        best = nodeStart(pair.key, at) ?? best;
        node = pair.value;
        if (isMap(node) || isSeq(node)) continue;
        if (pair.value) best = nodeStart(pair.value, at) ?? best;
      } else if (isSeq(node) && typeof segment === 'number') {
        const item = node.items[segment];
        if (item === undefined) break;
        node = item;
        best = nodeStart(item, at) ?? best;
      } else {
        break;
      }
    }
    return best;
  };
}
