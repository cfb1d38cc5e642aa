// Drives the web view in headless Chromium against a running `braid serve`:
// the page must show a run's agents going from running to completed, live,
// over the WebSocket, and draw the graph and the timeline.
//
//   BRAID_URL=http://127.0.0.1:7790 BRAID_TOKEN=… node view.mjs
import { chromium } from 'playwright-core';

const base = process.env.BRAID_URL;
const token = process.env.BRAID_TOKEN;
const shot = process.env.BRAID_SCREENSHOT;
const auth = { Authorization: `Bearer ${token}`, 'content-type': 'application/json' };
let passed = 0, failed = 0;

async function check(name, fn) {
  try { await fn(); passed++; console.log(`ok - ${name}`); }
  catch (e) { failed++; console.log(`not ok - ${name}: ${e.message}`); }
}

const pipeline = `pipeline: web-view
agents:
  triage:  { kind: sleep, ms: 1500, writes: [route] }
  data:    { kind: sleep, ms: 300, reads: [route], writes: [data] }
  metrics: { kind: sleep, ms: 300, reads: [route], writes: [metrics] }
  report:  { kind: sleep, ms: 300, reads: [data, metrics], writes: [report] }
`;
let response = await fetch(`${base}/v1/pipelines`, { method: 'POST', headers: auth, body: pipeline });
if (!response.ok) throw new Error(`registering the pipeline: ${response.status} ${await response.text()}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));

  response = await fetch(`${base}/v1/runs`, {
    method: 'POST', headers: auth, body: JSON.stringify({ pipeline: 'web-view', events: 'summary' }),
  });
  const { run_id } = await response.json();
  await page.goto(`${base}/#run=${run_id}&token=${encodeURIComponent(token)}`);

  await check('the run is listed', async () => {
    await page.waitForSelector(`#runs li[data-run="${run_id}"]`, { timeout: 10000 });
  });
  await check('an agent is shown running while it runs', async () => {
    await page.waitForSelector('[data-agent="triage"][data-status="running"]', { timeout: 10000 });
  });
  await check('every agent reaches completed on screen', async () => {
    await page.waitForSelector('[data-agent="report"][data-status="completed"]', { timeout: 20000 });
    for (const agent of ['triage', 'data', 'metrics', 'report']) {
      const status = await page.getAttribute(`[data-agent="${agent}"]`, 'data-status');
      if (status !== 'completed') throw new Error(`${agent} shows ${status}`);
    }
    const run = await page.getAttribute('#run-status', 'data-status');
    if (run !== 'completed') throw new Error(`the run shows ${run}`);
  });
  await check('the timeline has a bar per agent', async () => {
    const bars = await page.$$('[data-bar]');
    if (bars.length !== 4) throw new Error(`${bars.length} bars`);
  });
  await check('the graph draws its edges', async () => {
    const edges = await page.$$('#graph path.edge');
    if (edges.length !== 4) throw new Error(`${edges.length} edges`);
  });
  await check('the page raised no errors', async () => {
    if (errors.length) throw new Error(errors.join('; '));
  });
  if (shot) await page.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
