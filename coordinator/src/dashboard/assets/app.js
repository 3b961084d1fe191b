// flamegrid dashboard: a hash router, a tiny fetch wrapper, and one function per page.
//
// How it fits together:
// * The location after '#' picks the page: '#/', '#/jobs/<jid>',
//   '#/jobs/<jid>/vertices/<vid>[?type=on_cpu&subtask=0]', '#/taskmanagers/<tmid>'.
// * A page is a function that fills the <main> element and returns nothing; whatever it
//   starts (polls, timers, requests) it registers on the `Page` object it is given, and the
//   router stops all of it when the location changes. No request outlives its page.
// * Every URL is relative ('jobs/overview', never '/jobs/overview'), so the page works
//   behind a reverse proxy under any path prefix.
// * The DOM is built with `h()`, which sets text with textContent: names coming from the API
//   (job names, function names of sampled programs) are never parsed as HTML.

import { FlameGraph } from './flame.js';
import { drawPlan } from './plan.js';

// ---------------------------------------------------------------------------------------------
// DOM and formatting helpers

/** Creates an element: h('a', {href: '#/'}, 'text', childNode, [more, children]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Replaces an element's children; like replaceChildren, but skips null/false and flattens arrays. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function pad2(n) {
  return String(n).padStart(2, '0');
}

/** A wall-clock time in the browser's zone, 'YYYY-MM-DD HH:MM:SS'; '–' for Flink's -1/0. */
export function fmtTime(ms) {
  if (typeof ms !== 'number' || ms <= 0) return '–';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** A duration, two units at most: '850 ms', '42 s', '3 min 5 s', '2 h 10 min', '3 d 4 h'. */
export function fmtDuration(ms) {
  if (typeof ms !== 'number' || ms < 0) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const min = Math.floor(s / 60); s -= min * 60;
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${min} min`;
  if (min) return `${min} min ${s} s`;
  return `${s} s`;
}

/** Bytes in binary units: '15.6 GiB'. */
export function fmtBytes(bytes) {
  if (typeof bytes !== 'number' || bytes < 0) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** Age of an event that happened at epoch-ms `then`: '3 s ago'. */
export function fmtAgo(then) {
  return `${fmtDuration(Math.max(0, Date.now() - then))} ago`;
}

/**
 * How long ago a task manager's last heartbeat was. Flink's field `timeSinceLastHeartbeat` is,
 * despite its name, the epoch-ms time of the last heartbeat; a small value is taken as an age.
 */
function heartbeatAge(value) {
  if (typeof value !== 'number' || value < 0) return null;
  return value > 1e12 ? Math.max(0, Date.now() - value) : value;
}

function statusBadge(status) {
  const s = String(status || 'UNKNOWN');
  return h('span', { class: `badge status-${s.toLowerCase()}` }, s);
}

function enc(id) {
  return encodeURIComponent(id);
}

// ---------------------------------------------------------------------------------------------
// The API

/** A failed API call: the HTTP status (0 when the coordinator could not be reached) and the
 *  message to show, from Flink's error body {"errors": ["..."]} when there is one. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GETs a relative API path and returns the parsed JSON, or throws ApiError. */
export async function api(path, signal) {
  return (await apiWithHeaders(path, signal)).body;
}

/**
 * Like api(), but also returns the answer's headers: the flame graph answers say in
 * `X-Flamegrid-Sampling` whether a sampling run is in flight, which the body cannot tell once
 * an older graph is cached.
 */
export async function apiWithHeaders(path, signal) {
  let response;
  try {
    response = await fetch(path, { signal, headers: { Accept: 'application/json' }, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `Cannot reach the coordinator (${e.message}).`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`.trim();
    if (body && Array.isArray(body.errors) && body.errors.length) {
      // Flink's errors[0] may carry a Java-style stack trace after the message: keep the message.
      message = String(body.errors[0]).split('\n')[0];
    }
    throw new ApiError(response.status, message);
  }
  if (body === null) throw new ApiError(response.status, `The answer to ${path} is not JSON.`);
  return { body, headers: response.headers };
}

/** An inline error box: what failed and why. */
function errorBox(what, error) {
  return h('div', { class: 'error', role: 'alert' },
    h('strong', {}, what), ' ', error && error.message ? error.message : String(error));
}

// ---------------------------------------------------------------------------------------------
// Pages and their lifetime

/** Everything a page starts, so that the router can stop it all when the location changes. */
class Page {
  constructor() {
    this.controller = new AbortController();
    this.timers = new Set();
    this.cleanups = [];
    this.stopped = false;
  }

  get signal() {
    return this.controller.signal;
  }

