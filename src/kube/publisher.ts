import type {
  KubeConfig,
  V1ConfigMap,
  V1MutatingWebhookConfiguration,
  V1Namespace,
} from '@kubernetes/client-node';
import { AdmissionregistrationV1Api, CoreV1Api } from '@kubernetes/client-node';
import { MANAGED_BY_LABEL } from '../pki/index.js';
import { statusOf } from './client.js';
import { ROOT_CERT_CONFIG_MAP, WEBHOOK_CONFIGURATION_NAME } from './constants.js';

/** The ConfigMap every namespace gets with the mesh's root bundle (Istio's `istio-ca-root-cert`). */
export const ROOT_CONFIGMAP = ROOT_CERT_CONFIG_MAP;
export const ROOT_CONFIGMAP_KEY = 'root-cert.pem';
/** The label on everything the controller writes (the same one the PKI puts on TLS Secrets). */
export const MANAGED_BY = MANAGED_BY_LABEL;
export const WEBHOOK_CONFIGURATION = WEBHOOK_CONFIGURATION_NAME;

/**
 * Keeps the root bundle published: ConfigMap `kmtls-ca-root-cert` in every namespace that is not
 * being deleted, with exactly the current bundle (during a root rotation, both roots), recreated when
 * someone deletes or edits it; and the injection webhook's `caBundle`, so the API server trusts the
 * webhook's certificate from the mesh CA.
 */
export class RootPublisher {
  private readonly core: CoreV1Api;
  private readonly admission: AdmissionregistrationV1Api;

  constructor(
    kc: KubeConfig,
    private readonly log: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.admission = kc.makeApiClient(AdmissionregistrationV1Api);
  }

  /** Brings every namespace's ConfigMap in line; returns how many were written. */
  async publish(
    bundlePem: string,
    namespaces: readonly V1Namespace[],
    existing: readonly V1ConfigMap[],
  ): Promise<number> {
    const have = new Map(existing.map((c) => [c.metadata?.namespace ?? '', c]));
    let written = 0;
    for (const ns of namespaces) {
      const name = ns.metadata?.name;
      if (!name || ns.status?.phase === 'Terminating' || ns.metadata?.deletionTimestamp) continue;
      const current = have.get(name);
      if (current?.data?.[ROOT_CONFIGMAP_KEY] === bundlePem) continue;
      const body: V1ConfigMap = {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: ROOT_CONFIGMAP, namespace: name, labels: { ...MANAGED_BY } },
        data: { [ROOT_CONFIGMAP_KEY]: bundlePem },
      };
      try {
        if (current) {
          await this.core.replaceNamespacedConfigMap({
            name: ROOT_CONFIGMAP,
            namespace: name,
            body: {
              ...body,
              metadata: { ...body.metadata, resourceVersion: current.metadata?.resourceVersion ?? '' },
            },
          });
        } else {
          await this.core.createNamespacedConfigMap({ namespace: name, body });
        }
        written++;
      } catch (err) {
        // 409: the cache was behind (created or changed meanwhile); the watch brings us back here.
        if (statusOf(err) !== 409 && statusOf(err) !== 404 && statusOf(err) !== 403) throw err;
        this.log('warn', `could not write ConfigMap ${name}/${ROOT_CONFIGMAP}; retrying on the next change`, {
          status: statusOf(err),
        });
      }
    }
    return written;
  }

  /** Puts the bundle into every webhook of the injector's configuration; false when there is none yet. */
  async patchWebhookCaBundle(bundlePem: string): Promise<boolean> {
    let cfg: V1MutatingWebhookConfiguration;
    try {
      cfg = await this.admission.readMutatingWebhookConfiguration({ name: WEBHOOK_CONFIGURATION });
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw err;
    }
    const caBundle = Buffer.from(bundlePem).toString('base64');
    const webhooks = cfg.webhooks ?? [];
    if (webhooks.every((w) => w.clientConfig.caBundle === caBundle)) return true;
    await this.admission.replaceMutatingWebhookConfiguration({
      name: WEBHOOK_CONFIGURATION,
      body: {
        ...cfg,
        webhooks: webhooks.map((w) => ({ ...w, clientConfig: { ...w.clientConfig, caBundle } })),
      },
    });
    this.log('info', 'injection webhook caBundle updated', { webhooks: webhooks.length });
    return true;
  }
}
