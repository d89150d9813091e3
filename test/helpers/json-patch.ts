/**
 * A strict RFC 6902 applier for tests: add, remove, replace and test, with RFC 6901 pointers.
 * It throws where a conforming server would refuse the patch (a missing parent, replacing or
 * removing what does not exist, an array index out of range), so "the patch applies" means it.
 */

export type PatchOperation =
  | { op: 'add' | 'replace' | 'test'; path: string; value: unknown }
  | { op: 'remove'; path: string };

function parsePointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/')) throw new Error(`pointer does not start with /: ${path}`);
  return path
    .slice(1)
    .split('/')
    .map((s) => {
      if (/~[^01]/.test(s) || s.endsWith('~')) throw new Error(`bad escape in pointer: ${path}`);
      return s.replace(/~1/g, '/').replace(/~0/g, '~');
    });
}

function arrayIndex(container: unknown[], token: string, forAdd: boolean, path: string): number {
  if (forAdd && token === '-') return container.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new Error(`not an array index: ${token} in ${path}`);
  const i = Number(token);
  if (i > container.length || (!forAdd && i === container.length))
    throw new Error(`array index out of range: ${path}`);
  return i;
}

export function applyJsonPatch(document: unknown, patch: readonly PatchOperation[]): unknown {
  let doc = structuredClone(document);
  for (const op of patch) {
    const tokens = parsePointer(op.path);
    if (tokens.length === 0) {
      if (op.op === 'remove') throw new Error('cannot remove the root');
      if (op.op === 'test') {
        if (JSON.stringify(doc) !== JSON.stringify(op.value)) throw new Error('test failed at root');
        continue;
      }
      doc = structuredClone(op.value);
      continue;
    }
    let parent: unknown = doc;
    for (const token of tokens.slice(0, -1)) {
      if (Array.isArray(parent)) parent = parent[arrayIndex(parent, token, false, op.path)];
      else if (parent !== null && typeof parent === 'object' && Object.hasOwn(parent, token))
        parent = (parent as Record<string, unknown>)[token];
      else throw new Error(`path does not exist: ${op.path}`);
    }
    const last = tokens[tokens.length - 1]!;
    if (Array.isArray(parent)) {
      const i = arrayIndex(parent, last, op.op === 'add', op.path);
      if (op.op === 'add') parent.splice(i, 0, structuredClone(op.value));
      else if (op.op === 'remove') parent.splice(i, 1);
      else if (op.op === 'replace') parent[i] = structuredClone(op.value);
      else if (JSON.stringify(parent[i]) !== JSON.stringify(op.value))
        throw new Error(`test failed: ${op.path}`);
    } else if (parent !== null && typeof parent === 'object') {
      const obj = parent as Record<string, unknown>;
      const exists = Object.hasOwn(obj, last);
      if (op.op !== 'add' && !exists) throw new Error(`${op.op} of a missing member: ${op.path}`);
      if (op.op === 'add' || op.op === 'replace') obj[last] = structuredClone(op.value);
      else if (op.op === 'remove') delete obj[last];
      else if (JSON.stringify(obj[last]) !== JSON.stringify(op.value))
        throw new Error(`test failed: ${op.path}`);
    } else {
      throw new Error(`parent is not a container: ${op.path}`);
    }
  }
  return doc;
}
