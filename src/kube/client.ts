import type { KubernetesObject } from '@kubernetes/client-node';
import { KubeConfig, KubernetesObjectApi, makeInformer } from '@kubernetes/client-node';
import { KmtlsError } from '../errors.js';

/**
 * The cluster connection: a kubeconfig file (`--kubeconfig`, `$KUBECONFIG`, ~/.kube/config) or the
 * in-cluster ServiceAccount, as every Kubernetes controller finds its API server.
 */
export function loadKubeConfig(file?: string): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (file) kc.loadFromFile(file);
    else kc.loadFromDefault();
  } catch (err) {
    throw new KmtlsError(
      'KMTLS_KUBE_CONFIG',
      `cannot load the kubeconfig${file ? ` ${file}` : ''}: ${(err as Error).message}`,
    );
  }
  if (!kc.getCurrentCluster()) throw new KmtlsError('KMTLS_KUBE_CONFIG', 'the kubeconfig names no cluster');
  return kc;
}

/** The HTTP status of a failed API call, if it was one. */
export function statusOf(err: unknown): number | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'number' ? code : undefined;
}

/** A resource kind to watch: where it is listed, and the apiVersion and kind its items carry. */
export interface KindRef {
  readonly apiVersion: string;
  readonly kind: string;
  /** Plural resource name, e.g. `peerauthentications`. */
  readonly plural: string;
  readonly namespaced: boolean;
}

function listPath(ref: KindRef): string {
  const base = ref.apiVersion.includes('/') ? `/apis/${ref.apiVersion}` : `/api/${ref.apiVersion}`;
  return `${base}/${ref.plural}`;
}

/** Whether the API server serves this kind at this version (CRDs may not be installed). */
export async function isServed(kc: KubeConfig, ref: KindRef): Promise<boolean> {
  const api = KubernetesObjectApi.makeApiClient(kc);
  try {
    await api.list(
      ref.apiVersion,
      ref.kind,
      undefined,
      undefined,
      undefined,
      undefined,
      undefined,
      undefined,
      1,
    );
    return true;
  } catch (err) {
    if (statusOf(err) === 404) return false;
    throw err;
  }
}

export interface WatchEvents<T> {
  /** Every change of the set (add, update, delete, or a relist that changed it). */
  readonly onChange: () => void;
  readonly onError?: (err: unknown) => void;
  readonly onConnect?: () => void;
  readonly filter?: (obj: T) => boolean;
  readonly labelSelector?: string;
}

/**
 * A list-and-watch of one kind, kept alive: when the watch ends (410 Gone after compaction, the API
 * server restarting, a network error), it lists again and resumes, so no change is lost; the
 * relist replaces the cache and reports deletions it missed. Items carry apiVersion and kind.
 */
export class KubeWatch<T extends KubernetesObject> {
  private readonly informer;
  private stopped = false;
  private retry = 0;
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private listed = false;

  /** Whether a list has succeeded at least once: until then the cache is empty, not "nothing there". */
  get synced(): boolean {
    return this.listed;
  }
  private readonly api: KubernetesObjectApi;

  constructor(
    kc: KubeConfig,
    readonly ref: KindRef,
    private readonly events: WatchEvents<T>,
  ) {
    this.api = KubernetesObjectApi.makeApiClient(kc);
    this.informer = makeInformer<T>(
      kc,
      listPath(ref),
      async () => {
        const list = await this.api.list<T>(
          ref.apiVersion,
          ref.kind,
          undefined,
          undefined,
          undefined,
          undefined,
          undefined,
          events.labelSelector,
        );
        this.listed = true;
        // A list that got through is the end of an outage: the next one backs off from the start.
        this.retry = 0;
        return list as never;
      },
      events.labelSelector,
    );
    const changed = () => this.events.onChange();
    this.informer.on('add', changed);
    this.informer.on('update', changed);
    this.informer.on('delete', changed);
    this.informer.on('connect', () => {
      this.events.onConnect?.();
    });
    this.informer.on('error', (err: unknown) => {
      if (this.stopped) return; // A deliberate stop reports an AbortError.
      this.events.onError?.(err);
      this.restart();
    });
  }

  private restart(): void {
    if (this.stopped || this.timer) return;
    const delay = Math.min(10_000, 100 * 2 ** Math.min(this.retry++, 7));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.stopped) return;
      this.informer.start().catch((err: unknown) => {
        this.events.onError?.(err);
        this.restart();
      });
    }, delay);
  }

  /** Resolves after the first list, or retries in the background when it fails. */
  async start(): Promise<void> {
    this.started = true;
    try {
      await this.informer.start();
    } catch (err) {
      this.events.onError?.(err);
      this.restart();
    }
  }

  list(): T[] {
    if (!this.started) return [];
    return this.informer
      .list()
      .map((o) => ({ ...o, apiVersion: this.ref.apiVersion, kind: this.ref.kind }) as T)
      .filter((o) => this.events.filter?.(o) ?? true);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.informer.stop().catch(() => {});
  }
}