  /** Runs fn after ms unless the page was left. */
  later(ms, fn) {
    if (this.stopped) return;
    const id = setTimeout(() => {
      this.timers.delete(id);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(id);
  }

  /**
   * Calls `tick` now and again after each answer: after `delay()` ms (re-read every time, so
   * a poll can speed up while waiting for data). A hidden tab does not poll; it resumes when
   * shown again. `poke()` on the returned object polls at once.
   */
  poll(tick, delay) {
    let pending = null;
    let running = false;
    let again = false;
    const run = async () => {
      if (this.stopped) return;
      if (running) { again = true; return; }
      if (pending !== null) { clearTimeout(pending); this.timers.delete(pending); pending = null; }
      if (document.hidden) { schedule(); return; }
      running = true;
      try {
        await tick();
      } catch (e) {
        if (e.name !== 'AbortError') console.error(e);
      } finally {
        running = false;
      }
      if (again) { again = false; run(); } else schedule();
    };
    const schedule = () => {
      if (this.stopped) return;
      pending = setTimeout(() => { this.timers.delete(pending); pending = null; run(); }, delay());
      this.timers.add(pending);
    };
    const onVisible = () => { if (!document.hidden) run(); };
    document.addEventListener('visibilitychange', onVisible);
    this.cleanups.push(() => document.removeEventListener('visibilitychange', onVisible));
    run();
    return { poke: run };
  }

  onStop(fn) {
    this.cleanups.push(fn);
  }

  stop() {
    this.stopped = true;
    this.controller.abort();
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
    for (const fn of this.cleanups) fn();
  }
}

/** /config's answer; the polling period is its `refresh-interval` (Flink's web.refresh-interval). */
let config = { 'refresh-interval': 3000 };

function refreshInterval() {
  const ms = Number(config['refresh-interval']);
  return Number.isFinite(ms) && ms >= 500 ? ms : 3000;
}

/** Sets the page title and the visible heading, and moves focus there for screen readers. */
function pageHeading(title, ...extra) {
  document.title = `${title} · flamegrid`;
  return h('h1', { tabindex: '-1', id: 'page-title' }, title, ...extra);
}

function breadcrumbs(...items) {
  return h('nav', { 'aria-label': 'Breadcrumb', class: 'breadcrumbs' },
    h('ol', {}, items.map((item, i) => h('li', {},
      i === items.length - 1 ? h('span', { 'aria-current': 'page' }, item.label) : h('a', { href: item.href }, item.label)))));
}

function table(caption, headers, rowsBody) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      rowsBody));
}

function emptyRow(columns, text) {
  return h('tr', {}, h('td', { colspan: String(columns), class: 'empty' }, text));
}

// ---------------------------------------------------------------------------------------------
// Overview: task managers and jobs

function overviewPage(root, page) {
  const summary = h('p', { class: 'summary' });
  const tmBody = h('tbody', {}, emptyRow(5, 'Loading…'));
  const tmError = h('div');
  const jobBody = h('tbody', {}, emptyRow(5, 'Loading…'));
  const jobError = h('div');
  root.append(
    pageHeading('Overview'),
    summary,
    h('section', { 'aria-labelledby': 'jobs-h' },
      h('h2', { id: 'jobs-h' }, 'Jobs'),
      jobError,
      table('Jobs', ['Name', 'State', 'Start', 'Duration', 'Tasks'], jobBody)),
    h('section', { 'aria-labelledby': 'tms-h' },
      h('h2', { id: 'tms-h' }, 'Task managers'),
      tmError,
      table('Task managers', ['Host / id', 'Cores', 'Memory', 'Last heartbeat', 'Slots'], tmBody)),
  );

  page.poll(async () => {
    const [overview, tms, jobs] = await Promise.allSettled([
      api('overview', page.signal), api('taskmanagers', page.signal), api('jobs/overview', page.signal)]);
    if (page.stopped) return;

    if (overview.status === 'fulfilled') {
      const o = overview.value;
      fill(summary, 
        `${o.taskmanagers ?? 0} task manager${o.taskmanagers === 1 ? '' : 's'} · ` +
        `${o['jobs-running'] ?? 0} running, ${o['jobs-finished'] ?? 0} finished, ` +
        `${o['jobs-cancelled'] ?? 0} canceled, ${o['jobs-failed'] ?? 0} failed job(s)`);
    }

    if (tms.status === 'fulfilled') {
      fill(tmError);
      const list = Array.isArray(tms.value.taskmanagers) ? tms.value.taskmanagers : [];
      fill(tmBody, ...(list.length ? list.map(tmRow) : [emptyRow(5, 'No task manager has registered yet. Start one on a worker host with flamegrid-agent run --coordinator (this coordinator\'s registry address, port 6123 by default).')]));
    } else {
      fill(tmError, errorBox('Task managers could not be loaded:', tms.reason));
    }

    if (jobs.status === 'fulfilled') {
      fill(jobError);
      const list = Array.isArray(jobs.value.jobs) ? [...jobs.value.jobs] : [];
      list.sort((a, b) => (b['start-time'] ?? 0) - (a['start-time'] ?? 0));
      fill(jobBody, ...(list.length ? list.map(jobRow) : [emptyRow(5, 'No job is registered. Register one with POST jobs (see the README).')]));
    } else {
      fill(jobError, errorBox('Jobs could not be loaded:', jobs.reason));
    }
  }, refreshInterval);
}

/** The host name the agent registered with (flamegrid's `hostname` key), else the host part
 *  of its address (all a Flink task manager has). */
function hostOf(tm) {
  if (tm.hostname) return String(tm.hostname);
  if (tm.host) return String(tm.host);
  // Flink's `path` is an RPC address like 'pekko.tcp://flink@host:port/user/...' or 'host:port'.
  const path = String(tm.path || '');
  const m = path.match(/@([^/:]+)/) || path.match(/^(?:[a-z]+:\/\/)?([^/:]+)/i);
  return m ? m[1] : '';
}

