import { z } from 'zod';

/**
 * Structural schemas for the Kubernetes kinds kmtls reads. They check only the fields mTLS
 * decisions use, and let every other field through untouched: a Deployment is not rejected for a
 * field kmtls does not know. Nulls are removed before parsing, as the API server does.
 */

const stringMap = z.record(z.string(), z.string());
const port = z.number().int().min(1).max(65535);
const intOrString = z.union([z.number().int(), z.string()]);

const probe = z
  .looseObject({
    httpGet: z
      .looseObject({ port: intOrString, path: z.string().optional(), scheme: z.string().optional() })
      .optional(),
    tcpSocket: z.looseObject({ port: intOrString }).optional(),
    grpc: z.looseObject({ port: port }).optional(),
    exec: z.looseObject({}).optional(),
  })
  .optional();

export const containerSchema = z.looseObject({
  name: z.string(),
  image: z.string().optional(),
  ports: z
    .array(
      z.looseObject({ containerPort: port, name: z.string().optional(), protocol: z.string().optional() }),
    )
    .optional(),
  env: z.array(z.looseObject({ name: z.string(), value: z.string().optional() })).optional(),
  command: z.array(z.string()).optional(),
  args: z.array(z.string()).optional(),
  livenessProbe: probe,
  readinessProbe: probe,
  startupProbe: probe,
  restartPolicy: z.string().optional(),
});
export type ContainerInput = z.infer<typeof containerSchema>;

export const podSpecSchema = z.looseObject({
  serviceAccountName: z.string().optional(),
  serviceAccount: z.string().optional(),
  hostNetwork: z.boolean().optional(),
  containers: z.array(containerSchema).optional(),
  initContainers: z.array(containerSchema).optional(),
});
export type PodSpecInput = z.infer<typeof podSpecSchema>;

const templateSchema = z.looseObject({
  metadata: z.looseObject({ labels: stringMap.optional(), annotations: stringMap.optional() }).optional(),
  spec: podSpecSchema.optional(),
});
export type PodTemplateInput = z.infer<typeof templateSchema>;

export const podSchema = z.looseObject({ spec: podSpecSchema.optional() });

/** Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController. */
export const replicatedSchema = z.looseObject({
  spec: z
    .looseObject({
      replicas: z.number().int().min(0).optional(),
      serviceName: z.string().optional(),
      template: templateSchema.optional(),
    })
    .optional(),
});

export const jobSchema = z.looseObject({
  spec: z
    .looseObject({ parallelism: z.number().int().min(0).optional(), template: templateSchema.optional() })
    .optional(),
});

export const cronJobSchema = z.looseObject({
  spec: z
    .looseObject({
      jobTemplate: z
        .looseObject({
          spec: z
            .looseObject({
              parallelism: z.number().int().min(0).optional(),
              template: templateSchema.optional(),
            })
            .optional(),
        })
        .optional(),
    })
    .optional(),
});

export const serviceSchema = z.looseObject({
  spec: z
    .looseObject({
      type: z.string().optional(),
      clusterIP: z.string().optional(),
      externalName: z.string().optional(),
      selector: stringMap.optional(),
      ports: z
        .array(
          z.looseObject({
            port: port,
            name: z.string().optional(),
            protocol: z.string().optional(),
            appProtocol: z.string().optional(),
            targetPort: intOrString.optional(),
          }),
        )
        .optional(),
    })
    .optional(),
});

export const workloadEntrySchema = z.looseObject({
  spec: z
    .looseObject({
      address: z.string().optional(),
      labels: stringMap.optional(),
      ports: z.record(z.string(), port).optional(),
      serviceAccount: z.string().optional(),
    })
    .optional(),
});

/** Removes null values recursively: the API server treats `field: null` as an absent field. */
export function dropNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.filter((v) => v !== null).map(dropNulls);
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = dropNulls(v);
    return out;
  }
  return value;
}
