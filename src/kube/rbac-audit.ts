import type { KubeConfig, RbacV1Subject, V1PolicyRule } from '@kubernetes/client-node';
import { CoreV1Api, RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { TLS_SECRET_ANNOTATION } from '../pki/index.js';
import { CACERTS_SECRET } from './controller.js';
import { MANAGED_BY } from './publisher.js';

/** One way a subject can read a mesh Secret. */
export interface SecretReader {
  readonly secret: string;
  readonly subject: string;
  readonly verbs: readonly string[];
  /** The binding and role that grant it, e.g. `ClusterRoleBinding x -> ClusterRole y`. */
  readonly via: string;
  /** `expected`: the Secret's owner or the control plane; `built-in`: Kubernetes' own system roles; `excess`: anyone else. */
  readonly kind: 'expected' | 'built-in' | 'excess';
}

const READ_VERBS = ['get', 'list', 'watch'];

function ruleReads(rule: V1PolicyRule, secretName: string): string[] {
  const groups = rule.apiGroups ?? [];
  const resources = rule.resources ?? [];
  if (!groups.includes('') && !groups.includes('*')) return [];
  if (!resources.includes('secrets') && !resources.includes('*')) return [];
  const names = rule.resourceNames ?? [];
  const verbs = rule.verbs.includes('*') ? READ_VERBS : rule.verbs.filter((v) => READ_VERBS.includes(v));
  // resourceNames restricts get (and watch by name); list/watch of the collection are not restricted by it.
  if (names.length > 0 && !names.includes(secretName)) return verbs.filter((v) => v !== 'get');
  return verbs;
}

function subjectName(s: RbacV1Subject, bindingNamespace: string | undefined): string {
  if (s.kind === 'ServiceAccount') return `ServiceAccount ${s.namespace ?? bindingNamespace}/${s.name}`;
  return `${s.kind} ${s.name}`;
}

/**
 * Who can read the mesh's Secrets (the CA, the plug-in CA, the opt-in workload TLS Secrets), from the
 * cluster's RBAC: every Role and ClusterRole rule that grants get, list or watch on them, through every
 * binding. Each reader is classed: the Secret's own ServiceAccount and the control plane are expected,
 * Kubernetes' own `system:` roles and bindings are built in, and anyone else is excess — what
 * `kmtls check --kube` reports.
 */
export async function auditSecretReaders(
  kc: KubeConfig,
  opts: { controlPlaneNamespace: string; controlPlaneServiceAccount?: string },
): Promise<SecretReader[]> {
  const core = kc.makeApiClient(CoreV1Api);
  const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
  const cpSa = `ServiceAccount ${opts.controlPlaneNamespace}/${opts.controlPlaneServiceAccount ?? 'kmtls-controlplane'}`;
  const secrets: { namespace: string; name: string; owner: string | undefined }[] = [];
  for (const name of ['kmtls-ca', CACERTS_SECRET]) {
    try {
      await core.readNamespacedSecret({ name, namespace: opts.controlPlaneNamespace });
      secrets.push({ namespace: opts.controlPlaneNamespace, name, owner: undefined });
    } catch {
      // Not there.
    }
  }
  const selector = Object.entries(MANAGED_BY)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  const managed = await core.listSecretForAllNamespaces({ labelSelector: selector });
  for (const s of managed.items) {
    const id = s.metadata?.annotations?.[TLS_SECRET_ANNOTATION.identity];
    const m = id ? /\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(id) : null;
    secrets.push({
      namespace: s.metadata?.namespace ?? '',
      name: s.metadata?.name ?? '',
      owner: m ? `ServiceAccount ${m[1]}/${m[2]}` : undefined,
    });
  }
  const [clusterRoles, clusterBindings, roles, bindings] = await Promise.all([
    rbac.listClusterRole(),
    rbac.listClusterRoleBinding(),
    rbac.listRoleForAllNamespaces(),
    rbac.listRoleBindingForAllNamespaces(),
  ]);
  const clusterRoleRules = new Map(clusterRoles.items.map((r) => [r.metadata?.name ?? '', r.rules ?? []]));
  const roleRules = new Map(
    roles.items.map((r) => [`${r.metadata?.namespace}/${r.metadata?.name}`, r.rules ?? []]),
  );
  const out: SecretReader[] = [];
  for (const secret of secrets) {
    const label = `${secret.namespace}/${secret.name}`;
    const consider = (
      bindingKind: string,
      bindingName: string,
      bindingNamespace: string | undefined,
      roleKind: string,
      roleName: string,
      rules: readonly V1PolicyRule[],
      subjects: readonly RbacV1Subject[],
      bootstrap: boolean,
    ) => {
      const verbs = [...new Set(rules.flatMap((r) => ruleReads(r, secret.name)))];
      if (verbs.length === 0) return;
      for (const s of subjects) {
        const subject = subjectName(s, bindingNamespace);
        // Kubernetes' own bootstrap bindings carry this label; a name starting with `system:` alone proves nothing.
        const builtIn = bootstrap || (s.kind === 'Group' && s.name === 'system:masters');
        out.push({
          secret: label,
          subject,
          verbs,
          via: `${bindingKind} ${bindingNamespace ? `${bindingNamespace}/` : ''}${bindingName} -> ${roleKind} ${roleName}`,
          kind: subject === cpSa || subject === secret.owner ? 'expected' : builtIn ? 'built-in' : 'excess',
        });
      }
    };
    for (const b of clusterBindings.items) {
      const rules = clusterRoleRules.get(b.roleRef.name) ?? [];
      consider(
        'ClusterRoleBinding',
        b.metadata?.name ?? '',
        undefined,
        'ClusterRole',
        b.roleRef.name,
        rules,
        b.subjects ?? [],
        b.metadata?.labels?.['kubernetes.io/bootstrapping'] === 'rbac-defaults',
      );
    }
    for (const b of bindings.items) {
      if (b.metadata?.namespace !== secret.namespace) continue;
      const rules =
        b.roleRef.kind === 'ClusterRole'
          ? (clusterRoleRules.get(b.roleRef.name) ?? [])
          : (roleRules.get(`${b.metadata.namespace}/${b.roleRef.name}`) ?? []);
      consider(
        'RoleBinding',
        b.metadata?.name ?? '',
        b.metadata.namespace,
        b.roleRef.kind,
        b.roleRef.name,
        rules,
        b.subjects ?? [],
        b.metadata?.labels?.['kubernetes.io/bootstrapping'] === 'rbac-defaults',
      );
    }
  }
  return out.sort((a, b) =>
    a.secret === b.secret
      ? a.subject < b.subject
        ? -1
        : a.subject > b.subject
          ? 1
          : 0
      : a.secret < b.secret
        ? -1
        : 1,
  );
}