function tmRow(tm) {
  const hw = tm.hardware || {};
  const age = heartbeatAge(tm.timeSinceLastHeartbeat);
  const host = hostOf(tm);
  return h('tr', {},
    h('td', {}, h('a', { href: `#/taskmanagers/${enc(tm.id)}`, class: 'tm-host' }, host || tm.id),
      host && host !== tm.id ? h('div', { class: 'sub mono' }, tm.id) : null,
      tm.os || tm.agentVersion ? h('div', { class: 'sub' },
        [tm.os, tm.agentVersion ? `agent ${tm.agentVersion}` : ''].filter(Boolean).join(' · ')) : null),
    h('td', { class: 'num' }, hw.cpuCores ?? '–'),
    h('td', { class: 'num' }, fmtBytes(hw.physicalMemory),
      typeof hw.freeMemory === 'number' && hw.freeMemory > 0 ? h('div', { class: 'sub' }, `${fmtBytes(hw.freeMemory)} free`) : null),
    h('td', {}, age === null ? '–' : `${fmtDuration(age)} ago`),
    h('td', { class: 'num' }, tm.slotsNumber ?? '–'));
}

function jobRow(job) {
  const tasks = job.tasks || {};
  return h('tr', {},
    h('td', {}, h('a', { href: `#/jobs/${enc(job.jid)}` }, job.name || job.jid)),
    h('td', {}, statusBadge(job.state)),
    h('td', {}, fmtTime(job['start-time'])),
    h('td', {}, fmtDuration(job.duration)),
    h('td', { class: 'num' }, `${tasks.running ?? 0} / ${tasks.total ?? 0} running`));
}

// ---------------------------------------------------------------------------------------------
// Job page: details and the plan as a graph

function jobPage(root, page, jid) {
  const title = pageHeading('Job');
  const crumbs = h('div', {}, breadcrumbs({ label: 'Overview', href: '#/' }, { label: jid }));
  const meta = h('dl', { class: 'meta' });
  const error = h('div');
  const planBox = h('div', { class: 'plan', role: 'group', 'aria-label': 'Job plan: vertices and their inputs' });
  const vertexBody = h('tbody', {}, emptyRow(5, 'Loading…'));
  root.append(crumbs, title, error, meta,
    h('section', { 'aria-labelledby': 'plan-h' },
      h('h2', { id: 'plan-h' }, 'Plan'),
      h('p', { class: 'hint' }, 'Each box is a vertex (an operator); choose one to see its flame graph.'),
      planBox),
    h('section', { 'aria-labelledby': 'vertices-h' },
      h('h2', { id: 'vertices-h' }, 'Vertices'),
      table('Vertices', ['Name', 'Status', 'Parallelism', 'Start', 'Duration'], vertexBody)));

  let drawn = '';
  page.poll(async () => {
    let job;
    try {
      job = await api(`jobs/${enc(jid)}`, page.signal);
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      fill(error, errorBox('The job could not be loaded:', e));
      return;
    }
    if (page.stopped) return;
    fill(error);
    document.title = `${job.name} · flamegrid`;
    fill(title, job.name || jid, ' ', statusBadge(job.state));
    fill(crumbs, breadcrumbs({ label: 'Overview', href: '#/' }, { label: job.name || jid }));
    fill(meta, 
      h('dt', {}, 'Job id'), h('dd', { class: 'mono' }, job.jid),
      h('dt', {}, 'Started'), h('dd', {}, fmtTime(job['start-time'])),
      h('dt', {}, 'Duration'), h('dd', {}, fmtDuration(job.duration)),
      job['end-time'] > 0 ? [h('dt', {}, 'Ended'), h('dd', {}, fmtTime(job['end-time']))] : null);
    const vertices = Array.isArray(job.vertices) ? job.vertices : [];
    fill(vertexBody, ...(vertices.length ? vertices.map((v) => h('tr', {},
      h('td', {}, h('a', { href: `#/jobs/${enc(jid)}/vertices/${enc(v.id)}` }, v.name || v.id)),
      h('td', {}, statusBadge(v.status)),
      h('td', { class: 'num' }, v.parallelism ?? '–'),
      h('td', {}, fmtTime(v['start-time'])),
      h('td', {}, fmtDuration(v.duration)))) : [emptyRow(5, 'This job has no vertices.')]));
    // Redraw the graph only when something it shows changed, so keyboard focus on a box survives polls.
    const signature = JSON.stringify([job.plan, vertices.map((v) => [v.id, v.name, v.status, v.parallelism])]);
    if (signature !== drawn) {
      drawn = signature;
      const hadFocus = planBox.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null;
      fill(planBox, drawPlan(job, (vid) => `#/jobs/${enc(jid)}/vertices/${enc(vid)}`));
      if (hadFocus) {
        const again = [...planBox.querySelectorAll('a')].find((a) => a.getAttribute('href') === hadFocus);
        if (again) again.focus();
      }
    }
  }, refreshInterval);
}

// ---------------------------------------------------------------------------------------------
// Vertex page: the flame graph

const TYPES = [
  { value: 'on_cpu', label: 'On-CPU', help: 'threads running or runnable' },
  { value: 'off_cpu', label: 'Off-CPU', help: 'threads waiting, sleeping or blocked' },
  { value: 'full', label: 'Mixed', help: 'all samples (FULL)' },
];

/** Flink's messages for the flame graph sentinels (flink-rest.md §4). */
/**
 * The note above the graph naming every absent subtask with its reason (the JSON's `missing`
 * and `missingReasons`, fixed words), grouped by reason: "subtasks 1, 3: agent unreachable;
 * subtask 2: process not found". An empty list when nothing is absent. When the reasons come
 * from a later run that delivered nothing (`latestRunEndTimestamp`), it says the graph is older.
 */
