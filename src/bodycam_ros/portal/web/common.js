// bodycam agency portal: what every page shares (API calls with the CSRF token, the header,
// formatting). Plain browser JavaScript, no library, no external request.
'use strict';

const Portal = (() => {
  const CSRF_KEY = 'bodycam.csrf';
  let me = null;

  function toLogin() {
    const next = location.pathname + location.search;
    location.href = '/login?next=' + encodeURIComponent(next);
  }

  // fetch() on the portal: same-origin cookie, the CSRF header on every state change,
  // a 401 sends the browser to the login page.
  async function api(path, opts = {}) {
    const o = { credentials: 'same-origin', ...opts, headers: { ...(opts.headers || {}) } };
    const method = (o.method || 'GET').toUpperCase();
    if (!['GET', 'HEAD', 'OPTIONS'].includes(method)) {
      o.headers['X-CSRF-Token'] = sessionStorage.getItem(CSRF_KEY) || (me && me.csrf) || '';
    }
    const r = await fetch(path, o);
    if (r.status === 401) {
      toLogin();
      throw new Error('login required');
    }
    return r;
  }

  async function json(path, opts) {
    const r = await api(path, opts);
    const d = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(d.error || `${path}: HTTP ${r.status}`);
    return d;
  }

  async function whoami() {
    me = await json('/api/me');
    sessionStorage.setItem(CSRF_KEY, me.csrf);
    return me;
  }

  function may(permission) { return !!me && me.permissions.includes(permission); }

  // el('a', {href: '/'}, 'text', child...): a DOM element without innerHTML.
  function el(tag, attrs = {}, ...kids) {
    const svg = ['svg', 'g', 'path', 'polyline', 'line', 'rect', 'circle', 'text', 'title',
      'polygon'].includes(tag);
    const e = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag)
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const k of kids.flat()) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function pad(n) { return String(n).padStart(2, '0'); }

  // Evidence times in UTC, always with the zone said.
  function utc(t) {
    if (typeof t !== 'number') return '—';
    const d = new Date(t * 1000);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }

  function duration(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '—';
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${pad(Math.round(s - 60 * m))} s`;
  }

  function clock(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '—';
    const sign = s < 0 ? '-' : '';
    s = Math.abs(s);
    return `${sign}${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, '0')}`;
  }

  function header(active) {
    const nav = el('nav', {},
      el('a', { href: '/', class: active === 'list' ? 'active' : null }, 'Incidents'),
      may('audit') ? el('a', { href: '/audit', class: active === 'audit' ? 'active' : null },
        'Audit log') : null,
      may('users') ? el('a', { href: '/users', class: active === 'users' ? 'active' : null },
        'Users') : null);
    const out = el('button', {
      type: 'button', id: 'logout', onclick: async () => {
        await api('/api/logout', { method: 'POST' }).catch(() => null);
        sessionStorage.removeItem(CSRF_KEY);
        location.href = '/login';
      },
    }, 'Log out');
    const h = el('header', { class: 'top' }, el('span', { class: 'brand' }, 'bodycam portal'),
      nav, el('span', { class: 'who', id: 'who' }, `${me.user} (${me.role})`), out);
    document.body.prepend(h);
  }

  // Page start: who is logged in, then the header, then the page's own code.
  async function start(active, fn) {
    try {
      await whoami();
    } catch (e) {
      return;                          // toLogin() already moved on
    }
    header(active);
    try {
      await fn(me);
    } catch (e) {
      const box = document.getElementById('error');
      if (box) { box.textContent = String(e.message || e); box.classList.remove('hidden'); }
      throw e;
    }
  }

  return { api, json, whoami, may, el, utc, duration, clock, start, CSRF_KEY };
})();
