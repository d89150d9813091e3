/**
 * Golden tests of the CLI: each case runs the command in-process and compares stdout, stderr and
 * the exit code with test/golden/<name>.txt. Regenerate after an intended change with
 * `UPDATE_GOLDEN=1 npm test` and review the diff like code.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { run } from '../../src/cli/main.js';

const GOLDEN_DIR = 'test/golden';
const update = process.env.UPDATE_GOLDEN === '1';

async function runCli(argv: string[], stdin = ''): Promise<string> {
  let stdout = '';
  let stderr = '';
  const code = await run(argv, {
    stdout: (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
    readStdin: async () => stdin,
    isTty: false,
  });
  return `$ kmtls ${argv.join(' ')}\n[exit ${code}]\n--- stdout\n${stdout}--- stderr\n${stderr}`;
}

const QUICKSTART = ['-f', 'examples/quickstart'];

const CASES: Record<string, string[]> = {
  'explain-pod-quickstart-payments': ['explain', 'pod', 'finance/payments', ...QUICKSTART],
  'explain-pod-quickstart-payments-port-9090': [
    'explain',
    'pod',
    'finance/payments',
    '--port',
    '9090',
    ...QUICKSTART,
  ],
  'explain-pod-quickstart-payments-json': [
    'explain',
    'pod',
    'finance/payments',
    '--port',
    '8080',
    ...QUICKSTART,
    '-o',
    'json',
  ],
  'explain-pod-quickstart-reconcile-no-sidecar': ['explain', 'pod', 'legacy/reconcile', ...QUICKSTART],
  'explain-pod-namespace-strict': ['explain', 'pod', 'shop/cart', '-f', 'examples/namespace-strict'],
  'explain-pod-workload-strict-accounts': [
    'explain',
    'pod',
    'bank/accounts',
    '-f',
    'examples/workload-strict',
  ],
  'explain-pod-workload-strict-statements': [
    'explain',
    'pod',
    'bank/statements',
    '-f',
    'examples/workload-strict',
  ],
  'explain-pod-wrong-namespace': ['explain', 'pod', 'store/orders', '-f', 'examples/wrong-namespace'],
  'explain-pod-port-disable-container-port': [
    'explain',
    'pod',
    'inventory/stock',
    '--port',
    '9102',
    '-f',
    'examples/port-disable',
  ],
  'explain-pod-port-disable-service-port': [
    'explain',
    'pod',
    'inventory/stock',
    '--port',
    '9100',
    '-f',
    'examples/port-disable',
  ],
  'explain-pod-analyze-fixture-api': ['explain', 'pod', 'apps/api', '-f', 'test/fixtures/analyze'],
  'explain-pod-invalid-policy-shown': [
    'explain',
    'pod',
    'shop/cart',
    '-f',
    'test/fixtures/invalid/peer-authentications.yaml',
    '-f',
    'examples/namespace-strict',
  ],
  'explain-edge-mesh-to-strict': ['explain', 'edge', 'frontend/web', 'payments.finance:8080', ...QUICKSTART],
  'explain-edge-outside-mesh-to-strict': [
    'explain',
    'edge',
    'legacy/reconcile',
    'payments.finance.svc.cluster.local:8080',
    ...QUICKSTART,
  ],
  'explain-edge-headless-json': [
    'explain',
    'edge',
    'finance/payments',
    'ledger:5432',
    ...QUICKSTART,
    '-o',
    'json',
  ],
  'explain-edge-external-host': ['explain', 'edge', 'frontend/web', 'api.example.com:443', ...QUICKSTART],
  'explain-edge-dr-conflict': ['explain', 'edge', 'apps/api', 'cache:6379', '-f', 'test/fixtures/analyze'],
  'explain-edge-auto-mtls-limitation': [
    'explain',
    'edge',
    'apps/api',
    'vault.legacy.svc:8200',
    '-f',
    'test/fixtures/analyze',
  ],
  'validate-quickstart': ['validate', '-f', 'examples/quickstart'],
  'validate-invalid': ['validate', '-f', 'test/fixtures/invalid'],
  'validate-invalid-json': ['validate', '-f', 'test/fixtures/invalid/destination-rules.yaml', '-o', 'json'],
  'analyze-quickstart': ['analyze', '-f', 'examples/quickstart'],
  'analyze-fixture': ['analyze', '-f', 'test/fixtures/analyze'],
  'analyze-wrong-namespace': ['analyze', '-f', 'examples/wrong-namespace'],
  'analyze-port-disable': ['analyze', '-f', 'examples/port-disable'],
  'usage-unknown-command': ['frobnicate'],
  'usage-explain-missing-target': ['explain', 'pod', '-f', 'examples/quickstart'],
  'usage-unknown-flag': ['validate', '--frobnicate', '-f', 'examples/quickstart'],
  'usage-bad-port': ['explain', 'pod', 'finance/payments', '--port', '70000', ...QUICKSTART],
  'usage-no-manifests': ['validate'],
  'error-pod-not-found': ['explain', 'pod', 'finance/paymnets', ...QUICKSTART],
  'error-missing-file': ['validate', '-f', 'does-not-exist.yaml'],
};

for (const [name, argv] of Object.entries(CASES)) {
  test(`golden: ${name}`, async () => {
    const actual = await runCli(argv);
    const file = `${GOLDEN_DIR}/${name}.txt`;
    if (update) {
      writeFileSync(file, actual);
      return;
    }
    let expected: string;
    try {
      expected = readFileSync(file, 'utf8');
    } catch {
      assert.fail(`missing golden file ${file}: run UPDATE_GOLDEN=1 npm test`);
    }
    assert.equal(actual, expected);
  });
}

test('golden: stdin manifests', async () => {
  const manifest = readFileSync('examples/namespace-strict/manifests.yaml', 'utf8');
  const actual = await runCli(['explain', 'pod', 'shop/checkout', '-f', '-', '-o', 'json'], manifest);
  const json = JSON.parse(actual.split('--- stdout\n')[1]!.split('--- stderr\n')[0]!) as {
    mode: string;
    chain: unknown[];
  };
  assert.equal(json.mode, 'STRICT');
  assert.equal(json.chain.length, 4);
});
