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
export { ControlPlaneMetrics, startControlPlaneAdmin, startControlPlaneServer } from './server.js';
