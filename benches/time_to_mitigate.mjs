#!/usr/bin/env node
// Time to mitigate, measured: the shipped config (conf/rampart.toml, on free
// loopback ports, loopback trusted as a proxy so that X-Forwarded-For plays the
// botnet) in front of demo origins started here, a bounded registration flood of
// +1 numbers from rotating addresses plus a trickle of legitimate +86 mobile
// registrations, and the operator's steps driven through the console's API,
// polled the way the page polls it:
//   1. see the flood in the console's rates (register · proxied),
//   2. preview registration_cn_mobile_only (TTL, reason),
//   3. see its would-refuse counter in the rates,
//   4. enforce it with a TTL,
//   5. see its refusals in the rates (and the flood's first 403 at the edge).
// Fleet mode (--fleet): two nodes sharing a redis-server on a free loopback
// port, the flood split between them, the operator on node 1's console; adds
// the time until every node enforces (each node's /lockdown, polled every
// 20 ms) and until node 1's fleet view (/fleet) shows every node enforcing.
//
// Reports each step's time from the flood's start and from the step before.
// Operator think time is not in it: these are the machine's parts.
//
//   node benches/time_to_mitigate.mjs [--fleet] [--rounds N] [--rate R] [--poll MS] [--bin PATH]
//
// --rate: flood requests per second in all (default 400); --poll: how often the
// console's API is read (default 2000, the page's refresh); --bin: the rampart
// binary (default $RAMPART_BIN, else target/release/rampart). Every loop is
// bounded: the flood stops after 60 s whatever happens; traffic goes to
// 127.0.0.1 only.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const FLEET = args.includes('--fleet');
const ROUNDS = Number(opt('--rounds', '1'));
const RATE = Number(opt('--rate', '400'));
const POLL_MS = Number(opt('--poll', '2000'));
const BIN = opt('--bin', process.env.RAMPART_BIN || join(repo, 'target/release/rampart'));
const TOKEN = 'ttm-admin-token-0123456789abcdef';
const FLAG = 'registration_cn_mobile_only';
const FLOOD_MAX_MS = 60_000;
const STEP_TIMEOUT_MS = 30_000;

if (!existsSync(BIN)) {
  console.error(`no rampart binary at ${BIN}: cargo build --release -p rampart, or give --bin`);
  process.exit(64);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

// The demo origins: health checks, and an auth service that answers logins
// and registrations.
function startOrigin() {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok\n');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"result":"ok"}\n');
    });
  });
  server.keepAliveTimeout = 65_000;
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

function configText(ports, origins, fleet) {
  let text = readFileSync(join(repo, 'conf/rampart.toml'), 'utf8');
  const swaps = [
    ['address = "127.0.0.1:8080"', `address = "127.0.0.1:${ports.listen}"`],
    ['address = "127.0.0.1:9901"', `address = "127.0.0.1:${ports.admin}"`],
    ['servers = ["127.0.0.1:9001"]', `servers = ["127.0.0.1:${origins.chat}"]`],
    ['servers = ["127.0.0.1:9002"]', `servers = ["127.0.0.1:${origins.auth}"]`],
    ['trusted_proxies = []', 'trusted_proxies = ["127.0.0.0/8"]'],
    ['enabled = true                      # default false', 'enabled = false'],
  ];
  for (const [from, to] of swaps) {
    if (!text.includes(from)) throw new Error(`conf/rampart.toml no longer contains ${from}`);
    text = text.replace(from, to);
  }
  if (fleet) {
    text += `\n[fleet]\nredis_url = "redis://127.0.0.1:${fleet.port}/0"\nkey_prefix = "ttm:"\nnode = "${fleet.node}"\n`;
  }
  return text;
}

const children = [];
function cleanup() {
  for (const c of children) {
    try { c.kill('SIGKILL'); } catch (_) { /* gone */ }
  }
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

async function waitFor(what, check, timeoutMs = STEP_TIMEOUT_MS, every = 20) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try { if (await check()) return; } catch (_) { /* not yet */ }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(every);
  }
}

