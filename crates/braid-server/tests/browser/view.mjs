// Drives the web view in headless Chromium against a running `braid serve`:
// the page must show a run's agents going from running to completed, live,
// over the WebSocket, and draw the graph and the timeline; a fan-out must
// be one node and one bar with its progress (n of N), live and at the end,
// that expands to its instances (200 rows at most).
//
//   BRAID_URL=http://127.0.0.1:7790 BRAID_TOKEN=… BRAID_GATE=/tmp/…/go \
//   BRAID_FAN_GATE=/tmp/…/go-fan node view.mjs
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

// Starts a run of `pipeline`; with `wait`, returns once it finished.
async function start(pipeline, wait = false) {
  const response = await fetch(`${base}/v1/runs${wait ? '?wait=true' : ''}`, {
    method: 'POST', headers: auth, body: JSON.stringify({ pipeline, events: 'summary' }),
  });
  if (!response.ok) throw new Error(`starting ${pipeline}: ${response.status} ${await response.text()}`);
  return (await response.json()).run_id;
}

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

  // A fan-out (`fan-view`): `work` runs once per element of [1, 2, 3, 4];
  // element 4 fails, element 3 waits for BRAID_FAN_GATE.
  const fan = await browser.newPage();
  fan.on('pageerror', (e) => errors.push(e.message));
  const fanRun = await start('fan-view');
  await fan.goto(`${base}/#run=${fanRun}&token=${encodeURIComponent(token)}`);
  const progress = (p) => p.evaluate(() => document.querySelector('[data-progress="work"]')?.textContent);
  const showing = (p, text) => p.waitForFunction(
    (t) => (document.querySelector('[data-progress="work"]')?.textContent || '').includes(t), text, { timeout: 20000 });
  await check('a running fan-out shows how many instances are done', async () => {
    await fan.waitForSelector('[data-agent="work"][data-status="running"]', { timeout: 20000 });
    await showing(fan, '2 done, 1 failed').catch(async () => { throw new Error(`shows ${await progress(fan)}`); });
  });
  writeFileSync(process.env.BRAID_FAN_GATE, '');
  await check('a finished fan-out shows n of N', async () => {
    await fan.waitForSelector('#run-status[data-status="completed"]', { timeout: 30000 });
    await showing(fan, '3 of 4, 1 failed').catch(async () => { throw new Error(`shows ${await progress(fan)}`); });
    const node = await fan.textContent('[data-agent="work"]');
    if (!node.includes('×4') || !node.includes('3 of 4')) throw new Error(`the node reads ${node}`);
  });
  await check('instances make no nodes or bars of their own', async () => {
    const nodes = await fan.$$eval('[data-agent]', (n) => n.map((e) => e.dataset.agent));
    if (nodes.join() !== 'plan,work,join') throw new Error(`nodes ${nodes}`);
    const bars = await fan.$$eval('[data-bar]', (n) => n.map((e) => e.dataset.bar));
    if (bars.join() !== 'plan,work,join') throw new Error(`bars ${bars}`);
    if ((await fan.$$('[data-instance]')).length) throw new Error('instances shown before expanding');
  });
  await check('clicking the bar expands the fan-out to its instances, and again folds it', async () => {
    await fan.click('[data-bar="work"]');
    const rows = await fan.$$eval('[data-instance]', (n) => n.map((e) => `${e.dataset.instance} ${e.dataset.status}`));
    if (rows.join() !== 'work[0] completed,work[1] completed,work[2] completed,work[3] failed') throw new Error(`rows ${rows}`);
    if (shot) await fan.screenshot({ path: shot.replace(/\.png$/, '-fanout.png'), fullPage: true });
    await fan.click('[data-bar="work"]');
    if ((await fan.$$('[data-instance]')).length) throw new Error('still expanded');
  });

  // 300 instances expand to 200 rows and a note of the rest.
  const wideRun = await start('wide-view', true);
  const wide = await browser.newPage();
  wide.on('pageerror', (e) => errors.push(e.message));
  await wide.goto(`${base}/#run=${wideRun}&token=${encodeURIComponent(token)}`);
  await check('a wide fan-out expands to 200 rows and says how many more', async () => {
    await showing(wide, '300 of 300').catch(async () => { throw new Error(`shows ${await progress(wide)}`); });
    await wide.click('[data-toggle="work"]');
    const rows = await wide.$$('[data-instance]');
    if (rows.length !== 200) throw new Error(`${rows.length} rows`);
    const more = await wide.textContent('[data-more="work"]');
    if (more !== 'and 100 more') throw new Error(more);
  });
  await check('the fan-out pages raised no errors', async () => {
    if (errors.length) throw new Error(errors.join('; '));
  });
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
