// Drives the web view in headless Chromium against a running `braid serve`:
// the page must show a run's agents going from running to completed, live,
// over the WebSocket, and draw the graph and the timeline; a fan-out must
// be one node and one bar with its progress (n of N), live and at the end,
// that expands to its instances (200 rows at most); a group (`kind:
// pipeline`) one dashed node and one bar, with its round or progress, that
// expands to its members and rounds.
//
//   BRAID_URL=http://127.0.0.1:7790 BRAID_TOKEN=… BRAID_GATE=/tmp/…/go \
//   BRAID_FAN_GATE=/tmp/…/go-fan BRAID_GROUP_GATE=/tmp/…/go-group node view.mjs
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
    // The server says how many elements there are when the fan-out starts.
    await showing(fan, '2 of 4, 1 failed').catch(async () => { throw new Error(`shows ${await progress(fan)}`); });
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

  // Groups (`group-view`): `per_item` runs a sub-pipeline per element of
  // [1, 2, 3], `refine` runs rounds of one. Element 3 and round 1 wait for
  // BRAID_GROUP_GATE.
  const groups = await browser.newPage();
  groups.on('pageerror', (e) => errors.push(e.message));
  const groupRun = await start('group-view');
  await groups.goto(`${base}/#run=${groupRun}&token=${encodeURIComponent(token)}`);
  const text = (p, selector) => p.evaluate((s) => document.querySelector(s)?.textContent, selector);
  const reading = (p, selector, t) => p.waitForFunction(
    ([s, t]) => (document.querySelector(s)?.textContent || '').includes(t), [selector, t], { timeout: 20000 })
    .catch(async () => { throw new Error(`${selector} reads ${await text(p, selector)}`); });
  await check('a running repeat group shows its round, a foreach group its progress', async () => {
    await reading(groups, '[data-agent="refine"]', 'running · round 2');
    await reading(groups, '[data-agent="per_item"]', '2 of 3');
  });
  await check('groups are one dashed node each, labelled as groups; members make no nodes or bars', async () => {
    const nodes = await groups.$$eval('[data-agent]', (n) => n.map((e) => `${e.dataset.agent}:${e.dataset.group || ''}`));
    if (nodes.sort().join() !== 'join:,per_item:foreach,plan:,refine:repeat') throw new Error(`nodes ${nodes}`);
    for (const name of ['per_item', 'refine']) {
      const label = await text(groups, `[data-agent="${name}"] text`);
      if (!label.startsWith(`${name} (group)`)) throw new Error(`${name} is labelled ${label}`);
      const dash = await groups.$eval(`[data-agent="${name}"] rect:last-of-type`, (r) => getComputedStyle(r).strokeDasharray);
      if (!dash || dash === 'none') throw new Error(`${name}'s box is not dashed`);
    }
    const bars = await groups.$$eval('[data-bar]', (n) => n.map((e) => e.dataset.bar));
    if (!['plan,per_item,refine', 'plan,per_item,refine,join'].includes(bars.join())) throw new Error(`bars ${bars}`);
  });
  writeFileSync(process.env.BRAID_GROUP_GATE, '');
  await check('a finished repeat group says how many rounds it ran, a foreach group n of N', async () => {
    await groups.waitForSelector('#run-status[data-status="completed"]', { timeout: 30000 });
    await reading(groups, '[data-rounds="refine"]', '3 rounds');
    await reading(groups, '[data-agent="refine"]', 'completed · 3 rounds');
    await reading(groups, '[data-progress="per_item"]', '3 of 3');
    const node = await text(groups, '[data-agent="per_item"]');
    if (!node.includes('×3')) throw new Error(`the node reads ${node}`);
    const bars = await groups.$$eval('[data-bar]', (n) => n.map((e) => e.dataset.bar));
    if (bars.join() !== 'plan,per_item,refine,join') throw new Error(`bars ${bars}`);
  });
  const instances = (p) => p.$$eval('[data-instance]', (n) => n.map((e) => `${e.dataset.instance} ${e.dataset.status}`));
  await check('a group expands to its members and rounds as sub-rows', async () => {
    if ((await groups.$$('[data-instance]')).length) throw new Error('members shown before expanding');
    await groups.click('[data-bar="per_item"]');
    const members = (await instances(groups)).sort();
    const expected = [0, 1, 2].flatMap((i) => [`per_item[${i}]`, `per_item[${i}].extract`, `per_item[${i}].classify`])
      .map((n) => `${n} completed`).sort();
    if (members.join() !== expected.join()) throw new Error(`rows ${members}`);
    await groups.click('[data-bar="per_item"]');
    await groups.click('[data-toggle="refine"]');
    const rounds = await instances(groups);
    const want = [0, 1, 2].flatMap((r) => [`refine#${r}.draft`, `refine#${r}.critique`, `refine#${r}`]).map((n) => `${n} completed`);
    if (rounds.join() !== want.join()) throw new Error(`rows ${rounds}`);
    if (shot) await groups.screenshot({ path: shot.replace(/\.png$/, '-groups.png'), fullPage: true });
  });

  // 150 elements of one member each: 300 sub-rows, 200 shown.
  const wideGroupRun = await start('wide-group', true);
  const wideGroup = await browser.newPage();
  wideGroup.on('pageerror', (e) => errors.push(e.message));
  await wideGroup.goto(`${base}/#run=${wideGroupRun}&token=${encodeURIComponent(token)}`);
  await check('a wide group expands to 200 rows and says how many more', async () => {
    await reading(wideGroup, '[data-progress="work"]', '150 of 150');
    await wideGroup.click('[data-toggle="work"]');
    const rows = await wideGroup.$$('[data-instance]');
    if (rows.length !== 200) throw new Error(`${rows.length} rows`);
    const more = await text(wideGroup, '[data-more="work"]');
    if (more !== 'and 100 more') throw new Error(more);
  });
  await check('the group pages raised no errors', async () => {
    if (errors.length) throw new Error(errors.join('; '));
  });

  // A person in the loop: the run ends waiting; the page renders a form
  // from the schema, answers it, then forks the answered run.
  const askRun = await start('ask-view', true);
  const ask = await browser.newPage();
  ask.on('pageerror', (e) => errors.push(e.message));
  await ask.goto(`${base}/#run=${askRun}&token=${encodeURIComponent(token)}`);
  await check('a waiting run is listed first', async () => {
    await ask.waitForSelector(`#runs li[data-run="${askRun}"]`, { timeout: 10000 });
    const first = await ask.getAttribute('#runs li', 'data-run');
    if (first !== askRun) throw new Error(`the first run listed is ${first}`);
  });
  await check('a question is a form built from its schema, and answering continues the run', async () => {
    const yes = '[data-question="approve"] button[data-choice="true"]';
    await ask.waitForSelector(yes, { timeout: 10000 });
    await ask.click('[data-question="approve"] button[type="submit"]');
    const problem = await text(ask, '[data-question="approve"] .problems');
    if (!problem.includes('approved')) throw new Error(`no answer chosen, yet: ${problem}`);
    await ask.click(yes);
    await ask.fill('[data-question="approve"] input[name="note"]', 'ship it');
    await ask.click('[data-question="approve"] button[type="submit"]');
    await ask.waitForSelector('#run-status[data-status="completed"]', { timeout: 20000 });
    const stored = await (await fetch(`${base}/v1/runs/${askRun}`, { headers: auth })).json();
    if (stored.status !== 'completed') throw new Error(`the run is ${stored.status}`);
  });
  await check('an ended run re-runs from an agent', async () => {
    await ask.selectOption('#fork-from', 'apply');
    await ask.click('#fork-go');
    await ask.waitForFunction((id) => !location.hash.includes(id), askRun, { timeout: 10000 });
    await ask.waitForSelector('#run-status[data-status="completed"]', { timeout: 20000 });
    const id = new URLSearchParams(await ask.evaluate(() => location.hash.slice(1))).get('run');
    const fork = await (await fetch(`${base}/v1/runs/${id}`, { headers: auth })).json();
    if (fork.parent_id !== askRun) throw new Error(`parent ${fork.parent_id}`);
  });
  await check('the question pages raised no errors', async () => {
    if (errors.length) throw new Error(errors.join('; '));
  });
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
