import type { KubeConfig, V1Secret } from '@kubernetes/client-node';
import { CoreV1Api } from '@kubernetes/client-node';
import { KmtlsError } from '../errors.js';
import type { Secret, SecretStore } from '../pki/index.js';
import { statusOf } from './client.js';

function fromApi(s: V1Secret): Secret {
  const data: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(s.data ?? {})) data[k] = Buffer.from(v, 'base64');
  return {
    namespace: s.metadata?.namespace ?? '',
    name: s.metadata?.name ?? '',
    type: s.type ?? 'Opaque',
    labels: { ...(s.metadata?.labels ?? {}) },
    annotations: { ...(s.metadata?.annotations ?? {}) },
    data,
  };
}

function toApi(s: Secret, resourceVersion?: string): V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: s.name,
      namespace: s.namespace,
      labels: { ...s.labels },
      annotations: { ...s.annotations },
      ...(resourceVersion ? { resourceVersion } : {}),
    },
    type: s.type,
    data: Object.fromEntries(Object.entries(s.data).map(([k, v]) => [k, v.toString('base64')])),
  };
}

function apiError(verb: string, what: string, err: unknown): KmtlsError {
  const body = (err as { body?: unknown }).body;
  const message = typeof body === 'string' ? body : (body as { message?: string } | undefined)?.message;
  return new KmtlsError(
    'KMTLS_KUBE_API',
    `${verb} ${what}: ${statusOf(err) ?? ''} ${message ?? (err as Error).message}`
      .replace(/\s+/g, ' ')
      .trim(),
    { cause: err },
  );
}

/**
 * Secrets as real Kubernetes Secret objects, the cluster implementation of the same store the local
 * mesh keeps as files. `put` replaces the whole object; an update that loses a race (409) reads the
 * current version and tries again once, so concurrent writers never mix two objects.
 */
export class KubeSecretStore implements SecretStore {
  private readonly api: CoreV1Api;

  constructor(kc: KubeConfig) {
    this.api = kc.makeApiClient(CoreV1Api);
  }

  async get(namespace: string, name: string): Promise<Secret | undefined> {
    try {
      return fromApi(await this.api.readNamespacedSecret({ name, namespace }));
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw apiError('get', `Secret ${namespace}/${name}`, err);
    }
  }

  async put(secret: Secret): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      let current: V1Secret | undefined;
      try {
        current = await this.api.readNamespacedSecret({ name: secret.name, namespace: secret.namespace });
      } catch (err) {
        if (statusOf(err) !== 404) throw apiError('get', `Secret ${secret.namespace}/${secret.name}`, err);
      }
      try {
        if (!current) {
          await this.api.createNamespacedSecret({ namespace: secret.namespace, body: toApi(secret) });
        } else {
          await this.api.replaceNamespacedSecret({
            name: secret.name,
            namespace: secret.namespace,
            body: toApi(secret, current.metadata?.resourceVersion),
          });
        }
        return;
      } catch (err) {
        // 409: someone else wrote (or created) it in between; read again and retry.
        if (statusOf(err) === 409 && attempt < 2) continue;
        throw apiError(current ? 'replace' : 'create', `Secret ${secret.namespace}/${secret.name}`, err);
      }
    }
  }

  /** Creates the Secret only if it does not exist: `false` when another writer got there first. */
  async createIfAbsent(secret: Secret): Promise<boolean> {
    try {
      await this.api.createNamespacedSecret({ namespace: secret.namespace, body: toApi(secret) });
      return true;
    } catch (err) {
      if (statusOf(err) === 409) return false;
      throw apiError('create', `Secret ${secret.namespace}/${secret.name}`, err);
    }
  }

  async delete(namespace: string, name: string): Promise<boolean> {
    try {
      await this.api.deleteNamespacedSecret({ name, namespace });
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw apiError('delete', `Secret ${namespace}/${name}`, err);
    }
  }

  async list(namespace?: string): Promise<Secret[]> {
    try {
      const list = namespace
        ? await this.api.listNamespacedSecret({ namespace })
        : await this.api.listSecretForAllNamespaces();
      return list.items
        .map(fromApi)
        .sort((a, b) =>
          a.namespace === b.namespace ? (a.name < b.name ? -1 : 1) : a.namespace < b.namespace ? -1 : 1,
        );
    } catch (err) {
      throw apiError('list', `Secrets${namespace ? ` in ${namespace}` : ''}`, err);
    }
  }
}
