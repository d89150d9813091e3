import { ISTIO_CRD_NAMES, PART_OF_LABEL } from './constants.js';
import type { KubeObject } from './install.js';

/**
 * The two Istio CustomResourceDefinitions kmtls reads, for clusters without Istio: PeerAuthentication
 * and DestinationRule with Istio's group, versions (and which one is stored), names, short names, scope,
 * status subresource and printer columns, as in Istio's `manifests/charts/base/files/crd-all.gen.yaml`.
 *
 * The schema types every field kmtls reads exactly as Istio's does (PeerAuthentication whole; of a
 * DestinationRule: host, exportTo, workloadSelector, subsets, trafficPolicy.tls, portLevelSettings[].port
 * and .tls). The parts of a trafficPolicy kmtls does not read (connectionPool, loadBalancer,
 * outlierDetection, proxyProtocol, retryBudget, tunnel) are kept verbatim with
 * `x-kubernetes-preserve-unknown-fields` instead of being typed: whatever Istio's schema keeps, ours keeps
 * too, so nothing a user wrote is pruned if Istio later replaces these CRDs; ours only checks less there.
 * Descriptions are left out. Istio's CEL rules (`x-kubernetes-validations`) are emitted only for
 * Kubernetes 1.25 and later (`withCel`): an older API server drops or refuses the key.
 */
export interface IstioCrdOptions {
  /** Emit Istio's CEL validation rules (Kubernetes >= 1.25). */
  readonly withCel: boolean;
}

type Schema = Record<string, unknown>;

const str: Schema = { type: 'string' };
const strList: Schema = { type: 'array', items: { type: 'string' } };
const uint32: Schema = { type: 'integer', minimum: 0, maximum: 4294967295 };
/** A part of the spec kmtls does not read: any object, kept as written. */
const opaque: Schema = { type: 'object', 'x-kubernetes-preserve-unknown-fields': true };

/** Istio's `status` is free-form for its own controllers; kmtls never writes it. */
const status: Schema = opaque;

function cel(withCel: boolean, rules: readonly { message: string; rule: string }[]): Schema {
  return withCel ? { 'x-kubernetes-validations': rules } : {};
}

/** `selector` of a PeerAuthentication, `workloadSelector` of a DestinationRule. */
function workloadSelector(withCel: boolean): Schema {
  return {
    type: 'object',
    properties: {
      matchLabels: {
        type: 'object',
        maxProperties: 4096,
        additionalProperties: {
          type: 'string',
          maxLength: 63,
          ...cel(withCel, [
            { message: 'wildcard not allowed in label value match', rule: '!self.contains("*")' },
          ]),
        },
        ...cel(withCel, [
          { message: 'wildcard not allowed in label key match', rule: 'self.all(key, !key.contains("*"))' },
          { message: 'key must not be empty', rule: 'self.all(key, key.size() != 0)' },
        ]),
      },
    },
  };
}

const mtlsMode: Schema = { type: 'string', enum: ['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT'] };

function peerAuthenticationSchema(withCel: boolean): Schema {
  return {
    type: 'object',
    properties: {
      spec: {
        type: 'object',
        properties: {
          mtls: { type: 'object', properties: { mode: mtlsMode } },
          portLevelMtls: {
            type: 'object',
            minProperties: 1,
            additionalProperties: { type: 'object', properties: { mode: mtlsMode } },
            ...cel(withCel, [
              {
                message: 'port must be between 1-65535',
                rule: 'self.all(key, 0 < int(key) && int(key) <= 65535)',
              },
            ]),
          },
          selector: workloadSelector(withCel),
        },
        ...cel(withCel, [
          {
            message: 'portLevelMtls requires selector',
            rule:
              'has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels))' +
              ' ? self.selector.matchLabels : {}).size() > 0) : true',
          },
        ]),
      },
      status,
    },
  };
}

const clientTls: Schema = {
  type: 'object',
  properties: {
    mode: { type: 'string', enum: ['DISABLE', 'SIMPLE', 'MUTUAL', 'ISTIO_MUTUAL'] },
    caCertificates: str,
    caCrl: str,
    clientCertificate: str,
    credentialName: str,
    insecureSkipVerify: { type: 'boolean', nullable: true },
    privateKey: str,
    sni: str,
    subjectAltNames: strList,
  },
};

