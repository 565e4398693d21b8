// Drives Rampart's operator console in headless Chromium (Debian's package)
// through playwright-core, as an operator would during a registration flood.
// Started by crates/rampart/tests/console.rs, which runs Rampart and the load.
//
// Environment: CONSOLE_URL (the admin listener's /console), ADMIN_TOKEN,
// PUBLIC_URL (the public listener), FLAG, CHROMIUM (the browser binary),
// SCREENSHOT_DIR (where console.png goes).
// Prints one JSON line per step and, last, {"ok": true, ...}; exits non-zero
// on the first failed check, after saving console-failure.png.
import { chromium } from 'playwright-core';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const CONSOLE_URL = env('CONSOLE_URL');
const TOKEN = env('ADMIN_TOKEN');
const PUBLIC_URL = env('PUBLIC_URL');
const FLAG = env('FLAG');
const OUT = env('SCREENSHOT_DIR');
// Generous bounds: the page refreshes every 2 s, the rates are sampled every 2 s.
const WAIT = 45_000;
const started = Date.now();
const steps = [];

function step(name, extra) {
  const line = { step: name, ms: Date.now() - started, ...extra };
  steps.push(line);
  console.log(JSON.stringify(line));
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function register(phone, marker, ip) {
  const response = await fetch(`${PUBLIC_URL}/api/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-forwarded-for': ip, 'x-e2e': marker },
    body: JSON.stringify({ name: 'e2e', phone }),
  });
  return { status: response.status, body: await response.text() };
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  // Chromium's sandbox cannot run as root (CI runs as root).
  args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [],
});
const context = await browser.newContext({ viewport: { width: 1440, height: 2200 } });
const page = await context.newPage();
const requests = [];
page.on('response', (r) => requests.push({ url: r.url(), status: r.status() }));
const consoleErrors = [];
// Script errors and CSP violations; failed calls are checked from `requests`
// (the wrong-token step makes the browser log its 401).
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(m.text());
});
page.on('pageerror', (e) => consoleErrors.push(String(e)));

const flagRow = `tr[data-flag="${FLAG}"]`;
const modeIs = (mode) => page.waitForFunction(
  ([sel, m]) => document.querySelector(sel)?.getAttribute('data-mode') === m,
  [flagRow, mode], { timeout: WAIT });
const effectCount = () => page.$eval(`${flagRow} .effect`, (e) => Number(e.getAttribute('data-count') || 0));

try {
  // 1. Without the token: the login form, no data, no data call.
  const response = await page.goto(CONSOLE_URL);
  check(response.status() === 200, `GET /console: ${response.status()}`);
  check((response.headers()['content-security-policy'] || '').includes("default-src 'none'"), 'no CSP');
  await page.waitForSelector('#login-form', { state: 'visible' });
  // One refresh period: a page that fetched data on its own would have by now.
  await page.waitForTimeout(2500);
  check(await page.isHidden('#dashboard'), 'the dashboard shows without a token');
  const rows = await page.$$eval('#dashboard tbody tr', (r) => r.length);
  check(rows === 0, `${rows} table rows without a token`);
  check(await page.$$eval('#dashboard svg', (s) => s.length) === 0, 'a chart without a token');
  const dataCalls = requests.filter((r) => !r.url.endsWith('/console'));
  check(dataCalls.length === 0, `calls without a token: ${JSON.stringify(dataCalls)}`);
  check(consoleErrors.length === 0, `errors (CSP?): ${consoleErrors.join('; ')}`);
  step('no_token_no_data');

  // 2. A wrong token is refused, and not kept.
  await page.fill('#token', 'wrong-token-0123456789abcdef');
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0, null, { timeout: WAIT });
  check(await page.isHidden('#dashboard'), 'the dashboard shows with a wrong token');
  check(await page.evaluate(() => Object.keys(sessionStorage).filter((k) => k.endsWith('token')).length) === 0, 'a wrong token was kept');
  step('wrong_token_refused');

  // 3. The right token, typed once; it lives in sessionStorage only.
  await page.fill('#token', TOKEN);
  await page.fill('#actor', 'console-e2e');
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#dashboard', { state: 'visible', timeout: WAIT });
  check((await context.cookies()).length === 0, 'a cookie was set');
  check(await page.evaluate(() => sessionStorage.getItem('rampart.console.token')) === TOKEN, 'token not in sessionStorage');
  await page.waitForSelector(flagRow, { timeout: WAIT });
  step('signed_in');

  // 4. The rate chart moves under the load: the register line gains samples
  // and a non-zero rate.
  const series = '#rate-chart polyline[data-series="register proxied"]';
  await page.waitForSelector(series, { timeout: WAIT });
  const before = await page.$eval(series, (l) => l.getAttribute('points'));
  await page.waitForFunction(([sel, old]) => {
    const line = document.querySelector(sel);
    return line && line.getAttribute('points') !== old && Number(line.getAttribute('data-last')) > 0;
  }, [series, before], { timeout: WAIT });
  const last = await page.$eval(series, (l) => Number(l.getAttribute('data-last')));
  step('rate_chart_moves', { register_proxied_per_second: last });

  // Pools, offenders and fleet are on screen.
  await page.waitForSelector('#pool-list [data-pool="auth"]', { timeout: WAIT });
  await page.waitForFunction(() => [...document.querySelectorAll('#top-asns td')].some((td) => td.textContent === 'Example Hosting Ltd'), null, { timeout: WAIT });
  await page.waitForSelector('#refusal-table tr[data-rule="known-bad-networks"]', { timeout: WAIT });
  check((await page.textContent('#fleet-summary')).includes('Single node'), 'fleet status missing');
  step('panels_filled');

  // 5. Preview the flag with a TTL and reason; its would-refuse counter rises.
  check(await page.getAttribute(flagRow, 'data-mode') === 'off', 'flag already on');
  await page.fill(`${flagRow} input[name=ttl]`, '10m');
  await page.fill(`${flagRow} input[name=reason]`, 'e2e: +1 signup flood');
  await page.click(`${flagRow} button[data-action=preview]`);
  await modeIs('preview');
  await page.waitForFunction((sel) => Number(document.querySelector(`${sel} .effect`)?.getAttribute('data-count') || 0) > 0, flagRow, { timeout: WAIT });
  step('previewed', { would_refuse: await effectCount() });
  // Still proxied while previewed.
  const previewed = await register('+1 415 555 0199', 'while-previewed', '203.0.113.20');
  check(previewed.status === 200, `+1 registration in preview: ${previewed.status}`);

  // 6. Enforce it with a TTL.
  await page.fill(`${flagRow} input[name=ttl]`, '15m');
  await page.fill(`${flagRow} input[name=reason]`, 'e2e: +1 signup flood, INC-1');
  await page.click(`${flagRow} button[data-action=enforce]`);
  await modeIs('enforce');
  const expires = await page.textContent(`${flagRow} .expires`);
  check(/^in 1[45]m/.test(expires), `expiry shown as "${expires}"`);
  step('enforced', { expires });

  // 7. A +1 registration is refused at the public listener.
  const refused = await register('+1 415 555 0100', 'while-enforced', '203.0.113.21');
  check(refused.status === 403, `+1 registration while enforced: ${refused.status} ${refused.body}`);
  check(JSON.parse(refused.body).rule === FLAG, `refused by ${refused.body}`);
  await page.waitForFunction((sel) => Number(document.querySelector(`${sel} .effect`)?.getAttribute('data-count') || 0) > 0, flagRow, { timeout: WAIT });
  await page.waitForSelector(`#refusal-table tr[data-rule="${FLAG}"]`, { timeout: WAIT });
  step('plus_one_refused', { refused_in_page: await effectCount() });

  // 8. Explain agrees.
  await page.fill('#explain-form input[name=ip]', '203.0.113.22');
  await page.fill('#explain-form input[name=path]', '/api/auth/register');
  await page.selectOption('#explain-form select[name=method]', 'POST');
  await page.fill('#explain-form textarea[name=body]', '{"phone": "+1 415 555 0100"}');
  await page.click('#explain-form button[type=submit]');
  await page.waitForSelector('#explain-result .verdict[data-verdict="body_refused"]', { timeout: WAIT });
  check((await page.textContent('#explain-result')).includes(FLAG), 'explain does not name the flag');
  step('explained');
  await page.screenshot({ path: join(OUT, 'console-enforced.png'), fullPage: true });

  // 9. Disable it; +1 registrations pass again.
  await page.fill(`${flagRow} input[name=reason]`, 'e2e: flood over');
  await page.click(`${flagRow} button[data-action=disable]`);
  await modeIs('off');
  const after = await register('+1 415 555 0101', 'after-disable', '203.0.113.23');
  check(after.status === 200, `+1 registration after disabling: ${after.status}`);
  step('disabled');
  await page.screenshot({ path: join(OUT, 'console.png'), fullPage: true });

  // 10. Signing out wipes the data and the token.
  await page.click('#sign-out');
  await page.waitForSelector('#login-form', { state: 'visible', timeout: WAIT });
  check(await page.evaluate(() => sessionStorage.length) === 0, 'sessionStorage not cleared');
  check(await page.$$eval('#dashboard tbody tr', (r) => r.length) === 0, 'data left after sign-out');
  check(consoleErrors.length === 0, `errors: ${consoleErrors.join('; ')}`);
  const failed = requests.filter((r) => r.status >= 400);
  check(failed.length === 1 && failed[0].status === 401 && failed[0].url.endsWith('/status'),
    `failed calls (only the wrong token's should fail): ${JSON.stringify(failed)}`);
  step('signed_out');
  console.log(JSON.stringify({ ok: true, steps }));
  await browser.close();
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  try { await page.screenshot({ path: join(OUT, 'console-failure.png'), fullPage: true }); } catch (_) { /* best effort */ }
  console.log(JSON.stringify({ ok: false, error: String(e && e.message), steps }));
  await browser.close();
  process.exit(1);
}
