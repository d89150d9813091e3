export type { CheckReport, FlowResult, ProbeResult } from './check.js';
export { expectedOutcome, formatCheck, parseFlows, runCheck } from './check.js';
export type { LocalMeshOptions, RuntimeInfo } from './mesh.js';
export { CHECK_IDENTITY_SA, httpGet, LocalMesh, readRuntime, waitUntil } from './mesh.js';
export type { LocalPlan, LocalPod, LocalService } from './plan.js';
export { containerEnv, expandVars, LocalAllocator, placementOf, planMesh } from './plan.js';
export type { MeshStatus, PodView, PortView } from './status.js';
export { collectStatus, formatStatus, table } from './status.js';