const trafficPolicy: Schema = {
  type: 'object',
  properties: {
    connectionPool: opaque,
    loadBalancer: opaque,
    outlierDetection: opaque,
    portLevelSettings: {
      type: 'array',
      maxItems: 4096,
      items: {
        type: 'object',
        properties: {
          connectionPool: opaque,
          loadBalancer: opaque,
          outlierDetection: opaque,
          port: { type: 'object', properties: { number: uint32 } },
          tls: clientTls,
        },
      },
    },
    proxyProtocol: opaque,
    retryBudget: opaque,
    tls: clientTls,
    tunnel: opaque,
  },
};

function destinationRuleSchema(withCel: boolean): Schema {
  return {
    type: 'object',
    properties: {
      spec: {
        type: 'object',
        required: ['host'],
        properties: {
          exportTo: strList,
          host: str,
          subsets: {
            type: 'array',
            items: {
              type: 'object',
              required: ['name'],
              properties: {
                labels: { type: 'object', additionalProperties: str },
                name: str,
                trafficPolicy,
              },
            },
          },
          trafficPolicy,
          workloadSelector: workloadSelector(withCel),
        },
      },
      status,
    },
  };
}

const AGE_COLUMN = { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' } as const;

function crd(
  name: string,
  spec: {
    group: string;
    kind: string;
    plural: string;
    shortName: string;
    category: string;
    columns: readonly Record<string, string>[];
    schema: Schema;
    /** Served versions in Istio's order, and the one Istio stores. */
    versions: readonly string[];
    storage: string;
  },
): KubeObject {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name,
      labels: { ...PART_OF_LABEL },
      // Istio's own CRDs carry it too: `helm uninstall` of a chart that ships them leaves them (and
      // every policy in the cluster) in place.
      annotations: { 'helm.sh/resource-policy': 'keep' },
    },
    spec: {
      group: spec.group,
      names: {
        categories: ['istio-io', spec.category],
        kind: spec.kind,
        listKind: `${spec.kind}List`,
        plural: spec.plural,
        shortNames: [spec.shortName],
        singular: spec.kind.toLowerCase(),
      },
      scope: 'Namespaced',
      versions: spec.versions.map((version) => ({
        name: version,
        served: true,
        storage: version === spec.storage,
        additionalPrinterColumns: spec.columns,
        schema: { openAPIV3Schema: spec.schema },
        subresources: { status: {} },
      })),
    },
  };
}

export function peerAuthenticationCrd(options: IstioCrdOptions): KubeObject {
  return crd(ISTIO_CRD_NAMES.peerAuthentication, {
    group: 'security.istio.io',
    kind: 'PeerAuthentication',
    plural: 'peerauthentications',
    shortName: 'pa',
    category: 'security-istio-io',
    columns: [
      {
        name: 'Mode',
        type: 'string',
        description: 'Defines the mTLS mode used for peer authentication.',
        jsonPath: '.spec.mtls.mode',
      },
      AGE_COLUMN,
    ],
    schema: peerAuthenticationSchema(options.withCel),
    versions: ['v1', 'v1beta1'],
    storage: 'v1beta1',
  });
}

export function destinationRuleCrd(options: IstioCrdOptions): KubeObject {
  return crd(ISTIO_CRD_NAMES.destinationRule, {
    group: 'networking.istio.io',
    kind: 'DestinationRule',
    plural: 'destinationrules',
    shortName: 'dr',
    category: 'networking-istio-io',
    columns: [
      {
        name: 'Host',
        type: 'string',
        description: 'The name of a service from the service registry',
        jsonPath: '.spec.host',
      },
      AGE_COLUMN,
    ],
    schema: destinationRuleSchema(options.withCel),
    versions: ['v1', 'v1alpha3', 'v1beta1'],
    storage: 'v1',
  });
}

/** Both CRDs, PeerAuthentication first. */
export function istioCrds(options: IstioCrdOptions): KubeObject[] {
  return [peerAuthenticationCrd(options), destinationRuleCrd(options)];
}