function missingNote(graph) {
  const gone = Array.isArray(graph.missing) ? graph.missing : [];
  if (!gone.length) return [];
  const reasons = graph.missingReasons && typeof graph.missingReasons === 'object' ? graph.missingReasons : {};
  const byReason = new Map();
  for (const m of gone) {
    const why = typeof reasons[String(m)] === 'string' ? reasons[String(m)] : 'no reason given';
    if (!byReason.has(why)) byReason.set(why, []);
    byReason.get(why).push(String(m));
  }
  const groups = [...byReason].map(([why, idx]) => `subtask${idx.length === 1 ? '' : 's'} ${idx.join(', ')}: ${why}`);
  const some = graph.data && graph.data.value > 0;
  const later = Number(graph.latestRunEndTimestamp);
  if (some && later > 0) {
    return [h('div', { class: 'warning', role: 'note', id: 'fg-missing' },
      h('strong', {}, 'Outdated: '),
      `the latest run (${fmtAgo(later)}) delivered nothing: no samples from ${groups.join('; ')}.`,
      ' The graph below is from an earlier run.')];
  }
  return [h('div', { class: 'warning', role: 'note', id: 'fg-missing' },
    h('strong', {}, some ? 'Incomplete: ' : 'No samples: '),
    `no samples from ${groups.join('; ')}`,
    some ? '. The graph shows the others.' : '.')];
}

const SENTINELS = {
  '-1': 'The task has already been terminated: there is nothing to sample.',
  '-2': 'The flame graph feature is currently disabled (start the coordinator with --flamegraph-enabled true; Flink: rest.flamegraph.enabled: true).',
  '-3': 'Sampling… We are waiting for the first samples to create a flame graph.',
};

/**
 * The flame graph the page asks for is pruned by the coordinator (flamegrid's `minWidth`):
 * frames narrower than this fraction of the root, a pixel of a 2,000-pixel-wide graph, arrive
 * merged into one grey "[N narrow frames]" box per caller. A graph of 10,000 distinct deep
 * stacks is then a few hundred kilobytes instead of over ten megabytes, and the page never
 * parses or lays out frames nobody can see. The SVG, folded and JSON links have them all.
 */
const MIN_WIDTH = '0.0005';

/** Subtasks offered at a time by the subtask selector (a vertex may have 32,768). */
const SUBTASK_PAGE = 100;

