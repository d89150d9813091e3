import { createHash, randomBytes } from 'node:crypto';
import type { Dirent, Stats } from 'node:fs';
import { constants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { parseDocument, stringify } from 'yaml';
import { KmtlsError } from '../errors.js';
import type { Secret, SecretStore } from './secret-store.js';
import {
  isDnsLabel,
  isDnsSubdomain,
  namespaceProblem,
  secretFromManifest,
  secretProblem,
  secretRefProblem,
  secretToManifest,
} from './secret-store.js';

/** Larger than any Secret the API server takes (1 MiB of data, base64-encoded), so never a real one. */
const MAX_FILE_BYTES = 4 * 1024 * 1024;
/** ext4 and most file systems hold at most 255 bytes per name; `.yaml` takes 5 of them. */
const MAX_NAME_LENGTH = 250;
const HEADER =
  '# A Kubernetes Secret kept by kmtls (`kubectl apply -f` takes it). Do not edit: the last line is a\n' +
  '# checksum of everything above it, and kmtls refuses a file that does not match.\n';
const TRAILER = /^# kmtls-sha256: ([0-9a-f]{64})$/;
/** `.kmtls-<pid>-<random>.tmp`: the pid tells a stray file (its writer is gone) from one being written. */
const TEMP_FILE = /^\.kmtls-(\d+)-[0-9a-f]{16}\.tmp$/;
/**
 * Temp files this process is writing right now, across all stores, so that a write never removes
 * the temp file of a concurrent write to the same directory.
 */
const tempFilesInFlight = new Set<string>();

/**
 * Secrets as files, for local mode: `<stateDir>/secrets/<namespace>/<name>.yaml`, each a complete v1
 * Secret manifest with base64 `data`, followed by a `# kmtls-sha256: <hex>` line over the bytes before it
 * (a comment, so kubectl ignores it; it is how a truncated or damaged file is told from a short one).
 *
 * Files are 0600, directories 0700; reads refuse anything group or others can read or write, judged by
 * the mode bits. Writes go to a temp file in the same directory that is fsynced and renamed over the
 * target, then the directory is fsynced: after a crash the target holds the old or the new Secret.
 * Temp files left by a crash are ignored by reads and removed by the next write to their directory.
 * Concurrent writers of one Secret (in this process or another) end with one of the versions whole.
 */
export class FileSecretStore implements SecretStore {
  readonly stateDir: string;
  readonly secretsDir: string;

  constructor(stateDir: string) {
    if (typeof stateDir !== 'string' || stateDir === '') {
      throw new KmtlsError('KMTLS_STATE_IO', 'invalid state directory: "" (the path is empty)');
    }
    this.stateDir = resolve(stateDir);
    this.secretsDir = join(this.stateDir, 'secrets');
  }

  /** Where the Secret `namespace/name` is kept. Refuses names that are not Kubernetes names. */
  pathOf(namespace: string, name: string): string {
    checkRef(namespace, name);
    return join(this.secretsDir, namespace, `${name}.yaml`);
  }

  async get(namespace: string, name: string): Promise<Secret | undefined> {
    const path = this.pathOf(namespace, name);
    if (!(await checkDirectory(this.secretsDir))) return undefined;
    if (!(await checkDirectory(dirname(path)))) return undefined;
    return readSecretFile(path, namespace, name);
  }

  async put(secret: Secret): Promise<void> {
    const path = this.pathOf(secret.namespace, secret.name);
    const problem = secretProblem(secret);
    if (problem !== undefined) {
      throw new KmtlsError(
        'KMTLS_STATE_IO',
        `invalid secret: ${secret.namespace}/${secret.name} (${problem})`,
      );
    }
    const dir = dirname(path);
    await makeDirectory(dir);
    await checkDirectory(this.secretsDir);
    await checkDirectory(dir);
    await replaceFile(path, encodeSecretFile(secret), 0o600);
  }

  async delete(namespace: string, name: string): Promise<boolean> {
    const path = this.pathOf(namespace, name);
    try {
      await unlink(path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return false;
      throw ioError('cannot delete state file', path, err);
    }
    try {
      await syncDirectory(dirname(path));
    } catch (err) {
      throw ioError('cannot sync state directory', dirname(path), err);
    }
    return true;
  }

  async list(namespace?: string): Promise<Secret[]> {
    if (namespace !== undefined) {
      const problem = namespaceProblem(namespace);
      if (problem !== undefined) {
        throw new KmtlsError('KMTLS_STATE_IO', `invalid namespace: ${String(namespace)} (${problem})`);
      }
    }
    if (!(await checkDirectory(this.secretsDir))) return [];
    const namespaces =
      namespace !== undefined
        ? [namespace]
        : (await readEntries(this.secretsDir))
            .filter((entry) => entry.isDirectory() && isDnsLabel(entry.name))
            .map((entry) => entry.name)
            .sort();
    const out: Secret[] = [];
    for (const ns of namespaces) {
      const dir = join(this.secretsDir, ns);
      if (!(await checkDirectory(dir))) continue;
      const names = (await readEntries(dir))
        .map((entry) => entry.name)
        .filter((entry) => entry.endsWith('.yaml'))
        .map((entry) => entry.slice(0, -'.yaml'.length))
        // Anything else in the directory (temp files, an editor's backup) is not a Secret of ours.
        .filter((name) => name.length <= MAX_NAME_LENGTH && isDnsSubdomain(name))
        .sort();
      for (const name of names) {
        const secret = await readSecretFile(join(dir, `${name}.yaml`), ns, name);
        if (secret !== undefined) out.push(secret); // undefined: deleted since readdir
      }
    }
    return out;
  }
}

/**
 * Replaces the file at `path` with `bytes`, atomically and durably, the way FileSecretStore writes a
 * Secret: a temp file in the same directory (O_EXCL), fsynced, renamed over `path`, then the directory
 * fsynced. Missing parent directories are created 0700; existing ones are left as they are. The file
 * ends up with exactly `mode`, whatever the umask. For files outside the store, such as `ca issue` output.
 */
export async function writeFileAtomic(path: string, bytes: Buffer, mode: number): Promise<void> {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new KmtlsError('KMTLS_STATE_IO', `BUG: invalid file mode: ${String(mode)} (expected 0..0o777)`);
  }
  const target = resolve(path);
  await makeDirectory(dirname(target));
  await replaceFile(target, bytes, mode);
}

async function replaceFile(path: string, bytes: Buffer, mode: number): Promise<void> {
  const dir = dirname(path);
  await removeStrayTempFiles(dir);
  const temp = join(dir, `.kmtls-${process.pid}-${randomBytes(8).toString('hex')}.tmp`);
  tempFilesInFlight.add(temp);
  let isRenamed = false;
  try {
    // O_EXCL and O_NOFOLLOW: never write through a file or a link someone else put at this name.
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const handle = await open(temp, flags, 0o600);
    try {
      await handle.chmod(mode); // open's mode is filtered by the umask; the result must be exactly `mode`
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
    isRenamed = true;
    await syncDirectory(dir);
  } catch (err) {
    if (!isRenamed) await rm(temp, { force: true }).catch(() => undefined);
    throw isRenamed ? ioError('cannot sync directory', dir, err) : ioError('cannot write file', path, err);
  } finally {
    tempFilesInFlight.delete(temp);
  }
}

/** The file's bytes: header, manifest, checksum line. YAML 1.1 quoting, so kubectl reads `yes` as a string. */
function encodeSecretFile(secret: Secret): Buffer {
  const body = Buffer.from(
    HEADER + stringify(secretToManifest(secret), { version: '1.1', lineWidth: 0 }),
    'utf8',
  );
  const digest = createHash('sha256').update(body).digest('hex');
  return Buffer.concat([body, Buffer.from(`# kmtls-sha256: ${digest}\n`, 'utf8')]);
}

/** The Secret in `bytes`, or the reason they are not a complete, well-formed one. */
function decodeSecretFile(bytes: Buffer, namespace: string, name: string): Secret | string {
  if (bytes.length === 0) return 'the file is empty';
  if (bytes[bytes.length - 1] !== 0x0a) return 'truncated: the file does not end with a complete line';
  const trailerStart = bytes.lastIndexOf(0x0a, bytes.length - 2) + 1;
  const trailer = TRAILER.exec(bytes.subarray(trailerStart, bytes.length - 1).toString('latin1'));
  if (trailer === null)
    return 'truncated or not written by kmtls: the last line is not "# kmtls-sha256: <hex>"';
  const body = bytes.subarray(0, trailerStart);
  if (createHash('sha256').update(body).digest('hex') !== trailer[1]) {
    return 'the content does not match its kmtls-sha256 line: damaged, or edited by hand';
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    return 'not UTF-8 text';
  }
  // The parser's own messages quote the offending line, which may be key material: report code and
  // position only, and do not chain the parser's error as the cause.
  const doc = parseDocument(text, { version: '1.1', uniqueKeys: true });
  const [yamlError] = doc.errors;
  if (yamlError !== undefined) {
    const at = yamlError.linePos?.[0];
    return `not YAML: ${yamlError.code}${at ? ` at line ${at.line}, column ${at.col}` : ''}`;
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 0 });
  } catch {
    return 'not a plain manifest: it uses YAML aliases';
  }
  const result = secretFromManifest(value);
  if (!result.ok) return result.reason;
  const { secret } = result;
  if (secret.namespace !== namespace) {
    return `metadata.namespace is "${secret.namespace}" but the file is in the directory of namespace "${namespace}"`;
  }
  if (secret.name !== name) return `metadata.name is "${secret.name}" but the file is named for "${name}"`;
  return secret;
}

