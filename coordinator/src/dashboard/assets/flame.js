// The flame graph, drawn from Flink's JSON tree ({name, value, children}, values inclusive).
//
// Layout ("icicle"): the root spans the full width of the top row; each node's children sit
// in the row below it, left-aligned in the order the server sent them (sorted by name, so the
// picture is stable between refreshes), each as wide as its share of the samples. The gap at
// the right of a node's children is its "self" time: samples whose stack ended there.
//
// Each frame wide enough for a label is an absolutely positioned <div> whose text is the
// function name (tests and find-in-page rely on that); the narrower ones, whose label could not
// be read anyway, are painted on one <canvas> under them, and the pointer finds them there
// (tooltip, click to zoom: once zoomed they are wide enough to be elements again).
// Positions are percentages of the zoomed node, so a resize needs no relayout; only the choice
// of which labels fit, and of which tiny frames to skip, depends on the pixel width.
//
// Big graphs (a vertex of 10,000 subtasks, 10,000 distinct deep stacks) stay responsive:
// * frames narrower than a pixel at the current zoom are not drawn (nor their callees): their
//   share stays in their caller's width. The dashboard also asks the coordinator to merge them
//   before they are sent (`minWidth`), into a grey "[N narrow frames]" box per caller;
// * the thousands of unlabelled frames such a graph still has cost a canvas rectangle each,
//   not an element the browser must style and lay out; at most a few dozen labelled frames
//   per row are elements;
// * the frames are drawn in slices of a few milliseconds each, one task per slice, so the page
//   never stops answering; a newer drawing (new data, a zoom, a resize) cancels one still in
//   progress; a resize by a scroll bar's width does not redraw;
// * a new tree is drawn only when the data changed (the page redraws on a new run only).
//
// Zoom: clicking a frame makes it span the full width; its ancestors stay drawn full width
// (dimmed) above it so one can click back out. Keyboard: the frames form one tab stop
// (roving tabindex); arrow keys walk the tree, Enter zooms, Escape zooms out.

const ROW_PX = 18; // height of one stack level
const MIN_PX = 1; // frames narrower than this are not drawn (nor their callees)
const LABEL_PX = 30; // frames narrower than this hide their label (it stays in the DOM)
const SLICE_MS = 12; // drawing time per task before the rest is left to the next one
const MATCH_FILL = 'hsl(300, 70%, 78%)'; // a highlighted frame (app.css .frame.match)

/** A stable 32-bit hash of a string (FNV-1a), so a function keeps its colour across redraws. */
function hash(text) {
  let x = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    x ^= text.charCodeAt(i);
    x = Math.imul(x, 0x01000193);
  }
  return x >>> 0;
}

/**
 * The fill of a frame. Warm colours for CPU and mixed graphs, blue for off-CPU (like Flink's
 * offCpuColorMapper), grey for synthetic frames. Lightness stays high enough for black text to
 * keep a contrast ratio above 4.5:1.
 */
function colour(name, type) {
  if (name === 'root' || name === '[truncated]' || name === '[unknown]' || /\+0x[0-9a-f]+$/i.test(name) ||
    /^\[\d+ narrow frames?\]$/.test(name)) {
    return 'hsl(0, 0%, 78%)';
  }
  const x = hash(name);
  if (type === 'off_cpu') return `hsl(${200 + (x % 40)}, ${60 + ((x >>> 8) % 20)}%, ${70 + ((x >>> 16) % 8)}%)`;
  return `hsl(${(x % 55)}, ${75 + ((x >>> 8) % 20)}%, ${64 + ((x >>> 16) % 10)}%)`;
}

/** Turns the search box's text into a test: a case-insensitive regex, or the literal text when
 *  it is not a valid regex. Empty → null (no highlight). */
function matcher(text) {
  const t = text.trim();
  if (!t) return null;
  try {
    const re = new RegExp(t, 'i');
    return (name) => re.test(name);
  } catch {
    const lower = t.toLowerCase();
    return (name) => name.toLowerCase().includes(lower);
  }
}