function vertexPage(root, page, jid, vid, params) {
  const state = {
    type: TYPES.some((t) => t.value === (params.get('type') || '').toLowerCase()) ? params.get('type').toLowerCase() : 'on_cpu',
    subtask: /^\d+$/.test(params.get('subtask') || '') ? params.get('subtask') : '',
    endTimestamp: null, // of the graph on screen
    reasonsKey: null, // the absent subtasks and reasons the note above it shows
    generation: 0, // bumped when type or subtask changes; answers to older requests are dropped
  };

  const crumbs = h('div', {}, breadcrumbs({ label: 'Overview', href: '#/' }, { label: jid, href: `#/jobs/${enc(jid)}` }, { label: vid }));
  const title = pageHeading('Vertex');
  const meta = h('p', { class: 'summary' });
  const banner = h('div');
  const infoError = h('div');

  const typeRadios = TYPES.map((t) => h('label', { class: 'radio' },
    h('input', { type: 'radio', name: 'fg-type', value: t.value, checked: t.value === state.type, 'aria-describedby': `fg-type-${t.value}` }),
    ' ', t.label, h('span', { class: 'visually-hidden', id: `fg-type-${t.value}` }, `: ${t.help}`)));
  const typeSet = h('fieldset', { class: 'types' }, h('legend', {}, 'Thread state'), typeRadios);
  const subtaskSelect = h('select', { id: 'fg-subtask', name: 'subtask' }, h('option', { value: '' }, 'All subtasks'));
  // Beyond SUBTASK_PAGE subtasks the selector offers one page of them at a time.
  const subtaskPrev = h('button', { type: 'button', class: 'button secondary', id: 'fg-subtask-prev', 'aria-controls': 'fg-subtask', hidden: true },
    '‹', h('span', { class: 'visually-hidden' }, ` previous ${SUBTASK_PAGE} subtasks`));
  const subtaskNext = h('button', { type: 'button', class: 'button secondary', id: 'fg-subtask-next', 'aria-controls': 'fg-subtask', hidden: true },
    '›', h('span', { class: 'visually-hidden' }, ` next ${SUBTASK_PAGE} subtasks`));
  const subtaskRange = h('span', { class: 'sub', id: 'fg-subtask-range', 'aria-live': 'polite' });
  const refreshButton = h('button', { type: 'button', class: 'button', id: 'fg-refresh', 'aria-controls': 'flamegraph' }, 'Refresh');
  const search = h('input', { type: 'search', id: 'fg-search', placeholder: 'function name or regex', autocomplete: 'off', spellcheck: 'false' });
  const resetZoom = h('button', { type: 'button', class: 'button secondary', disabled: true }, 'Reset zoom');
  const links = h('p', { class: 'views' });
  const status = h('p', { class: 'fg-status', role: 'status', 'aria-live': 'polite' }, 'Loading…');
  const age = h('span', { class: 'fg-age' });
  const missing = h('div');
  const matchInfo = h('p', { class: 'fg-match', 'aria-live': 'polite' });
  const fgError = h('div');
  const chartBox = h('div', { class: 'flamegraph', id: 'flamegraph' });
  const compare = h('p', { class: 'views', id: 'fg-compare' });
  const historyBody = h('tbody', { id: 'fg-history' }, emptyRow(5, 'No run kept yet.'));
  const historyError = h('div');

  root.append(crumbs, title, meta, banner, infoError,
    h('section', { 'aria-labelledby': 'fg-h', class: 'fg-section' },
      h('h2', { id: 'fg-h' }, 'Flame graph'),
      h('form', { class: 'controls', onsubmit: (e) => e.preventDefault() },
        typeSet,
        h('div', { class: 'field' }, h('label', { for: 'fg-subtask' }, 'Subtask'),
          h('div', { class: 'pager' }, subtaskPrev, subtaskSelect, subtaskNext, subtaskRange)),
        h('div', { class: 'field' }, h('label', { for: 'fg-search' }, 'Highlight'), search),
        h('div', { class: 'field buttons' }, refreshButton, resetZoom)),
      h('div', { class: 'fg-head' }, status, age),
      fgError, missing, matchInfo, links,
      chartBox,
      h('p', { class: 'hint' }, 'Root at the top, callees below; width is the share of samples. ',
        'Frames narrower than 1/2000 of the graph are merged into a grey “[N narrow frames]” box per caller (the SVG and JSON views have them all). ',
        'Click a frame (or press Enter on it) to zoom in, Escape to zoom out. ',
        'Arrow keys move between frames: up to the caller, down to the busiest callee, left and right to neighbours.')),
    h('section', { 'aria-labelledby': 'fg-history-h', class: 'fg-section' },
      h('h2', { id: 'fg-history-h' }, 'Recent runs'),
      h('p', { class: 'hint' }, 'The coordinator keeps the last few sampling runs (--flamegraph-history). ',
        'A differential graph shows what changed: red grew, blue shrank.'),
      compare, historyError,
      table('Recent sampling runs of this vertex, newest first',
        ['Ended', 'Samples', 'Threads', 'Views', 'Compare'], historyBody)));

  const chart = new FlameGraph(chartBox, {
    onZoom: (zoomed) => { resetZoom.disabled = !zoomed; },
    onMatch: (text) => { matchInfo.textContent = text; },
  });
  page.onStop(() => chart.destroy());
  resetZoom.addEventListener('click', () => chart.resetZoom());
  search.addEventListener('input', () => chart.highlight(search.value));

  const query = () => {
    const q = new URLSearchParams({ type: state.type });
    if (state.subtask !== '') q.set('subtaskindex', state.subtask);
    return q.toString();
  };
  const base = `jobs/${enc(jid)}/vertices/${enc(vid)}/flamegraph`;
  const updateLinks = () => {
    const q = query();
    fill(links, 'Other views of this graph: ',
      h('a', { href: `${base}.svg?${q}`, target: '_blank', rel: 'noopener' }, 'SVG'), ' · ',
      h('a', { href: `${base}.folded?${q}`, target: '_blank', rel: 'noopener' }, 'folded stacks'), ' · ',
      h('a', { href: `${base}?${q}`, target: '_blank', rel: 'noopener' }, 'JSON'));
    // Keep the choice in the location so a reload or a shared link shows the same graph.
    const hashQuery = new URLSearchParams({ type: state.type });
    if (state.subtask !== '') hashQuery.set('subtask', state.subtask);
    history.replaceState(null, '', `#/jobs/${enc(jid)}/vertices/${enc(vid)}?${hashQuery}`);
  };
  updateLinks();

  // Kept runs (newest first), reloaded whenever a new run is on screen or the choice changes.
  // The first row is the latest run; "compare with previous run" diffs it against the second.
  let historyGeneration = 0;
  const loadHistory = async () => {
    const mine = ++historyGeneration;
    const q = query();
    let runs;
    try {
      runs = (await api(`${base}/history?${q}`, page.signal)).runs || [];
    } catch (e) {
      if (e.name === 'AbortError' || mine !== historyGeneration) return;
      fill(historyError, errorBox('The list of kept runs could not be loaded:', e));
      return;
    }
    if (page.stopped || mine !== historyGeneration) return;
    fill(historyError);
    const diffHref = (baseTs, atTs) => `${base}/diff.svg?${q}&base=${baseTs}${atTs ? `&at=${atTs}` : ''}`;
    fill(compare, ...(runs.length >= 2
      ? [h('a', { class: 'button', id: 'fg-compare-previous', href: diffHref(runs[1].endTimestamp, runs[0].endTimestamp), target: '_blank', rel: 'noopener' },
        'Compare with previous run'), ` (${fmtTime(runs[1].endTimestamp)} → ${fmtTime(runs[0].endTimestamp)})`]
      : ['Compare with previous run: available once a second run is kept.']));
    fill(historyBody, ...(runs.length ? runs.map((r, i) => h('tr', {},
      h('td', {}, fmtTime(r.endTimestamp), i === 0 ? ' (latest)' : ''),
      h('td', { class: 'num' }, String(r.samples)),
      h('td', { class: 'num' }, String(r.threads)),
      h('td', {},
        h('a', { href: `${base}.svg?${q}&at=${r.endTimestamp}`, target: '_blank', rel: 'noopener' }, 'SVG'), ' · ',
        h('a', { href: `${base}.folded?${q}&at=${r.endTimestamp}`, target: '_blank', rel: 'noopener' }, 'folded'), ' · ',
        h('a', { href: `${base}?${q}&at=${r.endTimestamp}`, target: '_blank', rel: 'noopener' }, 'JSON')),
      h('td', {}, i === 0 ? '' : h('a', { href: diffHref(r.endTimestamp, runs[0].endTimestamp), target: '_blank', rel: 'noopener' }, 'diff → latest'))))
      : [emptyRow(5, 'No run kept yet.')]));
  };

  // The age line ticks every second without asking the server.
  const tickAge = () => {
    age.textContent = state.endTimestamp > 0 ? `measured ${fmtAgo(state.endTimestamp)}` : '';
    page.later(1000, tickAge);
  };
  tickAge();

  // The flame graph poll. Every answer says (header X-Flamegrid-Sampling) whether a sampling run
  // for this graph is in flight: the first one (no graph yet, endTimestamp -3), one the server
  // started because the cached graph grew older than its refresh interval, or one the Refresh
  // button asked for (refresh=true). While one is, the old graph stays on screen under a
  // "Sampling…" status and the page polls every second; the answer after the run has the new
  // graph. The status line is rewritten after every answer, so no message outlives its cause.
  let sampling = false;
  let refreshWanted = false;
  const samplesText = (graph) => {
    const total = Number(graph.data.value) || 0;
    return `${total} sample${total === 1 ? '' : 's'}, ${TYPES.find((t) => t.value === state.type).label}`;
  };
  const flamePoll = page.poll(async () => {
    const generation = state.generation;
    const q = new URLSearchParams(query());
    q.set('minWidth', MIN_WIDTH);
    const asked = refreshWanted;
    if (asked) q.set('refresh', 'true');
    let graph;
    let headers;
    try {
      ({ body: graph, headers } = await apiWithHeaders(`${base}?${q}`, page.signal));
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      if (generation !== state.generation) return;
      sampling = false;
      fill(fgError, errorBox('The flame graph could not be loaded:', e));
      status.textContent = '';
      status.classList.remove('busy');
      chartBox.classList.remove('sampling');
      chartBox.removeAttribute('aria-busy');
      delete chartBox.dataset.sampling;
      return;
    }
    if (page.stopped || generation !== state.generation) return;
    if (asked) refreshWanted = false;
    fill(fgError);
    const ts = Number(graph.endTimestamp);
    sampling = headers.get('X-Flamegrid-Sampling') === 'true' || ts === -3;
    chartBox.classList.toggle('sampling', sampling);
    chartBox.dataset.sampling = String(sampling);
    if (sampling) chartBox.setAttribute('aria-busy', 'true');
    else chartBox.removeAttribute('aria-busy');
    if (ts < 0 || !graph.data) {
      state.endTimestamp = null;
      state.reasonsKey = null;
      age.textContent = '';
      status.textContent = SENTINELS[String(ts)] || `No graph (endTimestamp ${ts}).`;
      status.classList.remove('busy');
      chartBox.dataset.state = ts === -3 ? 'sampling' : 'none';
      // -3 after a run in which nothing delivered carries why (missing, missingReasons).
      fill(missing, ...missingNote(graph));
      chart.clear(ts === -3 ? 'Sampling… the graph appears here as soon as the run is done.' : '');
      return;
    }
    chartBox.dataset.state = 'ready';
    // The note follows every answer: a later run that delivered nothing changes the reasons
    // beside an unchanged graph. Rewritten only when they change.
    const reasonsKey = JSON.stringify([graph.missing, graph.missingReasons, graph.latestRunEndTimestamp]);
    const newRun = ts !== state.endTimestamp;
    if (newRun || reasonsKey !== state.reasonsKey) {
      state.reasonsKey = reasonsKey;
      // Before the graph is drawn, so that the note shows whatever the drawing does.
      fill(missing, ...missingNote(graph));
    }
    // Like Flink's UI: redraw only when a new run landed (endTimestamp changed).
    if (newRun) {
      state.endTimestamp = ts;
      chart.setData(graph.data, state.type);
      loadHistory();
      age.textContent = `measured ${fmtAgo(ts)}`;
    }
    // Only rewrite the live region when its text changes, so a screen reader hears each
    // change once rather than once a second.
    const text = sampling
      ? `Sampling… a new run is in flight; the graph below (${samplesText(graph)}) is replaced when it is done.`
      : `${samplesText(graph)}.`;
    if (status.textContent !== text) status.textContent = text;
    status.classList.toggle('busy', sampling);
  }, () => (sampling || refreshWanted ? 1000 : refreshInterval()));

  const restart = () => {
    state.generation++;
    state.endTimestamp = null;
    sampling = false;
    refreshWanted = false;
    status.textContent = 'Loading…';
    age.textContent = '';
    updateLinks();
    flamePoll.poke();
  };
  typeSet.addEventListener('change', (e) => {
    if (e.target.name === 'fg-type') { state.type = e.target.value; restart(); }
  });
  subtaskSelect.addEventListener('change', () => { state.subtask = subtaskSelect.value; restart(); });
  refreshButton.addEventListener('click', () => {
    // refresh=true starts a new run now (unless one is in flight); the answer comes at once
    // and its X-Flamegrid-Sampling header switches the page to "Sampling…" until the run ends.
    refreshWanted = true;
    status.textContent = 'Starting a new sampling run…';
    flamePoll.poke();
  });

  // The subtask selector: "All subtasks" and one page of SUBTASK_PAGE subtasks (the page of the
  // chosen one to begin with), with buttons to the neighbouring pages. Only the page on screen
  // is compared between polls and rebuilt, so 10,000 subtasks cost what 100 do.
  let subtasks = [];
  let subtaskPage = state.subtask === '' ? 0 : Math.floor(Number(state.subtask) / SUBTASK_PAGE);
  let subtaskSignature = '';
  const drawSubtasks = () => {
    const pages = Math.max(1, Math.ceil(subtasks.length / SUBTASK_PAGE));
    subtaskPage = Math.min(Math.max(0, subtaskPage), pages - 1);
    const from = subtaskPage * SUBTASK_PAGE;
    const shown = subtasks.slice(from, from + SUBTASK_PAGE);
    const signature = `${subtasks.length}/${subtaskPage}/${state.subtask}/` +
      shown.map((s) => `${s.subtask},${s.status},${s['taskmanager-id']}`).join(';');
    if (signature === subtaskSignature) return;
    subtaskSignature = signature;
    const option = (s) => h('option', { value: String(s.subtask) },
      `#${s.subtask} · ${s.status}${s['taskmanager-id'] ? ` · ${s['taskmanager-id']}` : ''}`);
    const keep = state.subtask;
    const chosen = keep === '' ? null : subtasks.find((s) => String(s.subtask) === keep);
    const off = chosen && !shown.includes(chosen) ? [option(chosen)] : [];
    fill(subtaskSelect, h('option', { value: '' }, 'All subtasks'), ...off, ...shown.map(option));
    subtaskSelect.value = chosen ? keep : '';
    const paged = subtasks.length > SUBTASK_PAGE;
    subtaskPrev.hidden = subtaskNext.hidden = subtaskRange.hidden = !paged;
    subtaskPrev.disabled = subtaskPage === 0;
    subtaskNext.disabled = subtaskPage >= pages - 1;
    subtaskRange.textContent = paged && shown.length
      ? `subtasks ${shown[0].subtask}–${shown[shown.length - 1].subtask} of ${subtasks.length}` : '';
    if (subtaskSelect.value !== state.subtask) { state.subtask = subtaskSelect.value; restart(); }
  };
  subtaskPrev.addEventListener('click', () => { subtaskPage--; drawSubtasks(); });
  subtaskNext.addEventListener('click', () => { subtaskPage++; drawSubtasks(); });

  // Vertex name, status and subtasks, polled at the dashboard's refresh interval. The vertex's
  // details list every subtask (some 570 bytes each, megabytes for 10,000): they are asked for
  // once per thousand subtasks' worth of polls, the small job answer every time.
  let ticks = 0;
  let lastName = '';
  page.poll(async () => {
    const detailsDue = ticks++ % Math.max(1, Math.ceil(subtasks.length / 1000)) === 0;
    const [job, vertex] = await Promise.allSettled([
      api(`jobs/${enc(jid)}`, page.signal),
      detailsDue ? api(`jobs/${enc(jid)}/vertices/${enc(vid)}`, page.signal) : Promise.resolve(null)]);
    if (page.stopped) return;
    const problems = [job, vertex].filter((r) => r.status === 'rejected' && r.reason.name !== 'AbortError');
    fill(infoError, ...problems.map((r) => errorBox('Vertex details could not be loaded:', r.reason)));
    let name = vid;
    let vstatus = null;
    let parallelism = null;
    if (job.status === 'fulfilled') {
      const v = (job.value.vertices || []).find((x) => x.id === vid);
      fill(crumbs, breadcrumbs({ label: 'Overview', href: '#/' },
        { label: job.value.name || jid, href: `#/jobs/${enc(jid)}` }, { label: v ? v.name : vid }));
      if (v) { name = v.name || vid; vstatus = v.status; parallelism = v.parallelism; }
    }
    if (vertex.status === 'fulfilled' && vertex.value === null) {
      name = lastName || name; // not asked this time
    } else if (vertex.status === 'fulfilled') {
      name = vertex.value.name || name;
      lastName = vertex.value.name || '';
      parallelism = vertex.value.parallelism ?? parallelism;
      subtasks = Array.isArray(vertex.value.subtasks) ? vertex.value.subtasks : [];
      drawSubtasks();
    }
    document.title = `${name} · flamegrid`;
    fill(title, name, ' ', vstatus ? statusBadge(vstatus) : '');
    fill(meta, parallelism !== null ? `Parallelism ${parallelism}` : '', ' · ',
      h('span', { class: 'mono' }, vid));
    const running = vstatus === null || vstatus === 'RUNNING' || vstatus === 'INITIALIZING';
    fill(banner, ...(running ? [] : [h('div', { class: 'warning', role: 'note' },
      'Operator is not running or initializing. Cannot sample flame graph.')]));
  }, refreshInterval);
}