/** Reads one Secret file: `undefined` if there is none, a KmtlsError if it is insecure or corrupt. */
async function readSecretFile(path: string, namespace: string, name: string): Promise<Secret | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    if (errnoOf(err) === 'ELOOP') {
      throw new KmtlsError('KMTLS_STATE_IO', `cannot read state file: ${path} (it is a symbolic link)`, {
        cause: err,
      });
    }
    throw ioError('cannot read state file', path, err);
  }
  let bytes: Buffer;
  try {
    const info = await handle.stat();
    if (!info.isFile())
      throw new KmtlsError('KMTLS_STATE_IO', `cannot read state file: ${path} (not a regular file)`);
    // Judged by the mode bits, not by whether reading works: root can read anything.
    refuseExposed('state file', path, info.mode, '600');
    if (info.size > MAX_FILE_BYTES) throw corrupt(path, `${info.size} bytes, more than any Secret`);
    bytes = await handle.readFile();
  } catch (err) {
    if (err instanceof KmtlsError) throw err;
    throw ioError('cannot read state file', path, err);
  } finally {
    await handle.close();
  }
  const secret = decodeSecretFile(bytes, namespace, name);
  if (typeof secret === 'string') throw corrupt(path, secret);
  return secret;
}

/**
 * `false` if `dir` does not exist; throws if it is not a directory or if group or others may read or
 * write it (they could list, add or replace Secrets).
 */
