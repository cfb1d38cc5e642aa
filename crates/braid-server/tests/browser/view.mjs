// Drives the web view in headless Chromium against a running `braid serve`:
// the page must show a run's agents going from running to completed, live,
// over the WebSocket, and draw the graph and the timeline.
//
//   BRAID_URL=http://127.0.0.1:7790 BRAID_TOKEN=… BRAID_GATE=/tmp/…/go node view.mjs
import { writeFileSync } from 'node:fs';
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

// The server preloads the `web-view` pipeline (scripts/browser-test.sh): its
// `triage` agent runs until this test creates the file BRAID_GATE.
const gate = process.env.BRAID_GATE;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-quic'],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));

  const response = await fetch(`${base}/v1/runs`, {
    method: 'POST', headers: auth, body: JSON.stringify({ pipeline: 'web-view', events: 'summary' }),
  });
  if (!response.ok) throw new Error(`starting a run: ${response.status} ${await response.text()}`);
  const { run_id } = await response.json();
  await page.goto(`${base}/#run=${run_id}&token=${encodeURIComponent(token)}`);

  await check('the run is listed', async () => {
    await page.waitForSelector(`#runs li[data-run="${run_id}"]`, { timeout: 10000 });
  });
  await check('an agent is shown running while it runs', async () => {
    await page.waitForSelector('[data-agent="triage"][data-status="running"]', { timeout: 20000 });
  });
  // Let `triage` finish; the rest follows live over the WebSocket.
  writeFileSync(gate, '');
  await check('every agent reaches completed on screen', async () => {
    await page.waitForSelector('[data-agent="report"][data-status="completed"]', { timeout: 30000 });
    for (const agent of ['triage', 'data', 'metrics', 'report']) {
      const status = await page.getAttribute(`[data-agent="${agent}"]`, 'data-status');
      if (status !== 'completed') throw new Error(`${agent} shows ${status}`);
    }
    await page.waitForSelector('#run-status[data-status="completed"]', { timeout: 10000 });
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
