import type { Diagnostic } from './diagnostics.js';
import type { MtlsMode, PeerAuthentication, WorkloadSelector } from './model.js';
import { MTLS_MODES } from './model.js';
import type { Path, RawResource } from './raw.js';
import { Checker, isRecord } from './raw.js';

export interface Validated<T> {
  /** Undefined when the API server would refuse the object. */
  readonly value: T | undefined;
  readonly diagnostics: readonly Diagnostic[];
}

/** The label value limit of Istio's CRD schema (`maxLength: 63`) and the map limit (`maxProperties: 4096`). */
const MAX_LABEL_VALUE = 63;
const MAX_SELECTOR_LABELS = 4096;

function checkMode(c: Checker, value: unknown, path: Path): MtlsMode | undefined {
  const s = c.string(value, path);
  if (s === undefined) return undefined;
  if ((MTLS_MODES as readonly string[]).includes(s)) return s as MtlsMode;
  const near = MTLS_MODES.find((m) => m === s.toUpperCase());
  c.report(
    'KMTLS_PA_INVALID_MODE',
    path,
    `unsupported mTLS mode: ${JSON.stringify(s)} (supported values: ${MTLS_MODES.join(', ')}; case-sensitive)`,
    near ? { hint: `write ${near}` } : {},
  );
  return undefined;
}

/**
 * `selector` as both of Istio's layers check it: the CRD schema (string values of at most 63
 * characters, no `*`, no empty key, at most 4096 labels) and the webhook's `validateWorkloadSelector`
 * (the same rules, and a warning when there are no labels at all).
 */
export function checkWorkloadSelector(c: Checker, value: unknown, path: Path): WorkloadSelector | undefined {
  const sel = c.object(value, path);
  if (sel === undefined) return undefined;
  c.unknownFields(sel, ['matchLabels'], path);
  const labels = c.stringMap(sel.matchLabels, [...path, 'matchLabels']) ?? {};
  const keys = Object.keys(labels);
  if (keys.length > MAX_SELECTOR_LABELS) {
    c.report(
      'KMTLS_SELECTOR_TOO_MANY_LABELS',
      [...path, 'matchLabels'],
      `too many selector labels: ${keys.length} (at most ${MAX_SELECTOR_LABELS})`,
    );
  }
  for (const [k, v] of Object.entries(labels)) {
    const at = [...path, 'matchLabels', k];
    if (k === '') {
      c.report('KMTLS_SELECTOR_EMPTY_KEY', at, `empty key is not supported in selector: "=${v}"`);
    }
    if (k.includes('*') || v.includes('*')) {
      c.report('KMTLS_SELECTOR_WILDCARD', at, `wildcard is not supported in selector: "${k}=${v}"`);
    }
    if (v.length > MAX_LABEL_VALUE) {
      c.report(
        'KMTLS_SELECTOR_VALUE_TOO_LONG',
        at,
        `selector value too long: "${k}" has ${v.length} characters (at most ${MAX_LABEL_VALUE})`,
      );
    }
  }
  // Judged on the manifest, not on the labels that survived type checks: `version: 1` is a label
  // given with the wrong type (already an error), not a selector without labels.
  const given = sel.matchLabels;
  if (given === undefined || given === null || (isRecord(given) && Object.keys(given).length === 0)) {
    c.report(
      'KMTLS_SELECTOR_NO_LABELS',
      path,
      'workload selector specified without labels (the policy applies to the whole namespace)',
      {
        istioCode: 'IST0133',
        hint: 'remove the selector, or give it matchLabels',
      },
    );
  }
  return { matchLabels: labels };
}

/**
 * Validates a PeerAuthentication the way Istio's CRD schema and validating webhook do together;
 * anything either layer refuses makes the object invalid, as it would never reach a cluster.
 */
export function validatePeerAuthentication(raw: RawResource): Validated<PeerAuthentication> {
  const c = new Checker(raw);
  const spec = c.object(raw.spec, ['spec']) ?? {};
  c.unknownFields(spec, ['selector', 'mtls', 'portLevelMtls'], ['spec']);

  const selector = checkWorkloadSelector(c, spec.selector, ['spec', 'selector']);

  let mode: MtlsMode | undefined;
  const mtls = c.object(spec.mtls, ['spec', 'mtls']);
  if (mtls !== undefined) {
    c.unknownFields(mtls, ['mode'], ['spec', 'mtls']);
    // `mtls: {}` has no mode: the proto default is UNSET.
    mode =
      mtls.mode === undefined || mtls.mode === null
        ? 'UNSET'
        : checkMode(c, mtls.mode, ['spec', 'mtls', 'mode']);
  }

  let portLevelMtls: Map<number, MtlsMode> | undefined;
  const ports = c.object(spec.portLevelMtls, ['spec', 'portLevelMtls']);
  if (ports !== undefined) {
    portLevelMtls = new Map();
    // Judged on what the manifest says: a label of the wrong type is its own error, not a missing selector.
    const given = isRecord(spec.selector) ? spec.selector.matchLabels : undefined;
    const hasSelectorLabels = isRecord(given) && Object.keys(given).length > 0;
    if (!hasSelectorLabels) {
      c.report(
        'KMTLS_PA_PORT_LEVEL_WITHOUT_SELECTOR',
        ['spec', 'portLevelMtls'],
        'mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls requires a selector with labels)',
        { hint: 'add selector.matchLabels naming the workload, or move the port modes to a workload policy' },
      );
    }
    const entries = Object.entries(ports);
    if (entries.length === 0) {
      c.report(
        'KMTLS_PA_EMPTY_PORT_LEVEL',
        ['spec', 'portLevelMtls'],
        'port level mTLS, if defined, must have at least one element',
      );
    }
    for (const [key, value] of entries) {
      const at: Path = ['spec', 'portLevelMtls', key];
      if (!/^-?[0-9]+$/.test(key)) {
        c.report(
          'KMTLS_PA_PORT_NOT_NUMBER',
          at,
          `portLevelMtls key is not a port number: ${JSON.stringify(key)} (keys are container port numbers)`,
        );
        continue;
      }
      const port = Number(key);
      if (!(port > 0 && port <= 65535)) {
        c.report('KMTLS_PA_PORT_RANGE', at, `port must be in range 1..65535: ${key}`);
        continue;
      }
      const entry = c.object(value, at);
      if (entry === undefined) {
        // `8080:` with nothing, like `{}`, is UNSET: the port takes the workload's mode.
        if (value === null) portLevelMtls.set(port, 'UNSET');
        continue;
      }
      c.unknownFields(entry, ['mode'], at);
      const m =
        entry.mode === undefined || entry.mode === null ? 'UNSET' : checkMode(c, entry.mode, [...at, 'mode']);
      if (m !== undefined) portLevelMtls.set(port, m);
    }
  }

  if (c.hasErrors()) return { value: undefined, diagnostics: c.diagnostics };
  return {
    value: {
      kind: 'PeerAuthentication',
      apiVersion: raw.apiVersion,
      meta: raw.meta,
      selector,
      mode,
      portLevelMtls,
      locate: raw.locate,
    },
    diagnostics: c.diagnostics,
  };
}
