/** Time as the core sees it: injected, so tests run on a clock they move. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

/** Random bytes, injected for the same reason. */
export type RandomBytes = (size: number) => Buffer;

export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;

/** `24h`, `90d`, `30m`, `1h30m`, `45s`: how durations are written on the command line and in messages. */
export function parseDuration(text: string): number | undefined {
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text.trim());
  if (!m || text.trim() === '') return undefined;
  const [, d, h, min, s] = m;
  return ((Number(d ?? 0) * 24 + Number(h ?? 0)) * 60 + Number(min ?? 0)) * 60_000 + Number(s ?? 0) * 1000;
}

/** The inverse of parseDuration, in the largest units that divide it: 2160h reads as 90d. */
export function formatDuration(ms: number): string {
  if (ms < 0) return `-${formatDuration(-ms)}`;
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const out = `${d ? `${d}d` : ''}${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s ? `${s}s` : ''}`;
  return out || '0s';
}
