// Sends events to switchyard through the official Segment Node.js SDK
// (@segment/analytics-node), for crates/switchyard/tests/sdk.rs.
//
// Environment:
//   HOST         switchyard's base URL, e.g. http://127.0.0.1:8080 (required)
//   WRITE_KEY    the source's write key (required)
//   RUN_ID       tag put in every event (properties.run_id, traits.run_id, or
//                context.run_id for alias) so the test can attribute deliveries
//   COUNT        how many track events after the six call types (default 1000)
//   INTERVAL_MS  pause between track calls (default 0: as fast as possible)
//
// stdout: "SENT <messageId>" for every message the SDK reports delivered,
// then "DONE sent=<n> errors=<n>". Exits 0 only if the SDK reported no error
// (neither through a callback nor through its 'error' event).
import { Analytics } from '@segment/analytics-node';

const host = process.env.HOST;
const writeKey = process.env.WRITE_KEY;
const runId = process.env.RUN_ID || 'run';
const count = Number(process.env.COUNT || '1000');
const intervalMs = Number(process.env.INTERVAL_MS || '0');
if (!host || !writeKey) {
  console.error('node_sdk.mjs: HOST and WRITE_KEY are required');
  process.exit(2);
}

const analytics = new Analytics({
  writeKey,
  host,
  // Defaults otherwise (path /v1/batch, flushAt 15, flushInterval 10 s),
  // except retries generous enough to outlast a server restart.
  maxRetries: 10,
  httpRequestTimeout: 15000,
});

const errors = [];
analytics.on('error', (err) => {
  errors.push(err);
  console.error(`node SDK error event: ${err.code}: ${err.reason}`);
});

let sent = 0;
const lines = [];
const callback = (err, ctx) => {
  if (err) {
    errors.push(err);
    console.error(`node SDK callback error: ${err}`);
    return;
  }
  sent += 1;
  lines.push(`SENT ${ctx.event.messageId}`);
};

const user = `node-user-${runId}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

analytics.identify(
  { userId: user, traits: { run_id: runId, email: 'node@example.com', plan: 'pro' } },
  callback,
);
analytics.track(
  {
    userId: user,
    event: 'Order Completed',
    properties: { run_id: runId, revenue: 39.95, whole: 2.0, items: [{ sku: 'a', qty: 1 }] },
  },
  callback,
);
analytics.page(
  { userId: user, category: 'Docs', name: 'Pricing', properties: { run_id: runId, path: '/pricing' } },
  callback,
);
analytics.screen(
  { anonymousId: `node-anon-${runId}`, name: 'Main Screen', properties: { run_id: runId } },
  callback,
);
analytics.group(
  { userId: user, groupId: 'node-group', traits: { run_id: runId, name: 'Initech' } },
  callback,
);
analytics.alias(
  { userId: user, previousId: `node-anon-${runId}`, context: { run_id: runId } },
  callback,
);
for (let seq = 0; seq < count; seq++) {
  analytics.track(
    { userId: user, event: 'Load Event', properties: { run_id: runId, seq } },
    callback,
  );
  if (intervalMs > 0) await sleep(intervalMs);
}

await analytics.closeAndFlush({ timeout: 300000 });
process.stdout.write(lines.join('\n') + '\n');
const expected = count + 6;
if (sent !== expected && errors.length === 0) {
  errors.push(new Error(`only ${sent} of ${expected} messages were reported delivered`));
}
console.log(`DONE sent=${sent} errors=${errors.length}`);
if (errors.length > 0) {
  console.error(`node SDK reported ${errors.length} error(s)`);
  process.exit(1);
}
