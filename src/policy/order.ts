import type { ObjectMeta } from './model.js';

/**
 * Istio's `configCompareByCreationTime`: oldest creationTimestamp first, then name, then namespace
 * (byte order, as Go compares strings). "Oldest wins" everywhere in PeerAuthentication depends on it.
 *
 * Manifests read from files often have no creationTimestamp. Such an object is taken to be created
 * when the files are applied: newer than every object that has a timestamp, and in the same second
 * as the others without one, so among them the name decides — what `kubectl apply -f DIR` does.
 * `describeAssumedOrder` says so to the user.
 */
export function compareByCreation(a: ObjectMeta, b: ObjectMeta): number {
  const ta = a.createdAtMs;
  const tb = b.createdAtMs;
  if (ta !== undefined && tb !== undefined) {
    // Kubernetes timestamps have one-second resolution; compare at that resolution.
    const sa = Math.floor(ta / 1000);
    const sb = Math.floor(tb / 1000);
    if (sa !== sb) return sa - sb;
  } else if (ta !== undefined) {
    return -1;
  } else if (tb !== undefined) {
    return 1;
  }
  return compareStrings(a.name, b.name) || compareStrings(a.namespace, b.namespace);
}

export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Why `winner` is considered older than `loser`, in words a user can check. */
export function describeOlder(winner: ObjectMeta, loser: ObjectMeta): string {
  const tw = winner.createdAtMs;
  const tl = loser.createdAtMs;
  if (tw !== undefined && tl !== undefined) {
    if (Math.floor(tw / 1000) !== Math.floor(tl / 1000)) {
      return `created ${new Date(tw).toISOString()}, before ${new Date(tl).toISOString()}`;
    }
    return `same creationTimestamp ${new Date(tw).toISOString()}; the name ${JSON.stringify(winner.name)} sorts first`;
  }
  if (tw !== undefined)
    return `it has creationTimestamp ${new Date(tw).toISOString()}; the other has none (assumed newer)`;
  return `neither has a creationTimestamp (assumed applied together); the name ${JSON.stringify(winner.name)} sorts first`;
}