export class FlameGraph {
  /**
   * @param {HTMLElement} container  where to draw; its width is the graph's width
   * @param {{onZoom?: (zoomed: boolean) => void, onMatch?: (text: string) => void}} hooks
   */
  constructor(container, hooks = {}) {
    this.el = container;
    this.hooks = hooks;
    this.type = 'full';
    this.nodes = []; // flat, pre-order: {name, value, depth, x, parent, children: [index]}
    this.zoom = 0; // index of the node spanning the full width
    this.focused = 0; // index of the frame that holds the tab stop
    this.match = null;
    this.elements = new Map(); // node index → element, for drawn nodes
    this.rows = []; // depth → drawn node indexes, left to right
    this.painted = []; // depth → [{i, x, w}] of the frames painted on the canvas, left to right
    this.drawing = 0; // generation of the drawing in progress; a new one abandons older slices
    this.pendingFocus = null; // a frame to focus once the drawing in progress has drawn it

    this.frames = document.createElement('div');
    this.frames.className = 'fg-frames';
    this.frames.setAttribute('role', 'group');
    this.frames.setAttribute('aria-label', 'Flame graph frames');
    this.message = document.createElement('p');
    this.message.className = 'fg-message';
    this.tooltip = document.createElement('div');
    this.tooltip.className = 'fg-tooltip';
    this.tooltip.setAttribute('role', 'tooltip');
    this.tooltip.id = `fg-tooltip-${Math.floor(Math.random() * 1e9)}`;
    this.tooltip.hidden = true;
    this.canvas = document.createElement('canvas');
    this.canvas.className = 'fg-canvas';
    this.canvas.setAttribute('aria-hidden', 'true');
    this.el.replaceChildren(this.message, this.frames, this.tooltip);

    this.frames.addEventListener('click', (e) => {
      const i = this.indexOf(e.target, e);
      if (i !== null) this.zoomTo(i === this.zoom && i !== 0 ? this.nodes[i].parent : i, true);
    });
    this.frames.addEventListener('mousemove', (e) => {
      const i = this.indexOf(e.target, e);
      if (i === null) this.hideTip();
      else this.showTip(i, e.clientX, e.clientY);
    });
    this.frames.addEventListener('mouseleave', () => this.hideTip());
    this.frames.addEventListener('focusin', (e) => {
      const i = this.indexOf(e.target);
      if (i === null) return;
      this.setTabStop(i);
      const box = e.target.getBoundingClientRect();
      this.showTip(i, box.left + Math.min(box.width / 2, 40), box.bottom);
    });
    this.frames.addEventListener('focusout', () => this.hideTip());
    this.frames.addEventListener('keydown', (e) => this.onKey(e));

    this.width = 0;
    this.resizeObserver = new ResizeObserver(() => {
      const w = this.frames.clientWidth;
      // Positions are percentages: only which frames are wide enough to draw or label depends on
      // the width, so a change of a scroll bar's width (a few percent) does not redraw.
      if (w && Math.abs(w - this.width) >= Math.max(1, 0.03 * this.width)) {
        this.width = w;
        if (this.nodes.length) this.render();
      }
    });
    this.resizeObserver.observe(this.frames);
  }

  destroy() {
    this.drawing++;
    this.resizeObserver.disconnect();
  }

  /** Shows a message instead of a graph ('' for none). */
  clear(message) {
    this.drawing++;
    delete this.frames.dataset.drawing;
    this.nodes = [];
    this.elements.clear();
    this.rows = [];
    this.painted = [];
    this.frames.replaceChildren();
    this.frames.style.height = '0px';
    this.message.textContent = message || '';
    this.message.hidden = !message;
    this.hideTip();
    if (this.hooks.onZoom) this.hooks.onZoom(false);
    if (this.hooks.onMatch) this.hooks.onMatch('');
  }

