// Rampart's operator console. Plain JavaScript, no library: it polls the admin
// API every 2 s with the bearer token kept in sessionStorage, draws SVG charts,
// and changes lockdown flags through the same API as the CLI. Everything that
// comes from the server is written with textContent, never as HTML.
(() => {
  'use strict';

  const TOKEN_KEY = 'rampart.console.token';
  const ACTOR_KEY = 'rampart.console.actor';
  const REFRESH_MS = 2000;
  const SVG = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#4c8dff', '#3fb27f', '#e5534b', '#e0a43a', '#b083f0', '#39c5cf',
    '#f778ba', '#a5d6ff', '#d29922', '#8ddb8c', '#ff9492', '#c9d1d9'];
  const $ = (id) => document.getElementById(id);

  let timer = null;
  let refreshing = false; // one refresh at a time
  let again = false; // asked for while one was running
  let generation = 0; // bumps on sign-out, so late answers of a session are dropped
  let skewMs = 0; // server clock minus ours
  let lastRates = null;
  let lastFlags = null;

  // ---- small helpers -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-')) node.setAttribute(k, String(v));
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    return node;
  }

  function badge(text, kind) {
    return el('span', { class: 'badge ' + (kind || ''), text });
  }

  function fmtRate(x) {
    if (!x) return '0';
    if (x < 10) return x.toFixed(1);
    return Math.round(x).toLocaleString('en');
  }

  function fmtCount(n) {
    return Math.round(n || 0).toLocaleString('en');
  }

  function fmtDuration(ms) {
    let s = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function fmtTime(ms) {
    return new Date(ms).toLocaleTimeString('en-GB', { hour12: false });
  }

  function serverNow() {
    return Date.now() + skewMs;
  }

  function colorOf(name) {
    let h = 2166136261;
    for (let i = 0; i < name.length; i++) {
      h ^= name.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return PALETTE[(h >>> 0) % PALETTE.length];
  }

  function emptyRow(tbody, columns, text) {
    tbody.replaceChildren(el('tr', {}, el('td', { class: 'empty', colSpan: columns, text })));
  }

  // ---- the API -------------------------------------------------------------

  class AuthError extends Error {}

  async function api(method, path, options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError('no token');
    const mine = generation;
    const headers = { Authorization: 'Bearer ' + token };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
    if (options && options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(options.json);
    } else if (options && options.raw !== undefined) {
      headers['Content-Type'] = options.contentType || 'application/json';
      init.body = options.raw;
    }
    const response = await fetch(path, init);
    if (mine !== generation) throw new AuthError('signed out');
    if (response.status === 401) {
      signOut('The admin API refused the token.');
      throw new AuthError('refused');
    }
    const text = await response.text();
    let data;
    try { data = JSON.parse(text); } catch (_) { data = { detail: text }; }
    if (!response.ok) {
      const error = new Error(data.detail || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  // ---- sign in and out -----------------------------------------------------

  function showLogin(message, note) {
    $('dashboard').hidden = true;
    $('sign-out').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-error').className = note ? 'muted' : 'error';
    $('token').value = '';
    $('token').focus();
  }

  function clearData() {
    // Nothing fetched with a token stays on the page once it is gone.
    for (const id of ['rate-chart', 'rate-legend', 'refusal-chart', 'pool-list', 'fleet-summary',
      'explain-result', 'summary', 'offender-window', 'updated']) {
      $(id).replaceChildren();
    }
    for (const tbody of document.querySelectorAll('#dashboard tbody')) {
      tbody.replaceChildren();
      tbody.removeAttribute('data-names');
    }
    $('error-banner').hidden = true;
    lastRates = null;
    lastFlags = null;
  }

  function signOut(message, note) {
    generation += 1;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ACTOR_KEY);
    if (timer) clearTimeout(timer);
    timer = null;
    again = false;
    clearData();
    showLogin(message, note);
  }

  async function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    generation += 1;
    try {
      await api('GET', '/status');
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (!(e instanceof AuthError)) showLogin('Cannot reach the admin API: ' + e.message);
      return;
    }
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = false;
    refresh();
  }

  function actor() {
    return sessionStorage.getItem(ACTOR_KEY) || 'console';
  }

  // ---- polling -------------------------------------------------------------

  // Fetches everything and redraws, then schedules the next refresh. A call
  // while one runs is folded into one more right after it.
  async function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    again = false;
    if (timer) clearTimeout(timer);
    timer = null;
    const mine = generation;
    try {
      await load(mine);
    } finally {
      refreshing = false;
    }
    if (again) refresh();
    else if (mine === generation && sessionStorage.getItem(TOKEN_KEY)) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function load(mine) {
    const calls = {
      rates: api('GET', '/console/api/rates'),
      status: api('GET', '/status'),
      lockdown: api('GET', '/lockdown'),
      top: api('GET', '/debug/top?n=10'),
      bans: api('GET', '/bans'),
      fleet: api('GET', '/fleet'),
    };
    const names = Object.keys(calls);
    const results = await Promise.allSettled(Object.values(calls));
    if (mine !== generation) return;
    const got = {};
    const problems = [];
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') got[names[i]] = r.value;
      else if (!(r.reason instanceof AuthError)) problems.push(`${names[i]}: ${r.reason.message}`);
    });
    if (results.some((r) => r.status === 'rejected' && r.reason instanceof AuthError)) return;
    const banner = $('error-banner');
    banner.hidden = problems.length === 0;
    banner.textContent = problems.length ? 'Some data could not be fetched: ' + problems.join('; ') : '';
    const renderers = [
      ['rates', renderRates], ['status', renderStatus], ['lockdown', renderFlags],
      ['top', renderTop], ['bans', renderBans], ['fleet', renderFleet],
    ];
    for (const [name, render] of renderers) {
      if (!(name in got)) continue;
      try { render(got[name]); } catch (e) { console.error(name, e); }
    }
    if (Object.keys(got).length) renderSummary(got);
    $('updated').textContent = (problems.length === names.length ? 'update failed ' : 'updated ') + fmtTime(Date.now());
  }

  // ---- charts --------------------------------------------------------------

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // Draws a line chart of `series` ({key, label, values, color, dashed}) over
  // `times` (ms) into `box`, with a hover read-out.
  function lineChart(box, times, series, nowMs, windowSec) {
    const width = Math.max(box.clientWidth, 320);
    const height = Math.max(box.clientHeight, 120);
    const m = { l: 44, r: 10, t: 8, b: 20 };
    const w = width - m.l - m.r;
    const h = height - m.t - m.b;
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img' });
    const t0 = nowMs - windowSec * 1000;
    const x = (t) => m.l + Math.max(0, Math.min(1, (t - t0) / (windowSec * 1000))) * w;
    let max = 0;
    for (const s of series) for (const v of s.values) if (v > max) max = v;
    const top = niceMax(max);
    const y = (v) => m.t + h - (v / top) * h;
    for (let i = 0; i <= 5; i++) {
      const v = (top * i) / 5;
      root.append(svg('line', { class: 'grid', x1: m.l, x2: m.l + w, y1: y(v), y2: y(v) }));
      root.append(svg('text', { class: 'axis', x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end', text: fmtRate(v) }));
    }
    for (let min = 0; min <= windowSec / 60; min++) {
      const t = nowMs - min * 60000;
      root.append(svg('text', {
        class: 'axis', x: x(t), y: height - 4, 'text-anchor': min === 0 ? 'end' : 'middle',
        text: min === 0 ? 'now' : `-${min}m`,
      }));
    }
    let total = 0;
    for (const s of series) {
      const points = s.values.map((v, i) => `${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      const line = svg('polyline', { class: 'series' + (s.dashed ? ' dashed' : ''), points, stroke: s.color });
      line.setAttribute('data-series', s.key);
      line.setAttribute('data-last', s.values.length ? s.values[s.values.length - 1] : 0);
      root.append(line);
      total += s.values.length ? s.values[s.values.length - 1] : 0;
    }
    if (!series.length) {
      root.append(svg('text', { class: 'nodata', x: m.l + w / 2, y: m.t + h / 2, 'text-anchor': 'middle', text: 'no traffic in the last 5 minutes' }));
    }
    const cursor = svg('line', { class: 'cursor', x1: 0, x2: 0, y1: m.t, y2: m.t + h, visibility: 'hidden' });
    root.append(cursor);
    const overlay = svg('rect', { x: m.l, y: m.t, width: w, height: h, fill: 'transparent' });
    root.append(overlay);
    const tip = $('tooltip');
    overlay.addEventListener('mousemove', (ev) => {
      if (!times.length) return;
      const rect = root.getBoundingClientRect();
      const px = ((ev.clientX - rect.left) / rect.width) * width;
      let best = 0;
      for (let i = 1; i < times.length; i++) if (Math.abs(x(times[i]) - px) < Math.abs(x(times[best]) - px)) best = i;
      cursor.setAttribute('x1', x(times[best]));
      cursor.setAttribute('x2', x(times[best]));
      cursor.setAttribute('visibility', 'visible');
      const rows = series
        .map((s) => [s, s.values[best] || 0])
        .filter(([, v]) => v > 0)
        .sort((a, b) => b[1] - a[1])
        .map(([s, v]) => el('div', { text: `${s.label}: ${fmtRate(v)}/s` }));
      tip.replaceChildren(el('div', { class: 'muted', text: fmtTime(times[best]) }), ...(rows.length ? rows : [el('div', { text: 'nothing' })]));
      tip.hidden = false;
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 380) + 'px';
      tip.style.top = ev.clientY + 14 + 'px';
    });
    overlay.addEventListener('mouseleave', () => {
      tip.hidden = true;
      cursor.setAttribute('visibility', 'hidden');
    });
    box.setAttribute('data-series-count', series.length);
    box.setAttribute('data-last-total', Math.round(total * 100) / 100);
    box.setAttribute('data-samples', times.length);
    box.replaceChildren(root);
  }

  // ---- renderers -------------------------------------------------------------

  const MAX_LINES = 8;

  function renderRates(rates) {
    lastRates = rates;
    skewMs = rates.now_ms - Date.now();
    const times = rates.times_ms;
    const sum = (values) => values.reduce((a, b) => a + b, 0);
    // The busiest series get their own line; the rest are added up as "other".
    const all = rates.requests
      .map((r) => ({
        key: `${r.route} ${r.verdict}`,
        label: `${r.route} · ${r.verdict}`,
        values: r.rates,
        color: colorOf(`${r.route} ${r.verdict}`),
        dashed: r.verdict !== 'proxied',
        volume: sum(r.rates),
      }))
      .sort((a, b) => b.volume - a.volume);
    const lines = all.slice(0, MAX_LINES);
    if (all.length > MAX_LINES) {
      const rest = all.slice(MAX_LINES);
      lines.push({
        key: 'other', label: `other (${rest.length})`, color: '#6e7681', dashed: true,
        values: times.map((_, i) => rest.reduce((a, s) => a + (s.values[i] || 0), 0)),
      });
    }
    lineChart($('rate-chart'), times, lines, rates.now_ms, rates.window_seconds);
    $('rate-legend').replaceChildren(...lines.map((s) => {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = s.color;
      return el('li', { 'data-series': s.key }, swatch, s.label,
        el('span', { class: 'value', text: `${fmtRate(s.values[s.values.length - 1] || 0)}/s` }));
    }));

    const refusals = rates.refusals
      .map((r) => ({
        key: `${r.rule} ${r.reason}`, label: `${r.rule} (${r.reason})`, values: r.rates,
        color: colorOf(r.rule), rule: r.rule, reason: r.reason,
        now: r.rates[r.rates.length - 1] || 0,
        window: sum(r.rates) * rates.interval_seconds,
      }))
      .sort((a, b) => b.window - a.window);
    lineChart($('refusal-chart'), times, refusals.slice(0, MAX_LINES), rates.now_ms, rates.window_seconds);
    const tbody = $('refusal-table').tBodies[0];
    if (!refusals.length) emptyRow(tbody, 4, 'no refusals in the last 5 minutes');
    else {
      tbody.replaceChildren(...refusals.map((r) => {
        const swatch = el('span', { class: 'swatch' });
        swatch.style.background = r.color;
        return el('tr', { 'data-rule': r.rule },
          el('td', {}, r.rule), el('td', { text: r.reason }),
          el('td', { class: 'num now', text: fmtRate(r.now) }),
          el('td', { class: 'num', text: fmtCount(r.window) }));
      }));
    }
    if (lastFlags) renderFlagEffects();
  }

  function renderSummary(got) {
    const items = [];
    if (got.lockdown) items.push(badge('node ' + got.lockdown.node));
    if (got.status) {
      items.push(badge('config generation ' + got.status.generation));
      items.push(got.status.ready ? badge('ready', 'ok') : badge('not ready', 'warn'));
      const servers = got.status.pools.flatMap((p) => p.servers);
      const down = servers.filter((s) => !s.healthy).length;
      items.push(down ? badge(`${down} of ${servers.length} servers down`, 'bad') : badge(`${servers.length} servers healthy`, 'ok'));
    }
    if (got.lockdown) {
      const on = got.lockdown.flags.filter((f) => f.active);
      for (const f of on) items.push(badge(`${f.name}: ${f.mode}`, f.mode === 'enforce' ? 'bad' : 'warn'));
      if (!on.length) items.push(badge('no flag on', 'off'));
    }
    if (got.fleet && got.fleet.mode === 'fleet') {
      items.push(got.fleet.degraded ? badge('fleet degraded', 'bad') : badge('fleet connected', 'ok'));
    }
    if (got.rates) {
      const total = got.rates.requests.reduce((a, r) => a + (r.rates[r.rates.length - 1] || 0), 0);
      items.push(badge(`${fmtRate(total)} req/s`));
    }
    $('summary').replaceChildren(...items);
  }

  // Flag rows are built once per set of flags and then updated in place, so
  // that what an operator is typing survives the refresh.
  function renderFlags(lockdown) {
    lastFlags = lockdown;
    const tbody = $('flag-table').tBodies[0];
    const names = lockdown.flags.map((f) => f.name).join('\n');
    if (tbody.getAttribute('data-names') !== names) {
      tbody.replaceChildren(...lockdown.flags.map(flagRow));
      tbody.setAttribute('data-names', names);
      if (!lockdown.flags.length) emptyRow(tbody, 6, 'the config defines no lockdown flag');
    }
    for (const f of lockdown.flags) {
      const row = tbody.querySelector(`tr[data-flag="${CSS.escape(f.name)}"]`);
      if (!row) continue;
      const mode = f.active ? f.mode : 'off';
      row.setAttribute('data-mode', mode);
      row.className = f.active ? 'active-' + f.mode : '';
      const state = row.querySelector('.state');
      state.replaceChildren(mode === 'enforce' ? badge('enforced', 'bad') : mode === 'preview' ? badge('preview', 'warn') : badge('off', 'off'));
      row.querySelector('.who').replaceChildren(...(f.active ? [
        el('div', { text: f.actor }),
        el('div', { class: 'desc', text: f.reason }),
        el('div', { class: 'desc', text: 'since ' + fmtTime(f.since_ms) }),
      ] : []));
      const expires = row.querySelector('.expires');
      if (!f.active) expires.textContent = '';
      else if (f.expires_ms) {
        expires.textContent = 'in ' + fmtDuration(f.expires_ms - serverNow());
        expires.title = new Date(f.expires_ms).toString();
      } else expires.replaceChildren(badge('no expiry', 'warn'));
    }
    renderFlagEffects();
  }

  // What each active flag does: refusals per second when enforced; when
  // previewed, how many requests it would have refused since it was turned on.
  function renderFlagEffects() {
    if (!lastFlags) return;
    const tbody = $('flag-table').tBodies[0];
    for (const f of lastFlags.flags) {
      const row = tbody.querySelector(`tr[data-flag="${CSS.escape(f.name)}"]`);
      if (!row) continue;
      const cell = row.querySelector('.effect');
      if (!f.active || !lastRates) {
        cell.replaceChildren();
        cell.removeAttribute('data-count');
        continue;
      }
      const times = lastRates.times_ms;
      const since = (values) => values.reduce((a, v, i) => a + (times[i] > f.since_ms ? v * lastRates.interval_seconds : 0), 0);
      if (f.mode === 'preview') {
        const p = lastRates.previews.find((x) => x.flag === f.name);
        const count = p ? Math.round(since(p.rates)) : 0;
        const now = p ? p.rates[p.rates.length - 1] || 0 : 0;
        cell.setAttribute('data-count', count);
        cell.replaceChildren(el('div', { class: 'would-refuse', text: `would refuse ${fmtCount(count)}` }),
          el('div', { class: 'desc', text: `since preview (last 5 min), ${fmtRate(now)}/s now` }));
      } else {
        const rows = lastRates.refusals.filter((x) => x.rule === f.name);
        const count = Math.round(rows.reduce((a, r) => a + since(r.rates), 0));
        const now = rows.reduce((a, r) => a + (r.rates[r.rates.length - 1] || 0), 0);
        cell.setAttribute('data-count', count);
        cell.replaceChildren(el('div', { class: 'refusing', text: `refused ${fmtCount(count)}` }),
          el('div', { class: 'desc', text: `since enforced (last 5 min), ${fmtRate(now)}/s now` }));
      }
    }
  }

  function flagRow(f) {
    const ttl = el('input', { name: 'ttl', type: 'text', value: '30m', title: 'TTL: 90s, 30m, 2h, 1d, or none', spellcheck: false });
    const reason = el('input', { name: 'reason', type: 'text', placeholder: 'reason (ticket, what you saw)', spellcheck: false });
    const msg = el('div', { class: 'flag-msg', role: 'status' });
    const button = (action, text, kind) => el('button', { type: 'button', class: kind, 'data-action': action, text });
    const controls = el('div', { class: 'controls' },
      ttl, reason, button('preview', 'Preview', 'warn'), button('enforce', 'Enforce', 'bad'), button('disable', 'Disable'));
    controls.addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (b) changeFlag(f.name, b.getAttribute('data-action'), ttl, reason, msg, controls);
    });
    return el('tr', { 'data-flag': f.name },
      el('td', {}, el('div', { text: f.name }), el('div', { class: 'desc', text: f.description || '' })),
      el('td', { class: 'state' }), el('td', { class: 'who' }), el('td', { class: 'expires' }),
      el('td', { class: 'effect' }), el('td', {}, controls, msg));
  }

  async function changeFlag(name, action, ttlInput, reasonInput, msg, controls) {
    const reason = reasonInput.value.trim();
    const ttl = ttlInput.value.trim();
    msg.className = 'flag-msg';
    if (action !== 'disable') {
      if (!reason) {
        msg.className = 'flag-msg error';
        msg.textContent = 'Give a reason: it goes to the audit log.';
        reasonInput.focus();
        return;
      }
      if (!ttl) {
        msg.className = 'flag-msg error';
        msg.textContent = 'Give a TTL (e.g. 30m, 2h) or "none".';
        ttlInput.focus();
        return;
      }
    }
    const buttons = controls.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    msg.textContent = action === 'disable' ? 'Disabling…' : `${action === 'preview' ? 'Previewing' : 'Enforcing'}…`;
    try {
      const path = '/lockdown/' + encodeURIComponent(name);
      let answer;
      if (action === 'disable') {
        answer = await api('DELETE', path, { json: { actor: actor(), reason: reason || 'turned off in the console' } });
        msg.textContent = answer.was_active ? 'Disabled.' : 'Was already off.';
      } else {
        answer = await api('PUT', path, { json: { mode: action, ttl, reason, actor: actor() } });
        msg.textContent = `${answer.mode === 'enforce' ? 'Enforced' : 'Previewing'}${answer.expires_ms ? ' until ' + fmtTime(answer.expires_ms) : ', no expiry'}.`;
      }
      if (answer.persisted === false) msg.textContent += ' Not written to the state file: check the log.';
    } catch (e) {
      if (e instanceof AuthError) return;
      msg.className = 'flag-msg error';
      msg.textContent = e.message;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
    refresh();
  }

  function renderTop(top) {
    $('offender-window').textContent = `refused requests, last ${Math.round(top.window_seconds / 60)} min`;
    const as = (r) => (r.asn ? [el('div', { text: `AS${r.asn}` }), r.as_organization ? el('div', { class: 'sub', text: r.as_organization }) : null] : []);
    const fill = (id, rows, cells, columns) => {
      const tbody = $(id).tBodies[0];
      if (!rows.length) emptyRow(tbody, columns, 'none');
      else tbody.replaceChildren(...rows.map((r) => el('tr', {}, ...cells(r))));
    };
    const source = (r) => [el('td', { class: 'key', text: r.key }), el('td', { text: r.country || '' }),
      el('td', {}, ...as(r)), el('td', { class: 'num', text: fmtCount(r.rejected) })];
    fill('top-ips', top.ips, source, 4);
    fill('top-prefixes', top.prefixes, source, 4);
    fill('top-asns', top.asns, (r) => [el('td', { class: 'key', text: r.key }), el('td', { text: r.as_organization || '' }), el('td', { class: 'num', text: fmtCount(r.rejected) })], 3);
  }

  function renderBans(data) {
    const tbody = $('ban-table').tBodies[0];
    const bans = data.bans || [];
    if (!bans.length) {
      emptyRow(tbody, 5, 'no active ban');
      return;
    }
    tbody.replaceChildren(...bans.slice(0, 50).map((b) => {
      const lift = el('button', { type: 'button', text: 'Lift' });
      lift.addEventListener('click', async () => {
        lift.disabled = true;
        try {
          await api('DELETE', `/bans/${encodeURIComponent(b.rule)}?key=${encodeURIComponent(b.key)}`);
        } catch (e) {
          if (!(e instanceof AuthError)) lift.title = e.message;
        }
        refresh();
      });
      return el('tr', {}, el('td', { text: b.rule }), el('td', { text: b.key }),
        el('td', { class: 'num', text: fmtDuration(b.remaining_seconds * 1000) }),
        el('td', { class: 'num', text: b.offenses }), el('td', {}, lift));
    }));
  }

  function renderStatus(status) {
    $('pool-list').replaceChildren(...status.pools.map((p) => {
      const healthy = p.servers.filter((s) => s.healthy).length;
      const tbody = el('tbody', {}, ...p.servers.map((s) => el('tr', {},
        el('td', { text: s.address }),
        el('td', {}, !s.probed ? badge('not probed yet', 'warn') : s.healthy ? badge('healthy', 'ok') : badge('down', 'bad')))));
      return el('div', { class: 'pool', 'data-pool': p.name },
        el('h3', {}, p.name + ' ', healthy ? badge(`${healthy}/${p.servers.length} up`, healthy === p.servers.length ? 'ok' : 'warn') : badge('no healthy server', 'bad')),
        el('table', {}, tbody));
    }));
  }

  function renderFleet(fleet) {
    const summary = $('fleet-summary');
    const tbody = $('fleet-table').tBodies[0];
    if (fleet.mode !== 'fleet') {
      summary.replaceChildren(el('p', { class: 'muted', text: `Single node (${fleet.node}): no [fleet] section, flags and limits are local.` }));
      tbody.replaceChildren();
      $('fleet-table').hidden = true;
      return;
    }
    $('fleet-table').hidden = false;
    const facts = el('dl', { class: 'facts' });
    const fact = (k, v) => facts.append(el('dt', { text: k }), el('dd', {}, v));
    fact('this node', fleet.node);
    fact('Redis', fleet.redis);
    fact('state', fleet.degraded ? badge('degraded: Redis unreachable, last known flags', 'bad') : badge('connected', 'ok'));
    fact('last sync lag', `${Math.round((fleet.sync_lag_seconds || 0) * 1000)} ms`);
    fact('escalation leader', fleet.leader || 'none');
    const parts = [facts];
    if (fleet.error) parts.push(el('p', { class: 'error', text: fleet.error }));
    summary.replaceChildren(...parts);
    const nodes = fleet.nodes || [];
    if (!nodes.length) {
      emptyRow(tbody, 3, 'no node has reported yet');
      return;
    }
    tbody.replaceChildren(...nodes.map((n) => {
      const flags = Object.entries(n.flags || {});
      return el('tr', { 'data-node': n.node },
        el('td', {}, n.node + (n.node === fleet.node ? ' (this one)' : '')),
        el('td', {}, n.stale ? badge(`${fmtDuration(n.seconds_since_report * 1000)} ago`, 'bad') : `${fmtDuration(n.seconds_since_report * 1000)} ago`),
        el('td', {}, ...(flags.length ? flags.map(([name, a]) => badge(`${name}: ${a.mode}`, a.mode === 'enforce' ? 'bad' : 'warn')) : [el('span', { class: 'muted', text: 'none' })])));
    }));
  }

  // ---- explain ---------------------------------------------------------------

  async function explain(form) {
    const out = $('explain-result');
    const data = new FormData(form);
    const params = new URLSearchParams({
      ip: data.get('ip').trim(), path: data.get('path').trim() || '/', method: data.get('method'),
    });
    const body = data.get('body').trim();
    out.replaceChildren(el('p', { class: 'muted', text: 'Asking…' }));
    try {
      const r = body
        ? await api('POST', '/debug/explain?' + params, { raw: body, contentType: 'application/json' })
        : await api('GET', '/debug/explain?' + params);
      const facts = el('dl', { class: 'facts' });
      const fact = (k, v) => { if (v !== null && v !== undefined && v !== '') facts.append(el('dt', { text: k }), el('dd', { text: String(v) })); };
      fact('address', r.ip);
      fact('country', r.country);
      fact('AS', r.asn ? `AS${r.asn}${r.as_organization ? ' ' + r.as_organization : ''}` : null);
      fact('route', r.route || '(none)');
      fact('pool', r.pool);
      fact('path', r.path);
      fact('rule', r.rule);
      fact('detail', r.detail);
      fact('allowed by', r.allowed_by);
      for (const o of r.observations || []) fact(o.kind, o.rule || o.flag);
      const refused = r.verdict !== 'proxied';
      const trace = el('table', {},
        el('thead', {}, el('tr', {}, ...['rule', 'kind', 'key', 'outcome', 'detail'].map((t) => el('th', { text: t })))),
        el('tbody', {}, ...(r.rules || []).map((x) => el('tr', {},
          el('td', { text: x.name }), el('td', { text: x.kind }), el('td', { text: x.key || '' }),
          el('td', {}, x.outcome === 'refused' ? badge('refused', 'bad') : x.outcome === 'observed' ? badge('observed', 'warn') : x.outcome),
          el('td', { text: x.detail || '' })))));
      out.replaceChildren(
        el('div', { class: 'verdict', 'data-verdict': r.verdict }, refused ? badge(`${r.status} ${r.verdict}`, 'bad') : badge('proxied', 'ok')),
        facts, trace);
    } catch (e) {
      if (e instanceof AuthError) return;
      out.replaceChildren(el('p', { class: 'error', text: e.message }));
    }
  }

  // ---- wiring ------------------------------------------------------------------

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    const name = $('actor').value.trim();
    if (name) sessionStorage.setItem(ACTOR_KEY, name);
    else sessionStorage.removeItem(ACTOR_KEY);
    $('token').value = '';
    if (token) signIn(token);
  });
  $('sign-out').addEventListener('click', () => signOut('Signed out.', true));
  $('explain-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    explain(ev.target);
  });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (lastRates) renderRates(lastRates); }, 150);
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showLogin('');
})();