// ---------------------------------------------------------------------------------------------
// Task manager page: details and thread dump

function taskManagerPage(root, page, tmid) {
  const title = pageHeading(tmid);
  const error = h('div');
  const meta = h('dl', { class: 'meta' });
  const dumpError = h('div');
  const dumpInfo = h('p', { class: 'summary', role: 'status' }, 'Loading thread dump…');
  const dump = h('pre', { class: 'thread-dump', tabindex: '0', 'aria-label': 'Thread dump' });
  const reload = h('button', { type: 'button', class: 'button' }, 'Take a new thread dump');
  root.append(breadcrumbs({ label: 'Overview', href: '#/' }, { label: `Task manager ${tmid}` }), title, error, meta,
    h('section', { 'aria-labelledby': 'dump-h' },
      h('h2', { id: 'dump-h' }, 'Thread dump'),
      h('p', { class: 'hint' }, 'The stacks of the threads this agent watches for registered jobs, read once per request.'),
      reload, dumpError, dumpInfo, dump));

  page.poll(async () => {
    let tm;
    try {
      tm = await api(`taskmanagers/${enc(tmid)}`, page.signal);
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      fill(error, errorBox('The task manager could not be loaded:', e));
      return;
    }
    if (page.stopped) return;
    fill(error);
    const hw = tm.hardware || {};
    const host = hostOf(tm);
    const hb = heartbeatAge(tm.timeSinceLastHeartbeat);
    fill(title, host || tm.id);
    document.title = `${host || tm.id} · flamegrid`;
    fill(meta, 
      h('dt', {}, 'Host'), h('dd', { class: 'tm-host' }, host || '–'),
      h('dt', {}, 'Id'), h('dd', { class: 'mono' }, tm.id),
      h('dt', {}, 'Address'), h('dd', { class: 'mono' }, tm.path || '–'),
      tm.os ? [h('dt', {}, 'Operating system'), h('dd', {}, tm.os)] : null,
      tm.kernel ? [h('dt', {}, 'Kernel'), h('dd', { class: 'mono' }, tm.kernel)] : null,
      tm.agentVersion ? [h('dt', {}, 'Agent version'), h('dd', { class: 'mono' }, tm.agentVersion)] : null,
      h('dt', {}, 'Cores'), h('dd', {}, hw.cpuCores ?? '–'),
      h('dt', {}, 'Memory'), h('dd', {}, `${fmtBytes(hw.physicalMemory)}${hw.freeMemory > 0 ? ` (${fmtBytes(hw.freeMemory)} free)` : ''}`),
      h('dt', {}, 'Last heartbeat'), h('dd', {}, hb === null ? '–' : `${fmtDuration(hb)} ago`),
      h('dt', {}, 'Slots'), h('dd', {}, `${tm.slotsNumber ?? '–'} (${tm.freeSlots ?? '–'} free)`));
  }, refreshInterval);

  const loadDump = async () => {
    reload.disabled = true;
    dumpInfo.textContent = 'Loading thread dump…';
    try {
      const answer = await api(`taskmanagers/${enc(tmid)}/thread-dump`, page.signal);
      if (page.stopped) return;
      const threads = Array.isArray(answer.threadInfos) ? answer.threadInfos : [];
      fill(dumpError);
      dumpInfo.textContent = `${threads.length} thread${threads.length === 1 ? '' : 's'}, taken ${fmtTime(Date.now())}.`;
      dump.textContent = threads.map((t) => String(t.stringifiedThreadInfo ?? t.threadName ?? '')).join('\n') || '(no threads)';
    } catch (e) {
      if (e.name === 'AbortError') return;
      dumpInfo.textContent = '';
      fill(dumpError, errorBox('The thread dump could not be taken:', e));
    } finally {
      reload.disabled = false;
    }
  };
  reload.addEventListener('click', loadDump);
  loadDump();
}