  /** Draws a new tree. A zoom survives when the zoomed path still exists in the new tree. */
  setData(data, type) {
    const zoomPath = this.nodes.length ? this.pathOf(this.zoom) : [];
    this.type = type;
    this.nodes = flatten(data);
    this.zoom = this.findPath(zoomPath);
    this.focused = this.zoom;
    if (this.nodes[0].value <= 0) {
      this.clear('No samples in this view: no sampled thread was in this state while it was measured.');
      return;
    }
    this.message.hidden = true;
    this.render();
    this.reportMatch();
  }

  /** Highlights the frames whose name matches `text` (a regex or plain text). */
  highlight(text) {
    this.match = matcher(text);
    for (const [i, el] of this.elements) el.classList.toggle('match', !!this.match && this.match(this.nodes[i].name));
    const ctx = this.canvas.getContext('2d');
    for (const row of this.painted) for (const p of row || []) this.paint(ctx, p);
    this.reportMatch();
  }

  resetZoom() {
    this.zoomTo(0, true);
  }

  // --- internals ------------------------------------------------------------------------------

  /** The node under an event: its element's, or the painted frame under the pointer. */
  indexOf(target, event) {
    if (target === this.canvas && event) return this.paintedAt(event.clientX, event.clientY);
    const el = target && target.closest ? target.closest('.frame') : null;
    return el ? Number(el.dataset.i) : null;
  }

