// The job plan as an inline SVG: one box per vertex, one arrow per input edge.
//
// Layout: a vertex's column is its depth, the length of the longest input chain leading to it
// (sources are column 0), so every edge points to the right. Within a column, vertices keep
// the order of the job's `vertices` list (Flink sends them in topological order). The job's
// `plan.nodes[].inputs[].id` gives the edges and `vertices[]` (joined by id) the status and
// parallelism shown in each box, exactly as Flink's own dashboard joins them.

const SVG = 'http://www.w3.org/2000/svg';
const BOX_W = 230;
const BOX_H = 62;
const GAP_X = 96;
const GAP_Y = 22;
const PAD = 12;
const LANE_H = 14; // vertical room per edge routed below the boxes
const CHAR_PX = 7.4; // average glyph width of the 13px label font, for truncating names

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function truncate(text, px) {
  const max = Math.max(4, Math.floor(px / CHAR_PX));
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * Builds the plan graph for a `GET jobs/<jid>` answer.
 * @param {object} job        Flink's JobDetailsInfo (`plan.nodes`, `vertices`)
 * @param {(vid: string) => string} hrefFor  link target of a vertex
 * @returns {Element} an <svg> element, or a paragraph when the plan is empty
 */
export function drawPlan(job, hrefFor) {
  const vertices = Array.isArray(job.vertices) ? job.vertices : [];
  const planNodes = job.plan && Array.isArray(job.plan.nodes) ? job.plan.nodes : [];
  const byId = new Map();
  // Vertices first (they carry status), then plan nodes for anything the vertex list lacks.
  vertices.forEach((v, order) => byId.set(v.id, { id: v.id, name: v.name, status: v.status, parallelism: v.parallelism, order, inputs: [] }));
  planNodes.forEach((n, k) => {
    if (!byId.has(n.id)) {
      const description = String(n.description || n.operator || n.id).replace(/<br\/?>/g, ' ').replace(/<[^>]*>/g, '');
      byId.set(n.id, { id: n.id, name: description, status: null, parallelism: n.parallelism, order: vertices.length + k, inputs: [] });
    }
    byId.get(n.id).inputs = (Array.isArray(n.inputs) ? n.inputs : [])
      .map((input) => ({ id: input.id, label: input.ship_strategy || '' }))
      .filter((input) => byId.has(input.id) || planNodes.some((p) => p.id === input.id));
  });
  const nodes = [...byId.values()];
  if (!nodes.length) {
    const p = document.createElement('p');
    p.textContent = 'This job has no vertices.';
    return p;
  }

  // Depth = longest chain of inputs; a cycle (which a valid plan never has) is cut where found.
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id) || !byId.has(id)) return -1;
    visiting.add(id);
    const d = Math.max(-1, ...byId.get(id).inputs.map((i) => depthOf(i.id))) + 1;
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  const columns = [];
  for (const n of [...nodes].sort((a, b) => a.order - b.order)) (columns[depthOf(n.id)] ||= []).push(n);

  const position = new Map();
  const rows = Math.max(...columns.map((c) => (c ? c.length : 0)));
  // Edges that skip a column run in lanes below the boxes instead of through the boxes between.
  const longEdges = nodes.reduce((count, n) => count + n.inputs.filter((i) => depth.get(n.id) - (depth.get(i.id) ?? 0) > 1).length, 0);
  const boxesHeight = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y;
  const height = boxesHeight + longEdges * LANE_H;
  columns.forEach((column, c) => {
    if (!column) return;
    // Centre shorter columns vertically.
    const offset = ((rows - column.length) * (BOX_H + GAP_Y)) / 2;
    column.forEach((n, r) => position.set(n.id, { x: PAD + c * (BOX_W + GAP_X), y: PAD + offset + r * (BOX_H + GAP_Y) }));
  });
  const width = PAD * 2 + columns.length * BOX_W + (columns.length - 1) * GAP_X;

  const root = svg('svg', {
    class: 'plan-graph', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group',
    'aria-label': `Plan of ${job.name || 'the job'}: ${nodes.length} vertices`,
  });
  root.append(svg('defs', {}, svg('marker', {
    id: 'plan-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
  }, svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'plan-arrowhead' }))));

  const edges = svg('g', { class: 'plan-edges' });
  let lane = 0;
  for (const n of nodes) {
    const to = position.get(n.id);
    for (const input of n.inputs) {
      const from = position.get(input.id);
      if (!from || !to) continue;
      const x1 = from.x + BOX_W;
      const y1 = from.y + BOX_H / 2;
      const x2 = to.x - 2;
      const y2 = to.y + BOX_H / 2;
      let d;
      let labelAt;
      if (depth.get(n.id) - depth.get(input.id) > 1) {
        // Down into a lane under the boxes, across, and up into the target.
        const ly = boxesHeight - PAD / 2 + lane * LANE_H + LANE_H / 2;
        lane++;
        const r = GAP_X / 3;
        d = `M${x1},${y1} C${x1 + r},${y1} ${x1 + r},${ly} ${x1 + 2 * r},${ly} L${x2 - 2 * r},${ly} C${x2 - r},${ly} ${x2 - r},${y2} ${x2},${y2}`;
        labelAt = { x: (x1 + x2) / 2, y: ly - 3 };
      } else {
        const mx = (x1 + x2) / 2;
        d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
        labelAt = { x: mx, y: (y1 + y2) / 2 - 5 };
      }
      edges.append(svg('path', { d, class: 'plan-edge', 'marker-end': 'url(#plan-arrow)' }));
      if (input.label) edges.append(svg('text', { x: labelAt.x, y: labelAt.y, class: 'plan-edge-label', 'text-anchor': 'middle' }, input.label));
    }
  }
  root.append(edges);

  // Boxes are links (<a> inside SVG is focusable and follows href), each with a full-name <title>.
  const boxes = svg('g', { class: 'plan-vertices' });
  for (const n of nodes) {
    const { x, y } = position.get(n.id);
    const status = n.status || 'UNKNOWN';
    const name = String(n.name || n.id);
    const line2 = `${status} · parallelism ${n.parallelism ?? '?'}`;
    const link = svg('a', { href: hrefFor(n.id), class: `plan-vertex status-${status.toLowerCase()}`, 'aria-label': `${name}: ${line2}. Open its flame graph.` },
      svg('title', {}, `${name}\n${line2}`),
      svg('rect', { x, y, width: BOX_W, height: BOX_H, rx: 6, ry: 6, class: 'plan-box' }),
      svg('rect', { x, y, width: 6, height: BOX_H, rx: 3, ry: 3, class: 'plan-status-bar' }),
      svg('text', { x: x + 16, y: y + 25, class: 'plan-name' }, truncate(name, BOX_W - 26)),
      svg('text', { x: x + 16, y: y + 45, class: 'plan-detail' }, line2));
    boxes.append(link);
  }
  root.append(boxes);
  return root;
}