function notFoundPage(root) {
  root.append(pageHeading('Not found'),
    h('p', {}, 'The dashboard has no page at this address. ', h('a', { href: '#/' }, 'Go to the overview.')));
}

// ---------------------------------------------------------------------------------------------
// The router

let current = null;
let firstRoute = true;

function route() {
  const raw = location.hash.replace(/^#/, '');
  // Only '#/…' locations are routes; '#main' (the skip link) and the like are left alone.
  if (raw !== '' && !raw.startsWith('/')) return;
  const [path, queryString = ''] = raw.split('?');
  let parts;
  try {
    parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = null;
  }
  const params = new URLSearchParams(queryString);

  if (current) current.stop();
  const page = new Page();
  current = page;
  const root = document.getElementById('app');
  fill(root);

  if (parts && parts.length === 0) overviewPage(root, page);
  else if (parts && parts.length === 2 && parts[0] === 'jobs') jobPage(root, page, parts[1]);
  else if (parts && parts.length === 4 && parts[0] === 'jobs' && parts[2] === 'vertices') vertexPage(root, page, parts[1], parts[3], params);
  else if (parts && parts.length === 2 && parts[0] === 'taskmanagers') taskManagerPage(root, page, parts[1]);
  else notFoundPage(root);

  for (const link of document.querySelectorAll('.topbar nav a')) {
    link.toggleAttribute('aria-current', link.getAttribute('href') === '#/' && (parts || []).length === 0);
  }
  // After a navigation (not on the first load), move focus to the new page's heading so
  // keyboard and screen reader users start there instead of on a link that no longer exists.
  const heading = document.getElementById('page-title');
  if (!firstRoute) window.scrollTo(0, 0);
  if (heading && !firstRoute) heading.focus({ preventScroll: true });
  firstRoute = false;
}

async function start() {
  document.getElementById('skip-link').addEventListener('click', (e) => {
    e.preventDefault();
    const heading = document.getElementById('page-title');
    (heading || document.getElementById('main')).focus();
  });
  const conn = document.getElementById('conn');
  try {
    config = await api('config');
    conn.textContent = config['flink-version'] ? `Flink REST dialect ${config['flink-version']}` : '';
  } catch (e) {
    conn.textContent = `Coordinator unreachable: ${e.message}`;
    conn.classList.add('bad');
  }
  window.addEventListener('hashchange', route);
  route();
}

start();