async function checkDirectory(dir: string): Promise<boolean> {
  let info: Stats;
  try {
    info = await stat(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return false;
    throw ioError('cannot read state directory', dir, err);
  }
  if (!info.isDirectory())
    throw new KmtlsError('KMTLS_STATE_IO', `cannot read state directory: ${dir} (not a directory)`);
  refuseExposed('state directory', dir, info.mode, '700');
  return true;
}

function refuseExposed(what: string, path: string, mode: number, fixMode: string): void {
  if ((mode & 0o077) === 0) return;
  const isOthers = (mode & 0o007) !== 0;
  const bits = isOthers ? mode & 0o007 : (mode >> 3) & 0o007;
  const verbs = [bits & 0o4 ? 'readable' : '', bits & 0o2 ? 'writable' : ''].filter(Boolean).join(' and ');
  const octal = (mode & 0o7777).toString(8).padStart(4, '0');
  throw new KmtlsError(
    'KMTLS_STATE_INSECURE_PERMISSIONS',
    `${what} is ${verbs || 'accessible'} by ${isOthers ? 'others' : 'its group'}: ${path} (mode ${octal}); run chmod ${fixMode} ${path}`,
  );
}

/** Creates `dir` and its missing parents 0700, and makes their directory entries durable. */
async function makeDirectory(dir: string): Promise<void> {
  let first: string | undefined;
  try {
    first = await mkdir(dir, { recursive: true, mode: 0o700 });
    if (first === undefined) return;
    // Each new directory is an entry in its parent: sync the parents, from the deepest up.
    for (let child = dir; ; child = dirname(child)) {
      const parent = dirname(child);
      await syncDirectory(parent);
      if (child === first || parent === child) break;
    }
  } catch (err) {
    throw ioError('cannot create directory', dir, err);
  }
}

/** Removes temp files whose writer is gone: another process that died, or a failed write of this one. */
async function removeStrayTempFiles(dir: string): Promise<void> {
  for (const { name } of await readEntries(dir)) {
    const match = TEMP_FILE.exec(name);
    if (match === null) continue;
    const path = join(dir, name);
    const pid = Number(match[1]);
    if (tempFilesInFlight.has(path)) continue;
    if (pid !== process.pid && isProcessAlive(pid)) continue;
    try {
      await rm(path, { force: true });
    } catch (err) {
      throw ioError('cannot remove stray temp file', path, err);
    }
  }
}

function isProcessAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return true; // not a pid we wrote: leave the file alone
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoOf(err) === 'EPERM';
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readEntries(dir: string): Promise<Dirent[]> {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (err) {
    throw ioError('cannot read state directory', dir, err);
  }
}

function checkRef(namespace: string, name: string): void {
  const problem = secretRefProblem(namespace, name);
  if (problem !== undefined)
    throw new KmtlsError(
      'KMTLS_STATE_IO',
      `invalid secret reference: ${String(namespace)}/${String(name)} (${problem})`,
    );
  if (name.length > MAX_NAME_LENGTH) {
    throw new KmtlsError(
      'KMTLS_STATE_IO',
      `invalid secret reference: ${namespace}/${name} (name longer than ${MAX_NAME_LENGTH} characters, the most a file name holds)`,
    );
  }
}

function corrupt(path: string, reason: string): KmtlsError {
  return new KmtlsError(
    'KMTLS_STATE_CORRUPT',
    `state file is corrupt: ${path} (${reason}); restore it from a backup or remove it`,
  );
}

function ioError(what: string, path: string, err: unknown): KmtlsError {
  if (err instanceof KmtlsError) return err;
  const reason = errnoOf(err) ?? (err instanceof Error ? err.message : String(err));
  return new KmtlsError('KMTLS_STATE_IO', `${what}: ${path} (${reason})`, { cause: err });
}

function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