async function startNode(dir, name, origins, fleet) {
  const ports = { listen: await freePort(), admin: await freePort() };
  const path = join(dir, `${name}.toml`);
  writeFileSync(path, configText(ports, origins, fleet && { ...fleet, node: name }));
  const child = spawn(BIN, ['run', '--config', path], {
    env: { ...process.env, RAMPART_ADMIN_TOKEN: TOKEN, RUST_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  children.push(child);
  const node = {
    name, child,
    public: `http://127.0.0.1:${ports.listen}`,
    admin: `http://127.0.0.1:${ports.admin}`,
  };
  await waitFor(`${name} ready`, async () => (await fetch(`${node.admin}/readyz`)).status === 200, 30_000, 100);
  return node;
}

async function api(node, method, path, body) {
  const r = await fetch(node.admin + path, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(data)}`);
  return data;
}

const last = (a) => (a.length ? a[a.length - 1] : 0);

// The flood: +1 registrations from rotating carrier addresses at RATE/s, split
// over the nodes, and 5/s legitimate +86 mobile registrations. Bounded in time.
function flood(nodes) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const state = {
    sent: 0, proxied: 0, refused: 0, errors: 0, firstRefusalAt: new Map(),
    legit: { sent: 0, ok: 0 }, stop: false, inflight: 0,
  };
  let i = 0;
  const send = (node, phone, legit) => {
    i += 1;
    const ip = `100.${64 + ((i >> 16) & 63)}.${(i >> 8) & 255}.${i & 255}`;
    const body = JSON.stringify({ name: 'x', phone });
    state.inflight += 1;
    const req = http.request(`${node.public}/api/auth/register`, {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-forwarded-for': ip },
    }, (res) => {
      res.resume();
      res.on('end', () => {
        state.inflight -= 1;
        if (legit) {
          state.legit.ok += res.statusCode === 200 ? 1 : 0;
          return;
        }
        if (res.statusCode === 200) state.proxied += 1;
        else if (res.statusCode === 403) {
          state.refused += 1;
          if (!state.firstRefusalAt.has(node.name)) state.firstRefusalAt.set(node.name, Date.now());
        } else state.errors += 1;
      });
    });
    req.on('error', () => { state.inflight -= 1; state.errors += 1; });
    req.end(body);
    if (legit) state.legit.sent += 1; else state.sent += 1;
  };
  const start = Date.now();
  const tickMs = 10;
  let due = 0;
  let legitDue = 0;
  const timer = setInterval(() => {
    if (state.stop || Date.now() - start > FLOOD_MAX_MS) {
      clearInterval(timer);
      state.stop = true;
      return;
    }
    due += (RATE * tickMs) / 1000;
    legitDue += (5 * tickMs) / 1000;
    while (due >= 1) {
      due -= 1;
      if (state.inflight < 256) send(nodes[state.sent % nodes.length], '+1 415 555 0100', false);
    }
    while (legitDue >= 1) {
      legitDue -= 1;
      send(nodes[state.legit.sent % nodes.length], '+86 138 0013 8000', true);
    }
  }, tickMs);
  state.started = start;
  state.finish = () => { state.stop = true; clearInterval(timer); agent.destroy(); };
  return state;
}

async function round(n) {
  const dir = mkdtempSync(join(tmpdir(), 'rampart-ttm-'));
  const chat = await startOrigin();
  const auth = await startOrigin();
  const origins = { chat: chat.address().port, auth: auth.address().port };
  let redis = null;
  let fleet = null;
  if (FLEET) {
    const port = await freePort();
    redis = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
    children.push(redis);
    fleet = { port };
    await waitFor('redis', () => new Promise((ok) => {
      const s = net.connect(port, '127.0.0.1', () => { s.end(); ok(true); });
      s.on('error', () => ok(false));
    }), 10_000, 50);
  }
  const nodes = [];
  for (const name of FLEET ? ['edge-1', 'edge-2'] : ['edge-1']) nodes.push(await startNode(dir, name, origins, fleet));
  const operator = nodes[0];
  if (FLEET) {
    await waitFor('both nodes in the fleet view', async () => (await api(operator, 'GET', '/fleet')).nodes?.length === nodes.length, 20_000, 200);
  }

  const steps = [];
  const state = flood(nodes);
  const t0 = state.started;
  const mark = (name, at = Date.now()) => {
    steps.push({ step: name, s: (at - t0) / 1000 });
  };
  const rates = () => api(operator, 'GET', '/console/api/rates');
  const pollRates = (what, check) => waitFor(what, async () => check(await rates()), STEP_TIMEOUT_MS, POLL_MS);
  const floodVisible = RATE / nodes.length / 2;
  try {
    // 1. The flood shows in the console's rates (node 1's own traffic).
    await pollRates('the flood in the rates', (r) => r.requests.some((s) => s.route === 'register' && s.verdict === 'proxied' && last(s.rates) >= floodVisible));
    mark('flood seen in rates');
    // 2. Preview.
    await api(operator, 'PUT', `/lockdown/${FLAG}`, { mode: 'preview', ttl: '30m', reason: 'signup flood from +1 numbers', actor: 'ttm' });
    mark('preview applied (API answered)');
    // 3. Its would-refuse counter.
    await pollRates('the preview counter', (r) => r.previews.some((p) => p.flag === FLAG && last(p.rates) > 0));
    mark('would-refuse counter seen');
    // 4. Enforce with a TTL.
    await api(operator, 'PUT', `/lockdown/${FLAG}`, { mode: 'enforce', ttl: '2h', reason: 'signup flood, INC-1', actor: 'ttm' });
    mark('enforced with TTL (API answered)');
    const watchers = [];
    if (FLEET) {
      // Every node enforces: each node's own /lockdown.
      watchers.push(Promise.all(nodes.map(async (node) => {
        await waitFor(`${node.name} enforcing`, async () => (await api(node, 'GET', '/lockdown')).flags.some((f) => f.name === FLAG && f.mode === 'enforce'));
        return [node.name, Date.now()];
      })).then((list) => {
        for (const [name, at] of list) mark(`${name} enforces`, at);
        mark('every node enforces', Math.max(...list.map(([, at]) => at)));
      }));
      // What the operator sees: node 1's fleet view.
      watchers.push(waitFor('the fleet view', async () => {
        const f = await api(operator, 'GET', '/fleet');
        return f.nodes.length === nodes.length && f.nodes.every((x) => x.flags?.[FLAG]?.mode === 'enforce');
      }, STEP_TIMEOUT_MS, 250).then(() => mark('fleet view shows every node enforcing')));
    }
    // 5. Refusals at the edge and in the console.
    watchers.push(waitFor('refusals at the edge', async () => state.firstRefusalAt.size === nodes.length).then(() => {
      for (const [name, at] of state.firstRefusalAt) mark(`first flood 403 from ${name}`, at);
    }));
    watchers.push(pollRates('refusals in the rates', (r) => r.refusals.some((s) => s.rule === FLAG && last(s.rates) > 0))
      .then(() => mark('refusals seen in rates')));
    await Promise.all(watchers);
    await api(operator, 'DELETE', `/lockdown/${FLAG}`, { actor: 'ttm', reason: 'measurement over' });
  } finally {
    state.finish();
  }
  steps.sort((a, b) => a.s - b.s);
  const result = {
    round: n, mode: FLEET ? 'fleet (2 nodes, Redis)' : 'single node', rate: RATE, poll_ms: POLL_MS, steps,
    flood: { sent: state.sent, proxied: state.proxied, refused: state.refused, errors: state.errors },
    legit: state.legit,
  };
  for (const c of children.splice(0)) c.kill('SIGKILL');
  chat.close();
  auth.close();
  chat.closeAllConnections();
  auth.closeAllConnections();
  await sleep(300);
  rmSync(dir, { recursive: true, force: true });
  return result;
}

const results = [];
for (let n = 1; n <= ROUNDS; n++) {
  const r = await round(n);
  results.push(r);
  console.log(`\n== round ${n}, ${r.mode}, flood ${RATE}/s, console polled every ${POLL_MS} ms`);
  let prev = 0;
  for (const s of r.steps) {
    console.log(`${s.s.toFixed(2).padStart(7)} s  (+${(s.s - prev).toFixed(2)})  ${s.step}`);
    prev = Math.max(prev, s.s);
  }
  const at = (name) => r.steps.find((s) => s.step === name)?.s;
  const seen = at('flood seen in rates');
  const enforced = at('enforced with TTL (API answered)');
  console.log(`attack seen → enforced with a TTL: ${(enforced - seen).toFixed(2)} s of machine time (+ the operator's reading and typing)`);
  if (FLEET) console.log(`enforce answered → every node enforces: ${((at('every node enforces') - enforced) * 1000).toFixed(0)} ms`);
  console.log(`flood: ${r.flood.sent} sent, ${r.flood.proxied} reached the origin, ${r.flood.refused} refused, ${r.flood.errors} errors; legitimate +86: ${r.legit.ok}/${r.legit.sent} served`);
}
if (ROUNDS > 1) {
  const names = [...new Set(results.flatMap((r) => r.steps.map((s) => s.step)))];
  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
  console.log(`\n== medians of ${ROUNDS} rounds (seconds from the flood's start)`);
  for (const name of names) {
    const xs = results.map((r) => r.steps.find((s) => s.step === name)?.s).filter((x) => x !== undefined);
    console.log(`${median(xs).toFixed(2).padStart(7)} s  ${name}   (${xs.map((x) => x.toFixed(2)).join(', ')})`);
  }
}
console.log(JSON.stringify({ results }));
process.exit(0);
