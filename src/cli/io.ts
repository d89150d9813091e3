/** Where a command writes. Tests pass buffers; `main` passes the process streams. */
export interface CommandIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly readStdin: () => Promise<string>;
  /** Whether colour and other terminal niceties may be used. */
  readonly isTty: boolean;
}
