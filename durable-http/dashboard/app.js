// The durable dashboard. Everything it shows comes from the keyed management API; the key
// lives in this tab's sessionStorage and travels only in the x-functions-key header. Data
// is inserted as text (textContent), never as HTML.
'use strict';

(() => {
  // The API sits beside the dashboard under the host's mount prefix:
  // <prefix>/dashboard/ -> <prefix>/runtime/webhooks/durabletask/.
  const API = new URL('../runtime/webhooks/durabletask/', document.baseURI);
  const KEY_SLOT = 'durable.key';
  const STATUSES = ['Running', 'Pending', 'Suspended', 'Completed', 'Failed', 'Terminated', 'ContinuedAsNew', 'Canceled'];
  const TERMINAL = new Set(['Completed', 'Failed', 'Terminated', 'Canceled']);
  const REFRESH_MS = 5000;
  // Bounds on how much one view reads: an overview counts at most this many instances,
  // and a name-filtered page reads at most this many pages looking for matches.
  const OVERVIEW_MAX_PAGES = 20;
  const NAME_FILTER_MAX_PAGES = 50;

  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY_SLOT) || '';
  let refreshTimer = null;
  let current = { view: null, render: null };

  // ---- Small DOM helpers (text only) ------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'href') node.setAttribute('href', v);
      else if (k.startsWith('data-')) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function badge(status) {
    return el('span', { class: `badge s-${status}`, text: status, 'data-status': status });
  }

  // A path segment; `+` and `/` must not survive (the host decodes `+` as a space).
  const seg = (s) => encodeURIComponent(s);
  const instanceHref = (id) => `#/instances/${seg(id)}`;

  function fmtTime(s) {
    if (!s) return '';
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) return String(s);
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, '').replace('Z', '');
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
    if (ms < 0) ms = 0;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} m`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function jsonText(v) {
    if (v === undefined || v === null) return null;
    return JSON.stringify(v, null, 2);
  }

  function compact(v) {
    if (v === undefined || v === null) return '';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  function setPre(node, v) {
    const text = jsonText(v);
    node.textContent = text === null ? 'null' : text;
    node.classList.toggle('none', text === null);
  }

  let noticeTimer = null;
  function notice(text, isError) {
    const n = $('notice');
    n.textContent = text;
    n.classList.toggle('error', !!isError);
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, isError ? 8000 : 4000);
  }

  // ---- The management API -----------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // No header, an empty one or `null` all mean "last page".
  function continuationOf(res) {
    const t = res.headers.get('x-ms-continuation-token');
    return t && t.trim() && t.trim() !== 'null' ? t.trim() : null;
  }

  async function api(path, { method = 'GET', body, token, json = true } = {}) {
    const headers = { 'x-functions-key': key, accept: 'application/json' };
    if (token) headers['x-ms-continuation-token'] = token;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetch(new URL(path, API), {
        method, headers, body, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
      });
    } catch (e) {
      throw new ApiError(0, `cannot reach the host (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    if (text && json) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const message = (data && typeof data.error === 'string' && data.error) || res.statusText || 'request failed';
      if (res.status === 401 && current.view !== null) signOut('The host refused the key; sign in again.');
      throw new ApiError(res.status, `${res.status}: ${message}`);
    }
    return { status: res.status, data, token: continuationOf(res) };
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of params) if (v !== undefined && v !== null && v !== '') q.append(k, v);
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // ---- Sign-in ----------------------------------------------------------------------

  async function signIn(candidate) {
    const saved = key;
    key = candidate;
    try {
      await api(`instances${query([['top', '1'], ['showInput', 'false']])}`);
    } catch (e) {
      key = saved;
      throw e;
    }
    sessionStorage.setItem(KEY_SLOT, key);
  }

  function signOut(message) {
    key = '';
    sessionStorage.removeItem(KEY_SLOT);
    stopRefresh();
    $('auto-refresh').checked = false;
    current = { view: null, render: null };
    showSignIn(message);
  }

  function showSignIn(message) {
    for (const v of document.querySelectorAll('.view')) v.hidden = true;
    $('nav').hidden = true;
    $('session').hidden = true;
    $('signin').hidden = false;
    const err = $('signin-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('key').value = '';
    $('key').focus();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const candidate = $('key').value.trim();
    const err = $('signin-error');
    err.hidden = true;
    if (!candidate) return;
    $('signin-button').disabled = true;
    try {
      await signIn(candidate);
      $('key').value = '';
      route();
    } catch (e) {
      err.textContent = e.status === 401 ? 'The host refused this key.' : `Sign-in failed: ${e.message}`;
      err.hidden = false;
    } finally {
      $('signin-button').disabled = false;
    }
  });

  $('sign-out').addEventListener('click', () => signOut());

  // ---- Routing ----------------------------------------------------------------------

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, q] = raw.split('?');
    const params = new URLSearchParams(q || '');
    const parts = path.split('/').filter(Boolean).map((p) => decodeURIComponent(p));
    return { parts, params };
  }

  function show(view) {
    $('signin').hidden = true;
    $('nav').hidden = false;
    $('session').hidden = false;
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${view}`;
    const navView = view === 'instance' ? 'instances' : view;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === navView);
  }

  async function route() {
    if (!key) return showSignIn();
    const { parts, params } = parseHash();
    let view;
    let render;
    if (parts[0] === 'instances' && parts.length === 2) {
      view = 'instance';
      const id = parts[1];
      render = () => renderInstance(id);
    } else if (parts[0] === 'instances') {
      view = 'instances';
      loadFilters(params);
      render = () => renderInstances();
    } else if (parts[0] === 'entities') {
      view = 'entities';
      render = () => renderEntities();
    } else {
      view = 'overview';
      render = () => renderOverview();
    }
    current = { view, render };
    show(view);
    await refresh();
  }

  async function refresh() {
    if (!current.render) return;
    const view = current.view;
    try {
      await current.render();
    } catch (e) {
      if (current.view === view && key) notice(e.message, true);
    }
  }

  function stopRefresh() {
    clearInterval(refreshTimer);
    refreshTimer = null;
  }

  $('auto-refresh').addEventListener('change', (ev) => {
    stopRefresh();
    if (ev.target.checked) refreshTimer = setInterval(refresh, REFRESH_MS);
  });
  $('refresh').addEventListener('click', refresh);
  window.addEventListener('hashchange', route);

  // ---- Overview ---------------------------------------------------------------------

  async function renderOverview() {
    const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    const failed = [];
    let total = 0;
    let token = null;
    let pages = 0;
    do {
      const r = await api(`instances${query([['showInput', 'false'], ['top', '1000']])}`, { token });
      for (const i of r.data || []) {
        counts[i.runtimeStatus] = (counts[i.runtimeStatus] || 0) + 1;
        total += 1;
        if (i.runtimeStatus === 'Failed') failed.push(i);
      }
      token = r.token;
      pages += 1;
    } while (token && pages < OVERVIEW_MAX_PAGES);
    if (current.view !== 'overview') return;
    const more = token ? '+' : '';
    $('overview-note').textContent = token
      ? `Counted the first ${total} instances.`
      : `${total} instance${total === 1 ? '' : 's'}.`;
    const box = clear($('counts'));
    box.append(el('a', { class: 'count total', href: '#/instances' },
      el('div', { class: 'n', text: `${total}${more}` }), el('div', { class: 'label', text: 'All instances' })));
    for (const s of STATUSES) {
      if (!counts[s] && (s === 'ContinuedAsNew' || s === 'Canceled')) continue;
      box.append(el('a', { class: `count s-${s}`, href: `#/instances?status=${s}`, 'data-status': s },
        el('div', { class: 'n', text: `${counts[s]}${counts[s] ? more : ''}` }),
        el('div', { class: 'label', text: s })));
    }
    failed.sort((a, b) => String(b.lastUpdatedTime).localeCompare(String(a.lastUpdatedTime)));
    const body = clear($('failures').tBodies[0]);
    for (const i of failed.slice(0, 10)) {
      body.append(el('tr', {},
        el('td', { class: 'id' }, el('a', { href: instanceHref(i.instanceId), text: i.instanceId })),
        el('td', { text: i.name }),
        el('td', { class: 'time', text: fmtTime(i.lastUpdatedTime) }),
        el('td', { class: 'clip', text: compact(i.output), title: compact(i.output) })));
    }
    $('failures-empty').hidden = failed.length > 0;
  }

  // ---- Instance list ----------------------------------------------------------------

  // Paging through continuation tokens: `tokens[i]` reads page i (null: the first), `next`
  // is the token the shown page ended with. Wires the buttons `<prefix>prev-page` and
  // `<prefix>next-page`; `state.pager()` updates them and the page label after a render.
  function paged(state, prefix) {
    $(`${prefix}next-page`).addEventListener('click', () => {
      if (!state.next) return;
      state.tokens[state.page + 1] = state.next;
      state.page += 1;
      refresh();
    });
    $(`${prefix}prev-page`).addEventListener('click', () => {
      if (state.page === 0) return;
      state.page -= 1;
      refresh();
    });
    state.pager = () => {
      $(`${prefix}prev-page`).disabled = state.page === 0;
      $(`${prefix}next-page`).disabled = !state.next;
      $(`${prefix}page-label`).textContent = `Page ${state.page + 1}`;
    };
    return state;
  }

  const list = paged({ tokens: [null], page: 0, next: null, filters: {} }, '');

  for (const s of STATUSES) {
    $('status-chips').append(el('label', { class: 'chip' },
      el('input', { type: 'checkbox', value: s, name: 'status' }), s));
  }

  // `datetime-local` values are read as UTC.
  const toUtc = (v) => (v ? `${v.length === 16 ? `${v}:00` : v}Z` : '');
  const fromUtc = (v) => (v ? v.replace(/Z$/, '').replace(/\.\d+$/, '') : '');

  function loadFilters(params) {
    const statuses = params.getAll('status').flatMap((s) => s.split(',')).filter((s) => STATUSES.includes(s));
    for (const box of document.querySelectorAll('#status-chips input')) box.checked = statuses.includes(box.value);
    $('f-name').value = params.get('name') || '';
    $('f-prefix').value = params.get('prefix') || '';
    $('f-from').value = fromUtc(params.get('from') || '');
    $('f-to').value = fromUtc(params.get('to') || '');
    const top = params.get('top');
    $('f-top').value = [...$('f-top').options].some((o) => o.value === top) ? top : '25';
    const filters = { statuses, name: $('f-name').value.trim(), prefix: $('f-prefix').value.trim(),
      from: toUtc($('f-from').value), to: toUtc($('f-to').value), top: Number($('f-top').value) };
    if (JSON.stringify(filters) !== JSON.stringify(list.filters)) {
      list.filters = filters;
      list.tokens = [null];
      list.page = 0;
    }
  }

  function filtersToHash() {
    const q = new URLSearchParams();
    for (const box of document.querySelectorAll('#status-chips input')) if (box.checked) q.append('status', box.value);
    if ($('f-name').value.trim()) q.set('name', $('f-name').value.trim());
    if ($('f-prefix').value.trim()) q.set('prefix', $('f-prefix').value.trim());
    if ($('f-from').value) q.set('from', toUtc($('f-from').value));
    if ($('f-to').value) q.set('to', toUtc($('f-to').value));
    if ($('f-top').value !== '25') q.set('top', $('f-top').value);
    const s = q.toString();
    return `#/instances${s ? `?${s}` : ''}`;
  }

  $('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const target = filtersToHash();
    if (location.hash === target) route();
    else location.hash = target;
  });
  $('clear-filters').addEventListener('click', () => { location.hash = '#/instances'; });

  // One page: the management list has no name filter, so with one this reads pages until
  // it has a page's worth of matches (bounded), and the next page continues from there.
  async function renderInstances() {
    const f = list.filters;
    const path = `instances${query([
      ...f.statuses.map((s) => ['runtimeStatus', s]),
      ['instanceIdPrefix', f.prefix], ['createdTimeFrom', f.from], ['createdTimeTo', f.to],
      ['top', String(f.top)], ['showInput', 'false'],
    ])}`;
    const needle = f.name.toLowerCase();
    const items = [];
    let token = list.tokens[list.page];
    let reads = 0;
    do {
      const r = await api(path, { token });
      const page = r.data || [];
      items.push(...(needle ? page.filter((i) => String(i.name).toLowerCase().includes(needle)) : page));
      token = r.token;
      reads += 1;
    } while (needle && token && items.length < f.top && reads < NAME_FILTER_MAX_PAGES);
    if (current.view !== 'instances') return;
    list.next = token;
    const body = clear($('instances').tBodies[0]);
    for (const i of items) {
      body.append(el('tr', { 'data-id': i.instanceId },
        el('td', { class: 'id' }, el('a', { href: instanceHref(i.instanceId), text: i.instanceId })),
        el('td', { text: i.name }),
        el('td', {}, badge(i.runtimeStatus)),
        el('td', { class: 'time', text: fmtTime(i.createdTime) }),
        el('td', { class: 'time', text: fmtTime(i.lastUpdatedTime) }),
        el('td', { class: 'clip', text: compact(i.customStatus), title: compact(i.customStatus) })));
    }
    $('instances-empty').hidden = items.length > 0;
    list.pager();
  }

  // ---- One instance -----------------------------------------------------------------

  let shown = null; // the instance on screen: { id, status, lastUpdatedTime }

  async function fetchInstance(id) {
    const r = await api(`instances/${seg(id)}${query([['showHistory', 'true'], ['showHistoryOutput', 'true'], ['showInput', 'true']])}`);
    return r.data;
  }

  async function renderInstance(id) {
    let s;
    try {
      s = await fetchInstance(id);
    } catch (e) {
      if (e.status === 404) {
        if (current.view !== 'instance') return;
        $('i-id').textContent = id;
        $('i-status').replaceWith(el('span', { id: 'i-status', class: 'badge', text: 'not found' }));
        $('i-name').textContent = 'No instance with this id (it may have been purged).';
        clear($('timeline'));
        shown = null;
        updateActions(null);
        return;
      }
      throw e;
    }
    if (current.view !== 'instance' || parseHash().parts[1] !== id) return;
    shown = { id, status: s.runtimeStatus, lastUpdatedTime: s.lastUpdatedTime };
    $('i-id').textContent = s.instanceId;
    const b = badge(s.runtimeStatus);
    b.id = 'i-status';
    $('i-status').replaceWith(b);
    $('i-name').textContent = `Orchestrator ${s.name}`;
    $('i-created').textContent = `${fmtTime(s.createdTime)} UTC`;
    $('i-updated').textContent = `${fmtTime(s.lastUpdatedTime)} UTC`;
    const events = s.historyEvents || [];
    const started = events.find((e) => e.EventType === 'ExecutionStarted');
    const begin = new Date(started ? started.Timestamp : s.createdTime).getTime();
    const end = TERMINAL.has(s.runtimeStatus) ? finishedAt(events, s) : Date.now();
    $('i-runtime').textContent = fmtDuration(end - begin);
    const completed = events.find((e) => e.EventType === 'ExecutionCompleted');
    setPre($('i-input'), s.input);
    setPre($('i-output'), s.runtimeStatus === 'Failed' ? null : s.output);
    setPre($('i-custom'), s.customStatus);
    const failure = completed && completed.FailureDetails;
    $('i-failure').hidden = s.runtimeStatus !== 'Failed';
    if (s.runtimeStatus === 'Failed') {
      $('i-failure-type').textContent = failure ? failure.ErrorType : 'Failed';
      $('i-failure-message').textContent = failure ? failure.ErrorMessage : compact(s.output);
    }
    renderTimeline(events, s);
    updateActions(s.runtimeStatus);
  }

  function updateActions(status) {
    const running = status && !TERMINAL.has(status);
    const allowed = {
      raise: running,
      suspend: running && status !== 'Suspended',
      resume: status === 'Suspended',
      terminate: running,
      rewind: status === 'Failed',
      restart: status && TERMINAL.has(status),
      purge: status && TERMINAL.has(status),
    };
    for (const b of document.querySelectorAll('#actions button')) b.disabled = !allowed[b.dataset.action];
  }

  // When a finished execution ended: its last event (millisecond timestamps), else the
  // status's last update (whole seconds).
  function finishedAt(events, s) {
    const times = events.map((e) => new Date(e.Timestamp).getTime()).filter(Number.isFinite);
    return times.length ? Math.max(...times) : new Date(s.lastUpdatedTime).getTime();
  }

  // The history as timeline rows: spans for work with a start and an end (activities,
  // timers, sub-orchestrations, entity calls), points for everything else.
  function timelineRows(events, s) {
    const t = (v) => (v ? new Date(v).getTime() : null);
    const rows = [];
    const timers = [];
    const fired = events.filter((e) => e.EventType === 'TimerFired').map((e) => ({ e, used: false }));
    const done = (e) => (/Failed$/.test(e.EventType) ? 'failed' : 'ok');
    for (const e of events) {
      const at = t(e.Timestamp);
      switch (e.EventType) {
        case 'ExecutionStarted':
          rows.push({ kind: 'orchestration', label: e.FunctionName || s.name, start: at, end: null, state: 'pending', detail: 'started' });
          break;
        case 'TaskCompleted': case 'TaskFailed':
          rows.push({ kind: 'activity', label: e.FunctionName, start: t(e.ScheduledTime) ?? at, end: at, state: done(e),
            detail: e.EventType === 'TaskFailed' ? e.Reason : compact(e.Result) });
          break;
        case 'TaskScheduled':
          rows.push({ kind: 'activity', label: e.Name, start: at, end: null, state: 'pending', detail: 'scheduled' });
          break;
        case 'SubOrchestrationInstanceCompleted': case 'SubOrchestrationInstanceFailed':
          rows.push({ kind: 'sub-orchestration', label: e.FunctionName, start: t(e.ScheduledTime) ?? at, end: at, state: done(e),
            detail: e.EventType.endsWith('Failed') ? e.Reason : compact(e.Result) });
          break;
        case 'SubOrchestrationInstanceCreated':
          rows.push({ kind: 'sub-orchestration', label: e.Name, start: at, end: null, state: 'pending', detail: e.InstanceId, link: e.InstanceId });
          break;
        case 'EntityOperationCompleted': case 'EntityOperationFailed':
          rows.push({ kind: 'entity', label: `${e.EntityId} ${e.Operation}`, start: t(e.ScheduledTime) ?? at, end: at, state: done(e),
            detail: e.EventType.endsWith('Failed') ? e.Reason : compact(e.Result) });
          break;
        case 'EntityOperationCalled':
          rows.push({ kind: 'entity', label: `${e.EntityId} ${e.Operation}`, start: at, end: null, state: 'pending', detail: 'called' });
          break;
        case 'TimerCreated': {
          const row = { kind: 'timer', label: `until ${fmtTime(e.FireAt)}`, start: at, end: null, state: 'pending', fireAt: e.FireAt, detail: 'waiting' };
          timers.push(row);
          rows.push(row);
          break;
        }
        case 'TimerFired':
          break;
        case 'EventRaised':
          rows.push({ kind: 'event', label: e.Name, start: at, point: true, detail: 'received' });
          break;
        case 'EventSent':
          rows.push({ kind: 'event', label: `${e.Name} → ${e.InstanceId}`, start: at, point: true, detail: 'sent' });
          break;
        case 'ExecutionCompleted':
          rows.push({ kind: 'orchestration', label: e.OrchestrationStatus, start: at, point: true,
            state: e.OrchestrationStatus === 'Completed' ? 'ok' : 'failed',
            detail: e.FailureDetails ? `${e.FailureDetails.ErrorType}: ${e.FailureDetails.ErrorMessage}` : compact(e.Result) });
          break;
        default:
          rows.push({ kind: 'orchestration', label: e.EventType.replace(/^Execution/, '').replace(/^Entity/, 'Entity '),
            start: at, point: true, detail: e.Reason || e.EntityId || e.Operation || '' });
      }
    }
    // A timer ends when the TimerFired for its due time arrives.
    for (const row of timers) {
      const f = fired.find((x) => !x.used && x.e.FireAt === row.fireAt);
      if (f) {
        f.used = true;
        row.end = t(f.e.Timestamp);
        row.state = 'ok';
        row.detail = 'fired';
      }
    }
    const terminal = TERMINAL.has(s.runtimeStatus);
    const last = terminal ? finishedAt(events, s) : Date.now();
    const start = rows.find((r) => r.kind === 'orchestration' && !r.point);
    if (start) {
      start.end = last;
      start.state = { Completed: 'ok', Failed: 'failed', Terminated: 'terminated' }[s.runtimeStatus] || 'pending';
      start.detail = s.runtimeStatus;
    }
    for (const r of rows) if (!r.point && r.end === null && terminal) { r.end = last; r.state = 'terminated'; }
    return rows;
  }

  function renderTimeline(events, s) {
    const box = clear($('timeline'));
    const rows = timelineRows(events, s);
    if (!rows.length) {
      box.append(el('p', { class: 'muted', text: 'No history yet.' }));
      return;
    }
    const now = Date.now();
    const t0 = Math.min(...rows.map((r) => r.start).filter(Number.isFinite));
    const t1 = Math.max(t0 + 1, ...rows.map((r) => r.end ?? (r.point ? r.start : now)).filter(Number.isFinite));
    const span = t1 - t0;
    box.append(el('div', { class: 'tl-row head' },
      el('span', { text: 'Offset' }), el('span', { text: 'Kind' }), el('span', { text: 'Name' }),
      el('span', { text: `Timeline (${fmtDuration(span)})` }), el('span', { class: 'tl-duration', text: 'Duration' })));
    for (const r of rows) {
      const end = r.point ? r.start : (r.end ?? now);
      const bar = el('div', { class: `tl-bar ${r.point ? 'point' : ''} ${r.state || ''}` });
      // CSSOM properties, not style attributes: allowed by the page's CSP.
      bar.style.left = `${((r.start - t0) / span) * 100}%`;
      if (!r.point) bar.style.width = `${Math.max(((end - r.start) / span) * 100, 0.4)}%`;
      const label = el('span', { class: 'tl-label' },
        r.link ? el('a', { href: instanceHref(r.link), text: r.label }) : r.label,
        r.detail ? el('span', { class: 'detail', text: r.detail, title: r.detail }) : null);
      box.append(el('div', { class: `tl-row ${r.state || ''}`, 'data-kind': r.kind },
        el('span', { class: 'tl-offset', text: `+${fmtDuration(r.start - t0)}` }),
        el('span', { class: `tl-kind k-${r.kind}`, text: r.kind }),
        label,
        el('div', { class: 'tl-track' }, bar),
        el('span', { class: 'tl-duration', text: r.point ? '' : (r.end === null ? `${fmtDuration(end - r.start)}…` : fmtDuration(end - r.start)) })));
    }
  }

  // ---- Actions (each asks for confirmation) -----------------------------------------

  function field(labelText, input) {
    return el('label', {}, labelText, input);
  }

  // Opens the confirmation dialog; resolves with the form's values, or null on cancel.
  function confirmDialog({ title, text, fields = [], ok = 'Confirm', validate }) {
    const dialog = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    const box = clear($('confirm-fields'));
    for (const f of fields) box.append(f);
    $('confirm-ok').textContent = ok;
    $('confirm-error').hidden = true;
    return new Promise((resolve) => {
      const finish = (value) => {
        dialog.close();
        $('confirm-form').removeEventListener('submit', onSubmit);
        $('confirm-cancel').removeEventListener('click', onCancel);
        dialog.removeEventListener('cancel', onCancel);
        resolve(value);
      };
      const onSubmit = (ev) => {
        ev.preventDefault();
        const problem = validate ? validate() : null;
        if (problem) {
          $('confirm-error').textContent = problem;
          $('confirm-error').hidden = false;
          return;
        }
        finish(true);
      };
      const onCancel = (ev) => { ev.preventDefault(); finish(null); };
      $('confirm-form').addEventListener('submit', onSubmit);
      $('confirm-cancel').addEventListener('click', onCancel);
      dialog.addEventListener('cancel', onCancel);
      dialog.showModal();
      (box.querySelector('input, textarea') || $('confirm-ok')).focus();
    });
  }

  // After an action the worker applies it asynchronously: re-read until the instance
  // changes, with a deadline.
  async function refreshUntilChanged(id, before) {
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline && current.view === 'instance' && parseHash().parts[1] === id) {
      await renderInstance(id);
      if (!shown || shown.status !== before.status || shown.lastUpdatedTime !== before.lastUpdatedTime) return;
      await new Promise((r) => setTimeout(r, 300));
    }
  }

  const ACTIONS = {
    terminate: { title: 'Terminate instance', verb: 'Terminate', text: 'The instance stops and is marked Terminated. This cannot be undone.', reason: true },
    suspend: { title: 'Suspend instance', verb: 'Suspend', text: 'The instance stops processing events until it is resumed.', reason: true },
    resume: { title: 'Resume instance', verb: 'Resume', text: 'The instance continues processing events.', reason: true },
    rewind: { title: 'Rewind instance', verb: 'Rewind', text: 'The failed work runs again from where it failed.', reason: true },
  };

  async function act(action) {
    if (!shown) return;
    const { id } = shown;
    const before = { ...shown };
    try {
      if (ACTIONS[action]) {
        const a = ACTIONS[action];
        const reason = el('input', { type: 'text', id: 'confirm-reason', placeholder: 'optional' });
        if (!await confirmDialog({ title: a.title, text: `${a.text} Instance: ${id}`, fields: [field('Reason', reason)], ok: a.verb })) return;
        await api(`instances/${seg(id)}/${action}${query([['reason', reason.value.trim()]])}`, { method: 'POST' });
        notice(`${a.verb} requested for ${id}.`);
        await refreshUntilChanged(id, before);
      } else if (action === 'raise') {
        const name = el('input', { type: 'text', id: 'confirm-event-name', required: true, spellcheck: false });
        const data = el('textarea', { id: 'confirm-event-data', spellcheck: false, value: 'null' });
        const ok = await confirmDialog({
          title: 'Raise event', text: `Sends an external event to ${id}.`, ok: 'Raise event',
          fields: [field('Event name', name), field('Data (JSON)', data)],
          validate: () => {
            if (!name.value.trim()) return 'The event needs a name.';
            try { JSON.parse(data.value); } catch (e) { return `The data is not valid JSON: ${e.message}`; }
            return null;
          },
        });
        if (!ok) return;
        await api(`instances/${seg(id)}/raiseEvent/${seg(name.value.trim())}`, { method: 'POST', body: data.value });
        notice(`Event ${name.value.trim()} sent to ${id}.`);
        await refreshUntilChanged(id, before);
      } else if (action === 'restart') {
        const fresh = el('input', { type: 'checkbox', id: 'confirm-new-id' });
        const ok = await confirmDialog({
          title: 'Restart instance', text: `Starts ${id} again from the beginning with the same input.`, ok: 'Restart',
          fields: [el('label', { class: 'inline' }, fresh, 'Start it under a new instance id')],
        });
        if (!ok) return;
        const r = await api(`instances/${seg(id)}/restart${query([['restartWithNewInstanceId', String(fresh.checked)]])}`, { method: 'POST' });
        const newId = (r.data && r.data.id) || id;
        notice(`Restarted as ${newId}.`);
        if (newId !== id) location.hash = instanceHref(newId);
        else await refreshUntilChanged(id, before);
      } else if (action === 'purge') {
        const ok = await confirmDialog({
          title: 'Purge instance', text: `Deletes ${id} and its whole history. This cannot be undone.`, ok: 'Purge',
        });
        if (!ok) return;
        await api(`instances/${seg(id)}`, { method: 'DELETE' });
        notice(`Purged ${id}.`);
        location.hash = '#/instances';
      }
    } catch (e) {
      notice(e.message, true);
    }
  }

  for (const b of document.querySelectorAll('#actions button')) b.addEventListener('click', () => act(b.dataset.action));

  // ---- Entities ---------------------------------------------------------------------

  const entities = paged({ tokens: [null], page: 0, next: null, name: '' }, 'e-');

  async function renderEntities() {
    const name = entities.name;
    const path = `entities${name ? `/${seg(name)}` : ''}${query([['fetchState', 'true'], ['top', '50']])}`;
    const r = await api(path, { token: entities.tokens[entities.page] });
    if (current.view !== 'entities') return;
    entities.next = r.token;
    const body = clear($('entities').tBodies[0]);
    for (const e of r.data || []) {
      body.append(el('tr', {},
        el('td', { class: 'mono', text: e.entityId.name }),
        el('td', { class: 'mono', text: e.entityId.key }),
        el('td', { class: 'time', text: fmtTime(e.lastOperationTime) }),
        el('td', {}, el('pre', { text: jsonText(e.state) ?? 'null' }))));
    }
    $('entities-empty').hidden = (r.data || []).length > 0;
    entities.pager();
  }

  $('entity-filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    entities.name = $('e-name').value.trim();
    entities.tokens = [null];
    entities.page = 0;
    refresh();
  });

  route();
})();
