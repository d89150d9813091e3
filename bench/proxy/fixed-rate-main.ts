/**
 * Child process entry of the fixed-rate load generator: reads its plan (JSON) from argv, prints its
 * result (JSON) on stdout. Started by `runFixedRate`.
 */
import type { FixedRatePlan } from './fixed-rate.js';
import { generateFixedRate } from './fixed-rate.js';

const plan = JSON.parse(process.argv[2] ?? '') as FixedRatePlan;
const result = await generateFixedRate(plan);
process.stdout.write(`${JSON.stringify(result)}\n`);
