import type { KubeConfig, V1Lease } from '@kubernetes/client-node';
import { CoordinationV1Api } from '@kubernetes/client-node';
import { statusOf } from './client.js';

/**
 * A Lease's times are MicroTime: RFC 3339 with exactly six fractional digits. The client library
 * writes a Date with three, which the API server refuses; it passes a string through unchanged.
 */
function microTime(d: Date): Date {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z') as unknown as Date;
}

export interface LeaderElectionOptions {
  readonly namespace: string;
  readonly name: string;
  /** This replica's name (the pod name). */
  readonly identity: string;
  readonly leaseDurationMs?: number;
  readonly renewEveryMs?: number;
  readonly onStartedLeading: () => void;
  readonly onStoppedLeading: () => void;
  readonly log?: (msg: string, fields?: Record<string, unknown>) => void;
}

/**
 * Leader election with a coordination.k8s.io Lease, as client-go's leaderelection does: the holder
 * renews every `renewEveryMs`; another replica takes over when the lease has not been renewed for
 * `leaseDurationMs`. Writes use the Lease's resourceVersion, so two replicas never both win. Only
 * writers (root ConfigMaps, the webhook's caBundle, TLS Secrets) wait for leadership; every replica
 * serves signing and config.
 */
export class LeaderElector {
  private readonly api: CoordinationV1Api;
  private leading = false;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastRenewMs = 0;

  constructor(
    kc: KubeConfig,
    private readonly o: LeaderElectionOptions,
  ) {
    this.api = kc.makeApiClient(CoordinationV1Api);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    void this.tick();
  }

  private get durationMs(): number {
    return this.o.leaseDurationMs ?? 15_000;
  }

  /** A leader that has not renewed for this long stops acting as one, before anyone else may take over. */
  private get renewDeadlineMs(): number {
    return Math.floor((this.durationMs * 2) / 3);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const every = this.o.renewEveryMs ?? 2_000;
    try {
      // A hung API call must not keep a stale leader leading: give each attempt a deadline.
      await Promise.race([
        this.tryAcquireOrRenew(),
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error('lease call timed out')), every).unref(),
        ),
      ]);
    } catch (err) {
      this.o.log?.('leader election: lease update failed', { err: (err as Error).message });
    }
    if (this.leading && Date.now() - this.lastRenewMs > this.renewDeadlineMs) this.setLeading(false);
    if (!this.stopped) this.timer = setTimeout(() => void this.tick(), every);
  }

  /** The lease record as last seen, and when (by this replica's clock): expiry never compares clocks. */
  private observed: { record: string; atMs: number } | undefined;

  private async tryAcquireOrRenew(): Promise<void> {
    const { namespace, name, identity } = this.o;
    const now = microTime(new Date());
    let lease: V1Lease | undefined;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
    const spec = {
      holderIdentity: identity,
      leaseDurationSeconds: Math.ceil(this.durationMs / 1000),
      renewTime: now,
      acquireTime: now,
      leaseTransitions: 0,
    };
    if (!lease) {
      try {
        await this.api.createNamespacedLease({ namespace, body: { metadata: { name, namespace }, spec } });
      } catch (err) {
        if (statusOf(err) === 409) return; // Another replica created it first.
        throw err;
      }
      this.lastRenewMs = Date.now();
      this.setLeading(true);
      return;
    }
    const holder = lease.spec?.holderIdentity;
    // As client-go: the lease is expired when its record has not changed for a lease duration as
    // measured here, whatever the other replica's clock wrote into renewTime.
    const record = `${holder}|${String(lease.spec?.renewTime)}|${lease.metadata?.resourceVersion}`;
    if (this.observed?.record !== record) this.observed = { record, atMs: Date.now() };
    const released = String(lease.spec?.renewTime ?? '').startsWith('1970-');
    const expired =
      released || Date.now() - this.observed.atMs > (lease.spec?.leaseDurationSeconds ?? 15) * 1000;
    if (holder !== identity && !expired) {
      if (this.leading) this.setLeading(false);
      return;
    }
    const body: V1Lease = {
      ...lease,
      spec: {
        ...lease.spec,
        holderIdentity: identity,
        leaseDurationSeconds: spec.leaseDurationSeconds,
        renewTime: now,
        ...(holder === identity
          ? {}
          : { acquireTime: now, leaseTransitions: (lease.spec?.leaseTransitions ?? 0) + 1 }),
      },
    };
    try {
      await this.api.replaceNamespacedLease({ name, namespace, body });
    } catch (err) {
      if (statusOf(err) === 409) return; // Lost the race; the next tick reads again.
      throw err;
    }
    this.lastRenewMs = Date.now();
    this.setLeading(true);
  }

  private setLeading(v: boolean): void {
    if (v === this.leading) return;
    this.leading = v;
    this.o.log?.(v ? 'became the leader' : 'no longer the leader', {
      lease: `${this.o.namespace}/${this.o.name}`,
    });
    if (v) this.o.onStartedLeading();
    else this.o.onStoppedLeading();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (!this.leading) return;
    // Give the lease up so another replica takes over at once.
    try {
      const lease = await this.api.readNamespacedLease({ name: this.o.name, namespace: this.o.namespace });
      if (lease.spec?.holderIdentity === this.o.identity) {
        await this.api.replaceNamespacedLease({
          name: this.o.name,
          namespace: this.o.namespace,
          body: {
            ...lease,
            spec: { ...lease.spec, renewTime: microTime(new Date(0)), leaseDurationSeconds: 1 },
          },
        });
      }
    } catch {
      // It expires on its own.
    }
    this.setLeading(false);
  }
}
