// Drives the web view in headless Chromium against a running `braid serve`:
// the page must show a run's agents going from running to completed, live,
// over the WebSocket, and draw the graph and the timeline; a fan-out must
// be one node and one bar with its progress (n of N), live and at the end,
// that expands to its instances (200 rows at most); a group (`kind:
// pipeline`) one dashed node and one bar, with its round or progress, that
// expands to its members and rounds. Then the console around it: signing
// in (form, `#token=`, `?token=`, 401), the runs list with its filters,
// starting a run from a pipeline's form, watching it (now-line, growing
// bars), cancelling and resuming it, a failed agent's panel, a
// tool-calling agent's panel (its calls and conversation), Markdown
// output kept safe, and a layout where no edge crosses a box.
//
//   BRAID_URL=http://127.0.0.1:7790 BRAID_TOKEN=… BRAID_GATE=/tmp/…/go \
//   BRAID_FAN_GATE=/tmp/…/go-fan BRAID_GROUP_GATE=/tmp/…/go-group node view.mjs
import { mkdirSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const base = process.env.BRAID_URL;
const token = process.env.BRAID_TOKEN;
// Screenshots go to this directory, only when it is set.
const shots = process.env.BRAID_SCREENSHOTS || '';
if (shots) mkdirSync(shots, { recursive: true });
const snap = async (p, name) => { if (shots) await p.screenshot({ path: `${shots}/${name}.png`, fullPage: true }); };
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

// Run in the page: each edge segment of the SVG `sel` that enters a box (a
// node's rectangle, 1 px in from its border) other than its two ends.
function crossings(sel) {
  const svg = document.querySelector(sel);
  const boxes = [...svg.querySelectorAll('g[data-x]')].map((g) => ({
    name: g.dataset.agent || g.dataset.pnode, x: +g.dataset.x, y: +g.dataset.y, w: +g.dataset.w, h: +g.dataset.h }));
  // Liang–Barsky: whether segment p→q meets the open box.
  const meets = (p, q, b) => {
    const dx = q.x - p.x, dy = q.y - p.y;
    let t0 = 0, t1 = 1;
    for (const [d, room] of [[-dx, p.x - (b.x + 1)], [dx, b.x + b.w - 1 - p.x], [-dy, p.y - (b.y + 1)], [dy, b.y + b.h - 1 - p.y]]) {
      if (d === 0) { if (room < 0) return false; continue; }
      const r = room / d;
      if (d < 0) { if (r > t1) return false; if (r > t0) t0 = r; } else { if (r < t0) return false; if (r < t1) t1 = r; }
    }
    return t0 < t1;
  };
  const bad = boxes.length ? [] : ['no boxes drawn'];
  const edges = svg.querySelectorAll('path.edge');
  if (!edges.length) bad.push('no edges drawn');
  for (const path of edges) {
    const nums = path.getAttribute('d').match(/-?[\d.]+/g).map(Number);
    const pts = [];
    for (let i = 0; i + 1 < nums.length; i += 2) pts.push({ x: nums[i], y: nums[i + 1] });
    for (let i = 0; i + 1 < pts.length; i++) {
      for (const b of boxes) {
        if (b.name === path.dataset.from || b.name === path.dataset.to) continue;
        if (meets(pts[i], pts[i + 1], b)) bad.push(`${path.dataset.from}→${path.dataset.to} crosses ${b.name}`);
      }
    }
  }
  return bad.slice(0, 10);
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
  await page.goto(`${base}/#token=${encodeURIComponent(token)}`);

  await check('a #token= link is stored for the tab and stripped from the address', async () => {
    await page.waitForSelector(`#runs tr[data-run="${run_id}"]`, { timeout: 10000 });
    if (page.url().includes('token')) throw new Error(`the address still has it: ${page.url()}`);
    const kept = await page.evaluate(() => sessionStorage.getItem('braid-token'));
    if (kept !== token) throw new Error('the token is not in sessionStorage');
    if (await page.evaluate(() => localStorage.length)) throw new Error('something went into localStorage');
  });
  await check('the run is listed, and clicking it opens it', async () => {
    await page.click(`#runs tr[data-run="${run_id}"]`);
    await page.waitForFunction((id) => location.hash === `#run=${id}`, run_id, { timeout: 10000 });
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
  await snap(page, 'run');
  await check('no edge crosses a box other than its ends (seed-like pipeline)', async () => {
    const bad = await page.evaluate(crossings, '#graph');
    if (bad.length) throw new Error(bad.join('; '));
  });

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
    await snap(fan, 'run-fanout');
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
    await snap(groups, 'run-groups');
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
  await check('a waiting run is listed first, and counted', async () => {
    await ask.waitForSelector('#run-status[data-status="waiting"]', { timeout: 10000 });
    await ask.click('#nav-runs');
    await ask.waitForSelector(`#runs tr[data-run="${askRun}"]`, { timeout: 10000 });
    const first = await ask.getAttribute('#runs tr', 'data-run');
    if (first !== askRun) throw new Error(`the first run listed is ${first}`);
    const waiting = await ask.getAttribute('#badge-waiting', 'data-count');
    if (waiting !== '1') throw new Error(`the waiting badge counts ${waiting}`);
    await snap(ask, 'runs');
    await ask.click(`#runs tr[data-run="${askRun}"]`);
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
  // ------------------------------------------------------------ console --
  // Signing in: a tab without a token gets the form, never an empty list.
  const signin = await browser.newPage();
  signin.on('pageerror', (e) => errors.push(e.message));
  await signin.goto(`${base}/`);
  await check('without a token the page shows the sign-in form and says why', async () => {
    await signin.waitForSelector('#signin-form', { state: 'visible', timeout: 10000 });
    const message = await signin.textContent('#signin-message');
    if (!message.includes('401')) throw new Error(`the message reads ${message}`);
    if (await signin.isVisible('#runs-page')) throw new Error('the runs list shows');
    await snap(signin, 'sign-in');
  });
  await check('a wrong token is refused, the right one signs in', async () => {
    await signin.fill('#signin-token', 'not-the-token');
    await signin.click('#signin-go');
    await signin.waitForFunction(() => document.getElementById('signin-message').textContent.includes('refused'), null, { timeout: 10000 });
    await signin.fill('#signin-token', token);
    await signin.click('#signin-go');
    await signin.waitForSelector('#runs tr[data-run]', { timeout: 10000 });
    if (signin.url().includes(token)) throw new Error('the token is in the address');
  });
  await check('a token the server no longer takes brings the form back (401)', async () => {
    await signin.evaluate(() => sessionStorage.setItem('braid-token', 'revoked'));
    await signin.click('#nav-pipelines');
    await signin.waitForSelector('#signin-form', { state: 'visible', timeout: 10000 });
    await signin.fill('#signin-token', token);
    await signin.click('#signin-go');
    await signin.waitForSelector('#pipelines tr[data-pipeline]', { timeout: 10000 });
  });

  const con = await browser.newPage();
  con.on('pageerror', (e) => errors.push(e.message));
  await con.goto(`${base}/?token=${encodeURIComponent(token)}`);
  await check('a ?token= address is taken like #token=: stored, stripped, runs listed', async () => {
    await con.waitForSelector('#runs tr[data-run]', { timeout: 10000 });
    const address = await con.evaluate(() => location.search + location.hash);
    if (address.includes('token')) throw new Error(`the address keeps ${address}`);
  });
  const rowsAre = (p, fn, arg) => p.waitForFunction(([body, a]) => {
    const rows = [...document.querySelectorAll('#runs tr[data-run]')].map((r) => ({ id: r.dataset.run, status: r.dataset.status, pipeline: r.children[2].textContent }));
    return new Function('rows', 'a', body)(rows, a);
  }, [fn, arg], { timeout: 10000 });
  await check('the runs list filters by status, pipeline and run id prefix', async () => {
    await con.selectOption('#f-status', 'completed');
    await rowsAre(con, 'return rows.length > 2 && rows.every((r) => r.status === "completed")');
    await con.selectOption('#f-status', '');
    await con.selectOption('#f-pipeline', 'wide-view');
    await rowsAre(con, 'return rows.length === 1 && rows[0].pipeline === "wide-view"');
    await con.selectOption('#f-pipeline', '');
    await con.fill('#f-prefix', wideRun.slice(0, 30));
    await rowsAre(con, 'return rows.length === 1 && rows[0].id === a', wideRun);
    await con.fill('#f-prefix', '');
    await rowsAre(con, 'return rows.length > 2');
  });

  await check('the pipelines page shows a pipeline\'s graph, source, inputs and a form', async () => {
    await con.click('#nav-pipelines');
    await con.click('#pipelines tr[data-pipeline="form-view"]');
    await con.waitForSelector('#input-topic', { timeout: 10000 });
    const source = await con.textContent('#pipeline-source');
    if (!source.includes('pipeline: form-view')) throw new Error(`the source reads ${source.slice(0, 80)}`);
    const nodes = await con.$$eval('#pgraph [data-pnode]', (n) => n.map((e) => e.dataset.pnode).sort().join());
    if (nodes !== 'hold,write') throw new Error(`nodes ${nodes}`);
    const modes = await con.$$eval('#input-mode option', (o) => o.map((x) => x.textContent));
    if (!modes.includes('slow')) throw new Error(`the mode offers ${modes}`);
    if (await con.inputValue('#input-count') !== '2') throw new Error('the default count is not filled in');
    if (!(await con.$('textarea#input-tags'))) throw new Error('an array input is not a JSON field');
    await snap(con, 'pipelines');
  });
  let formRun = null;
  await check('a run starts from the form, with events on, and opens', async () => {
    await con.fill('#input-topic', 'console test');
    await con.selectOption('#input-mode', { label: 'slow' });
    await con.check('#input-loud');
    await con.fill('#input-tags', '["a", "b"]');
    await con.click('#start-go');
    await con.waitForFunction(() => location.hash.startsWith('#run='), null, { timeout: 10000 });
    formRun = new URLSearchParams(await con.evaluate(() => location.hash.slice(1))).get('run');
    const run = await (await fetch(`${base}/v1/runs/${formRun}`, { headers: auth })).json();
    if (run.events !== 'summary') throw new Error(`events ${run.events}`);
  });
  await check('while it runs, the timeline has rounded ticks, a now-line, and the running bar grows', async () => {
    await con.waitForSelector('[data-agent="hold"][data-status="running"]', { timeout: 20000 });
    await con.waitForSelector('#now-line', { state: 'attached', timeout: 5000 });
    const width = () => con.$eval('[data-bar="hold"]', (r) => Number(r.getAttribute('width')));
    const now = () => con.$eval('#now-line', (l) => Number(l.dataset.ms));
    await con.waitForTimeout(300);
    const [w0, n0] = [await width(), await now()];
    await con.waitForTimeout(1000);
    const [w1, n1] = [await width(), await now()];
    if (!(n1 > n0)) throw new Error(`the now-line stays at ${n0} ms`);
    if (!(w1 > w0)) throw new Error(`the running bar stays ${w0} px wide`);
    const ticks = await con.$$eval('#timeline [data-tick]', (t) => t.map((e) => Number(e.dataset.tick)));
    const step = ticks[1] - ticks[0];
    if (ticks[0] !== 0 || !/^[125]0*$/.test(String(step))) throw new Error(`ticks ${ticks}`);
  });
  await check('cancel stops the run; resume continues it to the end', async () => {
    await con.click('#cancel-run');
    await con.waitForSelector('#run-status[data-status="cancelled"]', { timeout: 20000 });
    writeFileSync(process.env.BRAID_FORM_GATE, '');
    await con.click('#resume-run');
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 30000 });
    const run = await (await fetch(`${base}/v1/runs/${formRun}`, { headers: auth })).json();
    if (run.status !== 'completed') throw new Error(`the run is ${run.status}`);
    const s = run.state;
    if (s.topic !== 'console test' || s.mode !== 'slow' || s.loud !== true || s.count !== 2 || s.tags.join() !== 'a,b') {
      throw new Error(`the form sent ${JSON.stringify(s)}`);
    }
  });
  await check('the Markdown output is rendered, markup in it stays text', async () => {
    await con.waitForSelector('[data-output="report"] .markdown h1', { timeout: 10000 });
    const text = await con.textContent('[data-output="report"] .markdown');
    if (!text.includes('<img src=x onerror=window.__pwned=1>')) throw new Error(`the output reads ${text}`);
    if (await con.$('[data-output="report"] img')) throw new Error('an <img> got through');
    if (await con.evaluate(() => window.__pwned)) throw new Error('the output ran script');
    const input = await con.textContent('#run-input');
    if (!input.includes('console test')) throw new Error(`the input reads ${input}`);
  });

  // A run started without events (the API's default) is polled every second.
  const quiet = await fetch(`${base}/v1/runs`, { method: 'POST', headers: auth, body: JSON.stringify({ pipeline: 'quiet-view' }) });
  const quietRun = (await quiet.json()).run_id;
  await con.goto(`${base}/#run=${quietRun}`);
  await check('a run without events is polled while it runs, to its end', async () => {
    await con.waitForSelector('#run-status[data-status="running"]', { timeout: 10000 });
    await con.waitForFunction(() => document.getElementById('live').textContent.includes('polling'), null, { timeout: 5000 });
    const snapshot = await (await fetch(`${base}/v1/runs/${quietRun}`, { headers: auth })).json();
    // The server takes a snapshot of the running run: the page shows it.
    if (!snapshot.agents || !snapshot.agents.hold) throw new Error(`no agents in ${JSON.stringify(snapshot)}`);
    await con.waitForSelector('[data-agent="hold"][data-status="running"]', { timeout: 10000 });
    writeFileSync(process.env.BRAID_QUIET_GATE, '');
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 20000 });
    await con.waitForSelector('[data-agent="hold"][data-status="completed"]', { timeout: 5000 });
  });

  await check('re-run starts the same pipeline with the same input', async () => {
    await con.goto(`${base}/#run=${formRun}`);
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 10000 });
    await con.click('#rerun');
    await con.waitForFunction((id) => location.hash.startsWith('#run=') && !location.hash.includes(id), formRun, { timeout: 10000 });
    const again = new URLSearchParams(await con.evaluate(() => location.hash.slice(1))).get('run');
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 20000 });
    const run = await (await fetch(`${base}/v1/runs/${again}`, { headers: auth })).json();
    if (run.pipeline !== 'form-view' || run.state.topic !== 'console test' || run.state.tags.join() !== 'a,b') {
      throw new Error(`the re-run is ${run.pipeline} with ${JSON.stringify(run.state)}`);
    }
  });

  // Live logs: a run with `full` events streams its agents' log lines.
  const talk = await fetch(`${base}/v1/runs`, { method: 'POST', headers: auth, body: JSON.stringify({ pipeline: 'log-view', events: 'full' }) });
  const talkRun = (await talk.json()).run_id;
  await con.goto(`${base}/#run=${talkRun}`);
  const logsSay = (t) => con.waitForFunction((t) => (document.getElementById('panel-logs')?.textContent || '').includes(t), t, { timeout: 10000 })
    .catch(async () => { throw new Error(`the logs read ${await con.evaluate(() => document.getElementById('panel-logs')?.textContent)}`); });
  await check('an agent\'s log lines show live in its panel, and again once the run ended', async () => {
    await con.waitForSelector('[data-agent="talk"][data-status="running"]', { timeout: 10000 });
    await con.click('[data-agent="talk"]');
    await logsSay('step one');
    writeFileSync(process.env.BRAID_LOG_GATE, '');
    await logsSay('step two');
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 10000 });
    await con.reload();
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 10000 });
    await con.click('[data-agent="talk"]');
    await logsSay('step two');
    const text = await con.textContent('#panel-logs');
    if (text.indexOf('step one') > text.indexOf('step two')) throw new Error(`out of order: ${text}`);
  });

  const toolsRun = await start('tools-view', true);
  await con.goto(`${base}/#run=${toolsRun}`);
  await check('a tool-calling agent\'s panel lists its tool calls and its conversation', async () => {
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 10000 });
    await con.click('[data-agent="ask"]');
    const call = await con.waitForSelector('#panel-tool-calls [data-tool-call="ask.tool#1:lookup"]', { timeout: 5000 });
    const text = await call.textContent();
    if (!text.includes('completed') || !text.includes('braid') || !text.includes('hit one')) {
      throw new Error(`the call reads ${text}`);
    }
    const roles = await con.$$eval('#panel-transcript [data-role]', (els) => els.map((e) => e.dataset.role));
    if (roles.join() !== 'user,assistant,tool,assistant') throw new Error(`the transcript's roles are ${roles}`);
    const transcript = await con.textContent('#panel-transcript');
    if (!transcript.includes('lookup(') || !transcript.includes('found it')) throw new Error(`the transcript reads ${transcript}`);
  });

  const failRun = await start('fail-view', true);
  await con.goto(`${base}/#run=${failRun}`);
  await check('a failed agent opens a panel with its error, retries and logs', async () => {
    await con.waitForSelector('#run-status[data-status="failed"]', { timeout: 10000 });
    await con.click('[data-agent="flaky"]');
    await con.waitForSelector('#panel-error', { timeout: 5000 });
    const error = await con.textContent('#panel-error');
    if (!error.includes('exit code 3')) throw new Error(`the error reads ${error}`);
    const report = await (await fetch(`${base}/v1/runs/${failRun}`, { headers: auth })).json();
    const flaky = report.agents.flaky;
    if (flaky.attempts !== 2) throw new Error(`${flaky.attempts} attempts`);
    if (!(await con.$('[data-bar="flaky"][data-retries="1"]'))) throw new Error('the retry is not drawn');
    const status = await con.textContent('#panel-status');
    if (status !== 'failed') throw new Error(`the panel says ${status}`);
    if (flaky.failures) {
      const shown = (await con.$$('#panel [data-failure]')).length;
      if (shown !== flaky.failures.length) throw new Error(`${shown} failed attempts shown of ${flaky.failures.length}`);
    }
    // Its stderr lines, one per attempt (stdout is its answer, not a log).
    if (JSON.stringify(flaky.logs) !== JSON.stringify(['disk on fire', 'disk on fire'])) {
      throw new Error(`the report's logs are ${JSON.stringify(flaky.logs)}`);
    }
    const logs = await con.textContent('#panel-logs');
    if (logs.split('disk on fire').length !== 3) throw new Error(`the logs read ${logs}`);
    if (!flaky.failures || flaky.failures.length !== 2) throw new Error(`failures: ${JSON.stringify(flaky.failures)}`);
    const writes = await con.textContent('#panel-writes');
    if (!writes.includes('result')) throw new Error(`the writes read ${writes}`);
    await snap(con, 'agent-panel');
  });
  await check('a skipped agent is drawn apart, and its panel says why', async () => {
    await con.waitForSelector('[data-bar="optional"][data-status="skipped"].skipped-bar', { timeout: 5000 });
    await con.click('[data-agent="optional"]');
    await con.waitForFunction(() => document.getElementById('panel-title').textContent === 'optional', null, { timeout: 5000 });
    const report = await (await fetch(`${base}/v1/runs/${failRun}`, { headers: auth })).json();
    const reason = report.agents.optional.reason;
    if (reason) {
      const shown = await con.textContent('#panel-reason');
      if (shown !== reason) throw new Error(`the panel says ${shown}, the report ${reason}`);
    }
  });

  const bigRun = await start('big-view', true);
  await con.goto(`${base}/#run=${bigRun}`);
  await check('no edge crosses a box other than its ends (50 agents)', async () => {
    await con.waitForSelector('#run-status[data-status="completed"]', { timeout: 10000 });
    const nodes = (await con.$$('#graph [data-agent]')).length;
    if (nodes !== 50) throw new Error(`${nodes} nodes`);
    const bad = await con.evaluate(crossings, '#graph');
    if (bad.length) throw new Error(bad.join('; '));
    await snap(con, 'run-50-agents');
    await con.goto(`${base}/#pipeline=big-view`);
    await con.waitForSelector('#pgraph [data-pnode="a49"]', { timeout: 10000 });
    const again = await con.evaluate(crossings, '#pgraph');
    if (again.length) throw new Error(`pipelines page: ${again.join('; ')}`);
  });
  // 200 more runs: the list pages through them 50 at a time, quickly.
  await Promise.all(Array.from({ length: 200 }, () => start('many-view')));
  await con.goto(`${base}/#runs`);
  await check('the runs list pages through 200 runs, 50 a page, each once', async () => {
    await con.waitForFunction(() => document.querySelectorAll('#runs tr[data-run]').length >= 50, null, { timeout: 10000 });
    await con.selectOption('#f-pipeline', 'many-view');
    const seen = new Set();
    for (let page = 0; page < 4; page++) {
      await rowsAre(con, 'return rows.length === 50 && rows.every((r) => r.pipeline === "many-view") && !rows.some((r) => a.includes(r.id))', [...seen]);
      for (const id of await con.$$eval('#runs tr[data-run]', (r) => r.map((e) => e.dataset.run))) seen.add(id);
      const older = await con.isEnabled('#page-older');
      if (older !== (page < 3)) throw new Error(`page ${page + 1}: Older is ${older ? 'enabled' : 'disabled'}`);
      if (older) {
        const started = Date.now();
        await con.click('#page-older');
        await con.waitForFunction((n) => document.getElementById('page-info').textContent.startsWith(`page ${n}`), page + 2, { timeout: 5000 });
        if (Date.now() - started > 3000) throw new Error(`a page took ${Date.now() - started} ms`);
      }
    }
    if (seen.size !== 200) throw new Error(`${seen.size} runs seen`);
    await con.click('#page-newer');
    await con.waitForFunction(() => document.getElementById('page-info').textContent.startsWith('page 3'), null, { timeout: 5000 });
  });
  await check('the console pages raised no errors', async () => {
    if (errors.length) throw new Error(errors.join('; '));
  });
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
