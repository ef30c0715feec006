// Drives the dashboard in Debian's headless Chromium against a running host. Started by
// durable-http/tests/dashboard.rs, which runs the host and passes:
//   DASHBOARD_URL      the dashboard's URL without the trailing slash (the redirect is tested)
//   DASHBOARD_KEY      the management key
//   DASHBOARD_FIXTURE  JSON: { completed: [ids], failed: id, waiting: [ids], entity: {name, key, state} }
//   DASHBOARD_SCREENSHOTS  optional: a directory to write dashboard.png and instance.png to
// Every wait has a deadline; the process exits non-zero on the first failed check.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.DASHBOARD_URL;
const key = process.env.DASHBOARD_KEY;
const fixture = JSON.parse(process.env.DASHBOARD_FIXTURE || '{}');
const shots = process.env.DASHBOARD_SCREENSHOTS;
if (!url || !key || !fixture.failed) {
  console.error('DASHBOARD_URL, DASHBOARD_KEY and DASHBOARD_FIXTURE are required');
  process.exit(2);
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

// Polls `probe` until it returns true; fails with the last value after the deadline.
async function until(what, probe, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await probe();
      if (last === true) return;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last seen: ${JSON.stringify(last)})`);
}

const step = (name) => console.log(`ok - ${name}`);
const rowIds = (page, table) => page.locator(`#${table} tbody tr td.id`).allTextContents();

const profile = mkdtempSync(join(tmpdir(), 'durable-dashboard-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1360, height: 860 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
const problems = [];
let failed = false;
try {
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.setDefaultTimeout(15000);
  const apiUrls = [];
  page.on('request', (r) => apiUrls.push(r.url()));

  // The redirect to the trailing slash, then the sign-in form.
  const res = await page.goto(url);
  check(res.ok(), `dashboard answered ${res.status()}`);
  check(page.url() === `${url}/`, `redirected to ${page.url()}`);
  const csp = (await res.allHeaders())['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && csp.includes("frame-ancestors 'none'"), `CSP: ${csp}`);
  await page.locator('#signin-form').waitFor();
  step('the page loads and asks for the key');

  await page.fill('#key', 'not-the-key-0123456789');
  await page.click('#signin-button');
  await until('the wrong-key error', async () => /refused/.test(await page.textContent('#signin-error'))
    && await page.isVisible('#signin-error'));
  check(await page.isHidden('#nav'), 'signed in with a wrong key');
  // The browser logs the refused request; later checks want a clean console.
  check(problems.every((p) => p.includes('401')), `browser errors:\n${problems.join('\n')}`);
  problems.length = 0;
  step('a wrong key shows an error');

  await page.fill('#key', key);
  await page.click('#signin-button');
  await page.locator('#view-overview').waitFor();
  await until('the status counts', async () => {
    const n = (s) => page.locator(`.count[data-status="${s}"] .n`).textContent();
    return await n('Completed') === String(fixture.completed.length)
      && await n('Failed') === '1'
      && await n('Running') === String(fixture.waiting.length);
  });
  await until('the failure in recent failures', async () =>
    (await rowIds(page, 'failures')).includes(fixture.failed));
  step('signed in: counts by status and recent failures');

  // Filters: status, name, id prefix.
  await page.click('#nav a[data-view="instances"]');
  await page.locator('#view-instances').waitFor();
  await page.locator('#status-chips input[value="Running"]').check();
  await page.click('#apply-filters');
  await until('only running instances', async () => {
    const ids = await rowIds(page, 'instances');
    const statuses = await page.locator('#instances tbody .badge').allTextContents();
    return ids.length === fixture.waiting.length && statuses.every((s) => s === 'Running');
  });
  await page.click('#clear-filters');
  await page.fill('#f-name', 'ORDER');
  await page.click('#apply-filters');
  await until('the name filter', async () => {
    const ids = await rowIds(page, 'instances');
    return ids.length === fixture.completed.length && fixture.completed.every((id) => ids.includes(id));
  });
  await page.fill('#f-name', '');
  await page.fill('#f-prefix', fixture.failed.slice(0, 6));
  await page.click('#apply-filters');
  await until('the id prefix filter', async () =>
    JSON.stringify(await rowIds(page, 'instances')) === JSON.stringify([fixture.failed]));
  step('filters by status, name and id prefix');

  // Paging through continuation tokens: page size 10 over more instances than that.
  await page.click('#clear-filters');
  await until('the filters cleared', async () => (await page.inputValue('#f-prefix')) === '');
  await page.selectOption('#f-top', '10');
  await page.click('#apply-filters');
  await until('a full first page', async () => (await rowIds(page, 'instances')).length === 10);
  const first = await rowIds(page, 'instances');
  check(await page.isEnabled('#next-page'), 'no next page');
  await page.click('#next-page');
  await until('the second page', async () => {
    const ids = await rowIds(page, 'instances');
    return ids.length > 0 && ids.every((id) => !first.includes(id));
  });
  await page.click('#prev-page');
  await until('back on the first page', async () =>
    JSON.stringify(await rowIds(page, 'instances')) === JSON.stringify(first));
  step('pages through continuation tokens');

  if (shots) {
    await page.click('#clear-filters');
    await until('the full list', async () => (await rowIds(page, 'instances')).length > 10);
    await page.screenshot({ path: join(shots, 'dashboard-instances.png') });
    await page.click('#nav a[data-view="overview"]');
    await page.locator('#view-overview').waitFor();
    await until('the counts', async () => (await page.locator('.count').count()) > 3);
    await page.screenshot({ path: join(shots, 'dashboard-overview.png') });
  }

  // An instance page with its timeline.
  await page.goto(`${url}/#/instances/${encodeURIComponent(fixture.completed[0])}`);
  await until('the completed instance', async () => (await page.textContent('#i-status')) === 'Completed');
  await until('the timeline', async () => {
    const kinds = await page.locator('#timeline .tl-row[data-kind]').evaluateAll((rows) => rows.map((r) => r.dataset.kind));
    const text = await page.textContent('#timeline');
    return kinds.includes('activity') && kinds.includes('timer')
      && text.includes('validate_order') && text.includes('ship_order') && /\d+(\.\d+)? (ms|s)/.test(text);
  });
  check((await page.textContent('#i-input')).includes('"order"'), 'the input is shown');
  check((await page.textContent('#i-output')).includes('shipped'), 'the output is shown');
  check(await page.isDisabled('button[data-action="terminate"]'), 'terminate offered on a completed instance');
  step('an instance page shows input, output and the history as a timeline');
  if (shots) await page.screenshot({ path: join(shots, 'dashboard-instance.png'), fullPage: true });

  await page.goto(`${url}/#/instances/${encodeURIComponent(fixture.failed)}`);
  await until('the failure details', async () => (await page.isVisible('#i-failure'))
    && (await page.textContent('#i-failure-message')).includes('503'));
  step('a failed instance shows its failure');

  // Terminate a running instance; the page follows the status change.
  const victim = fixture.waiting[0];
  await page.goto(`${url}/#/instances/${encodeURIComponent(victim)}`);
  await until('the running instance', async () => (await page.textContent('#i-status')) === 'Running');
  check((await page.textContent('#i-custom')).includes('waiting for approval'), 'custom status shown');
  await page.click('button[data-action="terminate"]');
  await page.locator('#confirm').waitFor();
  await page.click('#confirm-cancel');
  await until('the dialog closed', async () => !(await page.isVisible('#confirm')));
  check((await page.textContent('#i-status')) === 'Running', 'cancel still terminated');
  await page.click('button[data-action="terminate"]');
  await page.fill('#confirm-reason', 'stopped from the dashboard test');
  await page.click('#confirm-ok');
  await until('the Terminated status', async () => (await page.textContent('#i-status')) === 'Terminated');
  step('terminate asks for confirmation and the status changes');

  // Raise an event on the other one: it completes.
  const other = fixture.waiting[1];
  await page.goto(`${url}/#/instances/${encodeURIComponent(other)}`);
  await until('the other running instance', async () => (await page.textContent('#i-status')) === 'Running');
  await page.click('button[data-action="raise"]');
  await page.fill('#confirm-event-name', 'approved');
  await page.fill('#confirm-event-data', '{not json');
  await page.click('#confirm-ok');
  await until('the JSON error', async () => (await page.textContent('#confirm-error')).includes('not valid JSON'));
  await page.fill('#confirm-event-data', '{"by": "<b>ops</b>"}');
  await page.click('#confirm-ok');
  await until('the Completed status', async () => (await page.textContent('#i-status')) === 'Completed');
  check((await page.textContent('#i-output')).includes('<b>ops</b>'), 'event data shown as text');
  check(await page.locator('#i-output b').count() === 0, 'data was inserted as HTML');
  step('raise event with JSON data; data is rendered as text');

  // Entities with their state.
  await page.click('#nav a[data-view="entities"]');
  await until('the entity', async () => (await page.textContent('#entities tbody')).includes(fixture.entity.key)
    && (await page.textContent('#entities tbody')).includes(String(fixture.entity.state)));
  step('entities with their state');

  // The key never shows up in a URL; it lives in this tab's session storage.
  check(!apiUrls.some((u) => u.includes(key)), 'the key appeared in a request URL');
  check(!page.url().includes(key), 'the key appeared in the page URL');
  check(await page.evaluate(() => sessionStorage.getItem('durable.key')) === key, 'key not in sessionStorage');
  await page.click('#sign-out');
  await page.locator('#signin-form').waitFor();
  check(await page.evaluate(() => sessionStorage.getItem('durable.key')) === null, 'sign-out kept the key');
  step('the key stays out of URLs and sign-out forgets it');

  check(problems.length === 0, `browser errors:\n${problems.join('\n')}`);
  step('no console errors or CSP violations');
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}`);
  if (problems.length) console.error(problems.join('\n'));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
