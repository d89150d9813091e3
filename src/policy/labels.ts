/**
 * Label selection as Istio's `labels.Instance.SubsetOf`: every selector label must be present on
 * the workload with the same value. An empty selector matches everything, including a workload
 * with no labels; a non-empty one never matches a workload without labels.
 */
export function selectorMatches(
  selector: Readonly<Record<string, string>>,
  labels: Readonly<Record<string, string>>,
): boolean {
  // for...in, not Object.entries: this runs once per policy per workload and must not allocate.
  for (const key in selector) {
    if (labels[key] !== selector[key]) return false;
  }
  return true;
}

export function hasLabels(labels: Readonly<Record<string, string>> | undefined): boolean {
  return labels !== undefined && Object.keys(labels).length > 0;
}

/** `a=1,b=2`, keys sorted: how selectors and label sets appear in messages. */
export function formatLabels(labels: Readonly<Record<string, string>>): string {
  const keys = Object.keys(labels).sort();
  return keys.length === 0 ? '(none)' : keys.map((k) => `${k}=${labels[k]}`).join(',');
}
