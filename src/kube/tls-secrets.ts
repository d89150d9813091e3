import type { KubeConfig, V1Role, V1RoleBinding } from '@kubernetes/client-node';
import { RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { meshIdentity } from '../identity/index.js';
import type { CertificateAuthority, SecretStore, TlsSecretResult } from '../pki/index.js';
import { ensureTlsSecret, TLS_SECRET_ANNOTATION } from '../pki/index.js';
import { statusOf } from './client.js';
import { MANAGED_BY } from './publisher.js';

/** On a ServiceAccount or a pod (template): "true" asks for a `kubernetes.io/tls` Secret for that identity. */
export const TLS_SECRET_OPT_IN = 'kmtls.io/tls-secret';
/** Optional: the Secret's name; default `kmtls-tls-<serviceaccount>`. */
export const TLS_SECRET_NAME = 'kmtls.io/tls-secret-name';

export interface TlsSecretWant {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly secret: string;
}

export function defaultTlsSecretName(serviceAccount: string): string {
  return `kmtls-tls-${serviceAccount}`.slice(0, 253);
}

/** The Role and RoleBinding that let one ServiceAccount, and nobody else, read its own Secret. */
export function accessFor(want: TlsSecretWant): { role: V1Role; binding: V1RoleBinding } {
  const name = `kmtls-tls-${want.serviceAccount}`.slice(0, 253);
  return {
    role: {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name, namespace: want.namespace, labels: { ...MANAGED_BY } },
      rules: [
        { apiGroups: [''], resources: ['secrets'], resourceNames: [want.secret], verbs: ['get', 'watch'] },
      ],
    },
    binding: {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name, namespace: want.namespace, labels: { ...MANAGED_BY } },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
      subjects: [{ kind: 'ServiceAccount', name: want.serviceAccount, namespace: want.namespace }],
    },
  };
}

/**
 * Issues and renews the opt-in `kubernetes.io/tls` Secrets (for workloads that terminate mTLS
 * themselves), each readable only by its ServiceAccount through a Role and RoleBinding the controller
 * keeps. A deleted Secret, Role or binding is recreated on the next pass.
 */
export class TlsSecretReconciler {
  private readonly rbac: RbacAuthorizationV1Api;

  constructor(
    kc: KubeConfig,
    private readonly store: SecretStore,
    private readonly trustDomain: string,
    private readonly log: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void,
    private readonly ttlMs?: number,
  ) {
    this.rbac = kc.makeApiClient(RbacAuthorizationV1Api);
  }

  /** One pass over every wanted Secret; returns when the next one is due (ms since the epoch). */
  async reconcile(ca: CertificateAuthority, wants: readonly TlsSecretWant[], nowMs: number): Promise<number> {
    let next = Number.POSITIVE_INFINITY;
    for (const want of wants) {
      const id = meshIdentity(this.trustDomain, want.namespace, want.serviceAccount);
      if (!id.ok) continue;
      let result: TlsSecretResult;
      try {
        // Never a confused deputy: a Secret kmtls did not make, or made for another identity, is left
        // alone, whatever a workload's annotation names (it could be another team's key, or an
        // ingress certificate).
        const existing = await this.store.get(want.namespace, want.secret);
        const owner = existing?.annotations[TLS_SECRET_ANNOTATION.identity];
        const managed = existing?.labels['app.kubernetes.io/managed-by'] === 'kmtls';
        if (existing && (!managed || owner !== id.id.uri)) {
          this.log(
            'warn',
            `TLS Secret ${want.namespace}/${want.secret} not issued: it already exists and is not kmtls's for ${id.id.uri}`,
            {
              code: 'KMTLS_TLS_SECRET_CONFLICT',
              owner: managed ? owner : 'not managed by kmtls',
            },
          );
          continue;
        }
        result = await ensureTlsSecret(
          this.store,
          ca,
          {
            namespace: want.namespace,
            name: want.secret,
            identity: id.id,
            ...(this.ttlMs ? { ttlMs: this.ttlMs } : {}),
          },
          { nowMs, random: Math.random },
        );
        await this.ensureAccess(want);
      } catch (err) {
        this.log('warn', `TLS Secret ${want.namespace}/${want.secret} not reconciled; retrying`, {
          err: (err as Error).message,
        });
        next = Math.min(next, nowMs + 10_000);
        continue;
      }
      if (result.action !== 'unchanged') {
        this.log('info', `TLS Secret ${want.namespace}/${want.secret} ${result.action}: ${result.reason}`, {
          identity: id.id.uri,
          notAfter: result.notAfter.toISOString(),
        });
      }
      next = Math.min(next, result.renewAtMs);
    }
    return next;
  }

  private async ensureAccess(want: TlsSecretWant): Promise<void> {
    const { role, binding } = accessFor(want);
    const ns = want.namespace;
    const name = role.metadata!.name!;
    try {
      const current = await this.rbac.readNamespacedRole({ name, namespace: ns });
      if (JSON.stringify(current.rules) !== JSON.stringify(role.rules)) {
        await this.rbac.replaceNamespacedRole({
          name,
          namespace: ns,
          body: {
            ...role,
            metadata: { ...role.metadata, resourceVersion: current.metadata?.resourceVersion ?? '' },
          },
        });
      }
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      await this.rbac.createNamespacedRole({ namespace: ns, body: role });
    }
    try {
      const current = await this.rbac.readNamespacedRoleBinding({ name, namespace: ns });
      if (JSON.stringify(current.subjects) !== JSON.stringify(binding.subjects)) {
        await this.rbac.replaceNamespacedRoleBinding({
          name,
          namespace: ns,
          body: {
            ...binding,
            metadata: { ...binding.metadata, resourceVersion: current.metadata?.resourceVersion ?? '' },
          },
        });
      }
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      await this.rbac.createNamespacedRoleBinding({ namespace: ns, body: binding });
    }
  }
}
