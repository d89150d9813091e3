export type {
  ChangeStatus,
  ConfigVersion,
  ControlPlaneObserver,
  ControlPlaneOptions,
  ControlPlaneStatus,
  PodStatus,
  Watched,
} from './control-plane.js';
export { ControlPlane, NO_CONTROL_PLANE_OBSERVER } from './control-plane.js';
export {
  ControlPlaneMetrics,
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_MAX_STREAM_BUFFER_BYTES,
  loopbackCaller,
  meteredObserver,
  startControlPlaneAdmin,
  startControlPlaneServer,
} from './server.js';
