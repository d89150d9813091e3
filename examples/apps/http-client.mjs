// http-client: calls every URL given as an argument, one round every INTERVAL_MS (default 5000),
// and logs one line per call:
//
//   reconcile-0 -> http://payments.finance:8080/reconcile: refused (connection reset)
//   reconcile-0 -> tcp://ledger.finance:5432: echoed
//
// http://host:port/path is a GET (an http-echo answer also shows which pod answered and the caller
// it saw); tcp://host:port sends "ping\n" and expects it back. Every call times out after 2 s.
// ONCE=1: one round, then exit 0 if every call succeeded, 1 otherwise.
//
// Usage: node examples/apps/http-client.mjs URL...   (see examples/apps/README.md)
import { call, callPeriodically, log, onShutdown, urlList } from './lib.mjs';

const urls = urlList(process.argv.slice(2));
if (urls.length === 0) {
  log('usage: http-client.mjs URL... (http://host:port/path or tcp://host:port)');
  process.exit(2);
}

if (process.env.ONCE === '1') {
  let ok = true;
  for (const u of urls) ok = (await call(u)) && ok;
  process.exit(ok ? 0 : 1);
}

const stop = callPeriodically(urls);
onShutdown(stop);