  paintedAt(clientX, clientY) {
    const box = this.canvas.getBoundingClientRect();
    const x = (clientX - box.left) * (this.width / (box.width || this.width));
    const row = this.painted[Math.floor((clientY - box.top) / ROW_PX)] || [];
    // Binary search: the last frame that starts at or left of x.
    let lo = 0;
    let hi = row.length - 1;
    let found = null;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (row[mid].x <= x) { found = row[mid]; lo = mid + 1; } else hi = mid - 1;
    }
    return found && x < found.x + Math.max(found.w, 1) ? found.i : null;
  }

  /** Paints one canvas frame in its colour, or the highlight's. */
  paint(ctx, p) {
    const n = this.nodes[p.i];
    ctx.fillStyle = this.match && this.match(n.name) ? MATCH_FILL : colour(n.name, this.type);
    ctx.fillRect(p.x, this.nodes[p.i].depth * ROW_PX, p.w >= 2 ? p.w - 1 : p.w, ROW_PX - 1);
  }

  pathOf(i) {
    const names = [];
    for (let n = i; n !== null && n !== undefined && n > 0; n = this.nodes[n].parent) names.unshift(this.nodes[n].name);
    return names;
  }

  findPath(names) {
    let at = 0;
    for (const name of names) {
      const next = this.nodes[at].children.find((c) => this.nodes[c].name === name);
      if (next === undefined) return 0;
      at = next;
    }
    return at;
  }

  zoomTo(i, keepFocus) {
    if (i === null || i === undefined || !this.nodes[i]) return;
    this.zoom = i;
    this.focused = i;
    this.render();
    if (keepFocus) this.focusNode(i);
  }

  render() {
    const generation = ++this.drawing;
    const nodes = this.nodes;
    const zoomNode = nodes[this.zoom];
    const width = this.frames.clientWidth || this.el.clientWidth || 800;
    this.width = width;
    const total = nodes[0].value;
    this.elements = new Map();
    this.rows = [];
    this.painted = [];
    let maxDepth = 0;
    let fragment = document.createDocumentFragment();
    // The canvas covers every row the zoomed subtree can reach (sized once: resizing clears it).
    let deepest = zoomNode.depth;
    for (let i = this.zoom; i < nodes.length && (i === this.zoom || nodes[i].depth > zoomNode.depth); i++) {
      if (nodes[i].depth > deepest) deepest = nodes[i].depth;
    }
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.ceil(width * ratio);
    this.canvas.height = Math.ceil((deepest + 1) * ROW_PX * ratio);
    // 100%: a small resize (no redraw) stretches it in step with the percent-placed elements.
    this.canvas.style.width = '100%';
    this.canvas.style.height = `${(deepest + 1) * ROW_PX}px`;
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    let painted = 0;

    const draw = (i, left, w, extraClass) => {
      const n = nodes[i];
      if (n.depth > maxDepth) maxDepth = n.depth;
      const px = (w / 100) * width;
      if (px < LABEL_PX && !extraClass && i !== this.zoom) {
        const p = { i, x: (left / 100) * width, w: px };
        (this.painted[n.depth] ||= []).push(p);
        this.paint(ctx, p);
        painted++;
        return;
      }
      const el = document.createElement('div');
      el.className = 'frame';
      if (extraClass) el.classList.add(extraClass);
      if (this.match && this.match(n.name)) el.classList.add('match');
      if (px < LABEL_PX) el.classList.add('narrow');
      el.dataset.i = String(i);
      el.setAttribute('role', 'button');
      el.setAttribute('tabindex', '-1');
      el.setAttribute('aria-label', `${n.name}, ${percent(n.value, total)}%, ${samples(n.value)}`);
      el.style.left = `${left}%`;
      el.style.width = `${w}%`;
      el.style.top = `${n.depth * ROW_PX}px`;
      el.style.backgroundColor = colour(n.name, this.type);
      el.textContent = n.name;
      fragment.append(el);
      this.elements.set(i, el);
      (this.rows[n.depth] ||= []).push(i);
    };

    // Ancestors of the zoomed node: full width, dimmed.
    const ancestors = [];
    for (let a = zoomNode.parent; a !== null; a = nodes[a].parent) ancestors.unshift(a);
    for (const a of ancestors) draw(a, 0, 100, 'ancestor');

    // The zoomed node and its subtree, depth first (so each row fills left to right), a slice
    // at a time: each slice appends what it drew; the last one sets the tab stop.
    const span = zoomNode.value || 1;
    const stack = [this.zoom];
    this.frames.replaceChildren(this.canvas);
    const slice = () => {
      if (generation !== this.drawing) return; // a newer drawing took over
      const until = performance.now() + SLICE_MS;
      let drawn = 0;
      while (stack.length && ((++drawn & 15) !== 0 || performance.now() < until)) {
        const i = stack.pop();
        const n = nodes[i];
        const w = (n.value / span) * 100;
        if ((w / 100) * width < MIN_PX) continue;
        draw(i, ((n.x - zoomNode.x) / span) * 100, w, null);
        for (let c = n.children.length - 1; c >= 0; c--) stack.push(n.children[c]);
      }
      this.frames.append(fragment);
      fragment = document.createDocumentFragment();
      this.frames.style.height = `${(maxDepth + 1) * ROW_PX}px`;
      this.canvas.dataset.painted = String(painted);
      if (stack.length) {
        setTimeout(slice, 0);
        return;
      }
      delete this.frames.dataset.drawing;
      if (!this.elements.has(this.focused)) this.focused = this.zoom;
      this.setTabStop(this.focused);
      const wanted = this.pendingFocus;
      this.pendingFocus = null;
      if (wanted !== null && this.elements.has(wanted)) this.focusNode(wanted);
    };
    this.pendingFocus = null;
    this.frames.dataset.drawing = 'true';
    slice();
    if (this.hooks.onZoom) this.hooks.onZoom(this.zoom !== 0);
  }

  setTabStop(i) {
    const old = this.elements.get(this.focused);
    if (old) old.setAttribute('tabindex', '-1');
    this.focused = i;
    const el = this.elements.get(i);
    if (el) el.setAttribute('tabindex', '0');
  }

  focusNode(i) {
    const el = this.elements.get(i);
    if (!el) {
      // Not drawn yet: focus it when the drawing in progress is done.
      if (this.frames.dataset.drawing) this.pendingFocus = i;
      return;
    }
    this.setTabStop(i);
    el.focus({ preventScroll: false });
  }

  onKey(e) {
    const i = this.indexOf(e.target);
    if (i === null) return;
    const n = this.nodes[i];
    let next = null;
    switch (e.key) {
      case 'ArrowUp':
        next = n.parent;
        break;
      case 'ArrowDown': {
        const drawn = n.children.filter((c) => this.elements.has(c));
        next = drawn.length ? drawn.reduce((a, b) => (this.nodes[b].value > this.nodes[a].value ? b : a)) : null;
        break;
      }
      case 'ArrowLeft':
      case 'ArrowRight': {
        const row = this.rows[n.depth] || [];
        const at = row.indexOf(i);
        next = row[at + (e.key === 'ArrowLeft' ? -1 : 1)];
        break;
      }
      case 'Home':
        next = this.zoom;
        break;
      case 'Enter':
      case ' ':
        e.preventDefault();
        this.zoomTo(i, true);
        return;
      case 'Escape': {
        if (this.zoom === 0) return;
        e.preventDefault();
        // Zoom out one level, keeping focus on the frame that was zoomed.
        const was = this.zoom;
        this.zoom = this.nodes[was].parent ?? 0;
        this.focused = was;
        this.render();
        this.focusNode(was);
        return;
      }
      default:
        return;
    }
    e.preventDefault();
    if (next !== null && next !== undefined && this.elements.has(next)) this.focusNode(next);
  }

  showTip(i, clientX, clientY) {
    const n = this.nodes[i];
    this.tooltip.textContent = `${n.name} (${percent(n.value, this.nodes[0].value)}%, ${samples(n.value)})`;
    this.tooltip.hidden = false;
    const box = this.el.getBoundingClientRect();
    const tipWidth = this.tooltip.offsetWidth;
    let left = clientX - box.left + 12;
    if (left + tipWidth > box.width) left = Math.max(0, box.width - tipWidth);
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${clientY - box.top + 14}px`;
  }

  hideTip() {
    this.tooltip.hidden = true;
  }

  reportMatch() {
    if (!this.hooks.onMatch) return;
    if (!this.match || !this.nodes.length) {
      this.hooks.onMatch('');
      return;
    }
    // Samples passing through a matching frame, each counted once (the outermost match).
    let matched = 0;
    let frames = 0;
    const stack = [0];
    while (stack.length) {
      const i = stack.pop();
      const n = this.nodes[i];
      if (i !== 0 && this.match(n.name)) {
        matched += n.value;
        frames++;
        continue;
      }
      for (const c of n.children) stack.push(c);
    }
    this.hooks.onMatch(frames
      ? `Highlighted: ${percent(matched, this.nodes[0].value)}% of samples pass through a matching frame.`
      : 'No frame matches.');
  }
}

function percent(value, total) {
  return total > 0 ? ((100 * value) / total).toFixed(3) : '0.000';
}

function samples(n) {
  return `${n} sample${n === 1 ? '' : 's'}`;
}

/** Flattens the JSON tree into pre-order nodes with their x offset (in samples) within the root.
 *  Accepts d3-flame-graph's short keys (n, v, c) too; iterative, so deep stacks cannot overflow. */
function flatten(data) {
  const nodes = [];
  const stack = [{ src: data, depth: 0, x: 0, parent: null }];
  while (stack.length) {
    const { src, depth, x, parent } = stack.pop();
    const index = nodes.length;
    const value = Math.max(0, Number(src.value ?? src.v) || 0);
    const node = { name: String(src.name ?? src.n ?? ''), value, depth, x, parent, children: [] };
    nodes.push(node);
    if (parent !== null) nodes[parent].children.push(index);
    const children = Array.isArray(src.children) ? src.children : Array.isArray(src.c) ? src.c : [];
    // Offsets left to right; pushed in reverse so the leftmost child is visited (numbered) first.
    const offsets = [];
    let at = x;
    for (const child of children) {
      offsets.push(at);
      at += Math.max(0, Number(child.value ?? child.v) || 0);
    }
    for (let c = children.length - 1; c >= 0; c--) {
      stack.push({ src: children[c], depth: depth + 1, x: offsets[c], parent: index });
    }
  }
  return nodes;
}
