// sluice dashboard: fetches /api/graph and draws it as inline SVG. No libraries, nothing loaded
// from elsewhere. Every node and edge carries stable data-* attributes (data-node, data-edge) so
// that tests can read the drawing from the DOM.
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const REFRESH_MS = Number(document.querySelector('meta[name="sluice-refresh-ms"]').content) || 5000;
  const COL = 160;      // distance between layers
  const TERMINAL_GAP = 60; // extra room before the external column (labels of converging edges)
  const ROW = 112;      // distance between nodes of one layer
  const MARGIN_X = 70;
  const MARGIN_Y = 60;
  const R = 20;         // node radius
  const TERMINAL = new Set(['external', 'passthrough', 'blackhole']);

  const $ = (id) => document.getElementById(id);
  const windowSelect = $('window');
  const params = new URLSearchParams(location.search);
  if (params.get('window')) {
    const w = params.get('window');
    if (![...windowSelect.options].some((o) => o.value === w)) {
      const o = document.createElement('option');
      o.value = w; o.textContent = w;
      windowSelect.appendChild(o);
    }
    windowSelect.value = w;
  }
  let refreshes = 0;
  let timer = null;

  windowSelect.addEventListener('change', () => {
    const p = new URLSearchParams(location.search);
    p.set('window', windowSelect.value);
    history.replaceState(null, '', '?' + p.toString());
    load();
  });

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    if (parent) parent.appendChild(e);
    return e;
  }

  function domId(prefix, id) {
    return prefix + id.replace(/[^A-Za-z0-9_-]/g, '_');
  }

  // --- formatting -------------------------------------------------------------------------------
  function fmtRate(v) {
    if (v === null || v === undefined) return '0';
    if (v === 0) return '0';
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    if (v >= 0.01) return v.toFixed(2);
    return '<0.01';
  }
  function fmtPct(v) {
    if (!v) return '0%';
    if (v < 10) return v.toFixed(1).replace(/\.0$/, '') + '%';
    return v.toFixed(0) + '%';
  }
  function fmtMs(v) {
    if (v === null || v === undefined) return null;
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + ' s';
    if (v >= 10) return v.toFixed(0) + ' ms';
    return v.toFixed(1).replace(/\.0$/, '') + ' ms';
  }
  function fmtBytes(v) {
    if (!v) return '0 B/s';
    const units = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }

  // One or two lines of text for an edge; the first joined with the second is the full label.
  function edgeLines(e) {
    if (e.protocol === 'tcp') {
      return [fmtBytes(e.tcp_bytes_per_sec), fmtRate(e.tcp_connections_per_sec) + ' conn/s'];
    }
    const lines = [fmtRate(e.rps) + ' rps · ' + fmtPct(e.error_rate) + ' err'];
    const p99 = fmtMs(e.p99_ms);
    if (p99) lines.push('p99 ' + p99);
    return lines;
  }

  // --- layout: layered, deterministic -----------------------------------------------------------
  // Layer = longest path from a node without callers (bounded, so cycles end); external hosts,
  // PassthroughCluster and BlackHoleCluster share the rightmost layer. Within a layer, nodes are
  // ordered by the mean position of their callers, then by id.
  function layout(graph) {
    const ids = graph.nodes.map((n) => n.id).sort();
    const kind = new Map(graph.nodes.map((n) => [n.id, n.kind]));
    const layer = new Map(ids.map((id) => [id, 0]));
    const edges = graph.edges.filter((e) => layer.has(e.source) && layer.has(e.target) && e.source !== e.target);
    const terminal = (id) => TERMINAL.has(kind.get(id));
    for (let round = 0; round < ids.length; round++) {
      let changed = false;
      for (const e of edges) {
        if (terminal(e.target)) continue;
        const want = layer.get(e.source) + 1;
        if (want > layer.get(e.target) && want < ids.length) {
          layer.set(e.target, want);
          changed = true;
        }
      }
      if (!changed) break;
    }
    let maxLayer = 0;
    for (const id of ids) if (!terminal(id)) maxLayer = Math.max(maxLayer, layer.get(id));
    const hasTerminal = ids.some(terminal);
    for (const id of ids) if (terminal(id)) layer.set(id, ids.every(terminal) ? 0 : maxLayer + 1);
    const layers = [];
    for (const id of ids) {
      const l = layer.get(id);
      (layers[l] = layers[l] || []).push(id);
    }
    const callers = new Map(ids.map((id) => [id, []]));
    for (const e of edges) callers.get(e.target).push(e.source);
    const index = new Map();
    layers.forEach((col) => {
      if (!col) return;
      const key = (id) => {
        const ps = callers.get(id).filter((p) => index.has(p));
        return ps.length ? ps.reduce((s, p) => s + index.get(p), 0) / ps.length : -1;
      };
      col.sort((a, b) => key(a) - key(b) || (a < b ? -1 : a > b ? 1 : 0));
      col.forEach((id, i) => index.set(id, i));
    });
    const tallest = Math.max(1, ...layers.map((c) => (c ? c.length : 0)));
    const pos = new Map();
    layers.forEach((col, l) => {
      if (!col) return;
      const offset = ((tallest - col.length) * ROW) / 2;
      const extra = hasTerminal && l === layers.length - 1 && l > 0 ? TERMINAL_GAP : 0;
      col.forEach((id, i) => pos.set(id, { x: MARGIN_X + l * COL + extra, y: MARGIN_Y + offset + i * ROW, layer: l }));
    });
    const columns = layers.length || 1;
    return {
      pos,
      width: MARGIN_X * 2 + (columns - 1) * COL + (hasTerminal && columns > 1 ? TERMINAL_GAP : 0),
      height: MARGIN_Y * 2 + (tallest - 1) * ROW + 30,
      hasTerminal,
    };
  }

  // --- drawing ----------------------------------------------------------------------------------
  function drawShape(kind, g) {
    switch (kind) {
      case 'workload':
        return el('circle', { r: R, class: 'shape workload' }, g);
      case 'service':
        return el('path', { d: `M0,${-R - 3} L${R + 2},${R - 4} L${-R - 2},${R - 4} z`, class: 'shape service' }, g);
      case 'external':
      case 'passthrough':
      case 'blackhole':
        return el('rect', { x: -R + 2, y: -R + 2, width: 2 * R - 4, height: 2 * R - 4, class: 'shape ' + kind }, g);
      default:
        return el('path', { d: `M0,${-R} L${R},0 L0,${R} L${-R},0 z`, class: 'shape unknown' }, g);
    }
  }

  function subtitle(n) {
    switch (n.kind) {
      case 'workload': return n.namespace + (n.sidecar ? '' : ' · no sidecar');
      case 'service': return n.namespace;
      case 'external': return n.namespace ? 'ServiceEntry · ' + n.namespace : 'external';
      case 'passthrough': return 'ALLOW_ANY';
      case 'blackhole': return 'blocked';
      default: return 'no telemetry';
    }
  }

  function drawNode(n, p, parent) {
    const g = el('g', {
      id: domId('node-', n.id),
      class: 'node ' + n.kind + (n.kind === 'workload' && !n.sidecar ? ' no-sidecar' : ''),
      'data-node': n.id,
      'data-kind': n.kind,
      'data-namespace': n.namespace || '',
      'data-rps-in': n.rps_in,
      'data-rps-out': n.rps_out,
      transform: `translate(${p.x},${p.y})`,
    }, parent);
    const title = el('title', {}, g);
    title.textContent = [
      n.id,
      n.workloads && n.workloads.length ? 'workloads: ' + n.workloads.join(', ') : null,
      'in ' + fmtRate(n.rps_in) + ' rps · out ' + fmtRate(n.rps_out) + ' rps',
    ].filter(Boolean).join('\n');
    drawShape(n.kind, g);
    if (n.kind === 'blackhole') {
      const t = el('text', { class: 'glyph', y: 4 }, g);
      t.textContent = '×';
    } else if (n.kind === 'passthrough') {
      const t = el('text', { class: 'glyph', y: 4, style: 'fill:#e08a00' }, g);
      t.textContent = '→';
    }
    const name = el('text', { class: 'name', y: R + 16 }, g);
    name.textContent = n.label;
    const sub = el('text', { class: 'sub', y: R + 30 }, g);
    sub.textContent = subtitle(n);
    // What edge labels must not cover: the shape and the two lines under it.
    const textWidth = Math.max(measure(name, n.label.length * 7), measure(sub, 0));
    return [
      { x: p.x - R - 3, y: p.y - R - 4, w: 2 * R + 6, h: 2 * R + 8 },
      { x: p.x - textWidth / 2 - 2, y: p.y + R + 4, w: textWidth + 4, h: 30 },
    ];
  }

  function measure(text, fallback) {
    let w = 0;
    try { w = text.getBBox().width; } catch (_) { w = 0; }
    return w || fallback;
  }

  function overlap(a, b) {
    const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
    const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
    return w > 0 && h > 0 ? w * h : 0;
  }

  function bezier(c, t) {
    const u = 1 - t;
    const k = [u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t];
    return {
      x: k[0] * c[0].x + k[1] * c[1].x + k[2] * c[2].x + k[3] * c[3].x,
      y: k[0] * c[0].y + k[1] * c[1].y + k[2] * c[2].y + k[3] * c[3].y,
    };
  }

  function lockGlyph(parent, x, y) {
    const g = el('g', { class: 'lock', transform: `translate(${x},${y})` }, parent);
    el('path', { class: 'lock-shackle', d: 'M-3,-1 v-3 a3,3 0 0 1 6,0 v3' }, g);
    el('rect', { class: 'lock-body', x: -5, y: -1, width: 10, height: 7, rx: 1 }, g);
    const t = el('title', {}, g);
    t.textContent = 'mutual TLS';
    return g;
  }

  // Where along its curve an edge's label goes: the middle, unless that covers a node or an
  // earlier label; then the first free spot of a fixed list (deterministic).
  const LABEL_TS = [0.5, 0.38, 0.62, 0.28, 0.72, 0.2, 0.8];

  function drawEdge(e, pos, parent, placed) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) return;
    const cls = ['edge', e.protocol];
    if (e.idle) cls.push('idle');
    else if (e.error_rate >= 20) cls.push('err');
    else if (e.error_rate > 0) cls.push('warn');
    const lines = edgeLines(e);
    const full = lines.join(' · ');
    const g = el('g', {
      id: domId('edge-', e.id),
      class: cls.join(' '),
      'data-edge': e.id,
      'data-source': e.source,
      'data-target': e.target,
      'data-protocol': e.protocol,
      'data-rps': e.rps,
      'data-error-rate': e.error_rate,
      'data-p99-ms': e.p99_ms === null ? '' : e.p99_ms,
      'data-mtls': e.mtls ? 'true' : 'false',
      'data-label': full,
    }, parent);
    const title = el('title', {}, g);
    const codes = Object.entries(e.responses || {}).map(([c, v]) => c + ': ' + fmtRate(v) + ' rps').join(', ');
    title.textContent = e.source + ' → ' + e.target + '\n' + full +
      (e.mtls ? '\nmTLS ' + e.mtls_percent + '%' : '') + (codes ? '\n' + codes : '');
    let ctrl;
    if (b.x > a.x) {
      const x1 = a.x + R + 2, y1 = a.y, x2 = b.x - R - 5, y2 = b.y;
      const c = (x2 - x1) / 2;
      ctrl = [{ x: x1, y: y1 }, { x: x1 + c, y: y1 }, { x: x2 - c, y: y2 }, { x: x2, y: y2 }];
    } else {
      // Back or same-layer edge: loop below.
      const x1 = a.x, y1 = a.y + R + 2, x2 = b.x, y2 = b.y + R + 5;
      const dip = Math.max(y1, y2) + 70;
      ctrl = [{ x: x1, y: y1 }, { x: x1, y: dip }, { x: x2, y: dip }, { x: x2, y: y2 }];
    }
    const d = `M${ctrl[0].x},${ctrl[0].y} C${ctrl[1].x},${ctrl[1].y} ${ctrl[2].x},${ctrl[2].y} ${ctrl[3].x},${ctrl[3].y}`;
    const marker = cls.includes('err') ? 'arrow-err' : cls.includes('warn') ? 'arrow-warn' : 'arrow';
    el('path', { class: 'line', d, 'marker-end': `url(#${marker})` }, g);
    const lg = el('g', { class: 'edge-label' }, g);
    const bg = el('rect', { class: 'label-bg' }, lg);
    const text = el('text', { class: 'label', 'text-anchor': 'middle' }, lg);
    const lineHeight = 13;
    const top = -((lines.length - 1) * lineHeight) / 2 + 4;
    lines.forEach((line, i) => {
      const ts = el('tspan', { x: 0, y: top + i * lineHeight }, text);
      ts.textContent = line;
    });
    const w = measure(text, Math.max(...lines.map((l) => l.length)) * 6);
    const h = lines.length * lineHeight + 4;
    bg.setAttribute('x', -w / 2 - 4);
    bg.setAttribute('y', -h / 2);
    bg.setAttribute('width', w + 8);
    bg.setAttribute('height', h);
    if (e.mtls) lockGlyph(lg, -w / 2 - 12, -3);
    const lockW = e.mtls ? 16 : 0;
    let best = null;
    for (const t of LABEL_TS) {
      const m = bezier(ctrl, t);
      const box = { x: m.x - w / 2 - 4 - lockW, y: m.y - h / 2, w: w + 8 + lockW, h };
      const cost = placed.reduce((sum, p) => sum + overlap(box, p), 0);
      if (!best || cost < best.cost) best = { cost, m, box };
      if (cost === 0) break;
    }
    lg.setAttribute('transform', `translate(${best.m.x.toFixed(1)},${best.m.y.toFixed(1)})`);
    placed.push(best.box);
  }

  function render(graph) {
    const svg = $('graph');
    const nodesG = $('nodes');
    const edgesG = $('edges');
    nodesG.replaceChildren();
    edgesG.replaceChildren();
    const lay = layout(graph);
    const byId = new Map(graph.nodes.map((n) => [n.id, n]));
    svg.setAttribute('viewBox', `0 0 ${lay.width} ${lay.height}`);
    const avail = $('canvas').clientWidth || lay.width;
    svg.setAttribute('width', Math.min(lay.width, avail));
    svg.setAttribute('height', Math.round(lay.height * Math.min(1, avail / lay.width)));
    svg.setAttribute('data-nodes', graph.nodes.length);
    svg.setAttribute('data-edges', graph.edges.length);
    svg.setAttribute('data-generated-at', graph.generated_at);
    const placed = [];
    for (const id of [...lay.pos.keys()].sort()) placed.push(...drawNode(byId.get(id), lay.pos.get(id), nodesG));
    // Short edges first: they keep their labels in the middle.
    const span = (e) => {
      const a = lay.pos.get(e.source), b = lay.pos.get(e.target);
      return a && b ? Math.abs(b.layer - a.layer) : 0;
    };
    const ordered = [...graph.edges].sort((x, y) => span(x) - span(y) || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
    for (const e of ordered) drawEdge(e, lay.pos, edgesG, placed);
    $('empty').hidden = graph.nodes.length > 0;
    renderBlocked(graph.blocked || []);
    const t = new Date(graph.generated_at);
    $('status').textContent = `${graph.nodes.length} nodes · ${graph.edges.length} edges · window ${graph.window} · updated ${isNaN(t) ? graph.generated_at : t.toLocaleTimeString()}`;
  }

  function renderBlocked(blocked) {
    const list = $('blocked-list');
    list.replaceChildren();
    $('blocked-count').textContent = String(blocked.length);
    $('blocked-count').classList.toggle('zero', blocked.length === 0);
    $('blocked-none').hidden = blocked.length > 0;
    for (const b of blocked) {
      const item = document.createElement('div');
      item.className = 'blocked-item';
      item.dataset.blockedHost = b.host;
      const ports = (b.ports || []).map((p) => p.port + (p.protocol ? '/' + p.protocol : ''));
      item.dataset.ports = ports.join(',');
      item.dataset.count = b.count;
      const host = document.createElement('div');
      host.className = 'host';
      host.textContent = b.host + (ports.length ? ' · ' + ports.join(', ') : '');
      const meta = document.createElement('div');
      meta.className = 'meta';
      meta.textContent = `${b.count} blocked` + (b.workloads.length ? ' · from ' + b.workloads.join(', ') : '');
      const pre = document.createElement('pre');
      pre.className = 'service-entry';
      pre.textContent = b.service_entry;
      const copy = document.createElement('button');
      copy.type = 'button';
      copy.textContent = 'copy ServiceEntry';
      copy.addEventListener('click', () => {
        const done = () => { copy.textContent = 'copied'; setTimeout(() => { copy.textContent = 'copy ServiceEntry'; }, 1500); };
        if (navigator.clipboard) navigator.clipboard.writeText(b.service_entry).then(done, () => selectText(pre));
        else selectText(pre);
      });
      item.append(host, meta, pre, copy);
      list.appendChild(item);
    }
  }

  function selectText(node) {
    const r = document.createRange();
    r.selectNodeContents(node);
    const s = window.getSelection();
    s.removeAllRanges();
    s.addRange(r);
  }

  function showError(msg) {
    const box = $('error');
    box.hidden = !msg;
    box.textContent = msg || '';
    document.body.dataset.state = msg ? 'error' : 'ok';
  }

  async function load() {
    if (timer) clearTimeout(timer);
    try {
      const resp = await fetch('api/graph?window=' + encodeURIComponent(windowSelect.value), { cache: 'no-store' });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.error || resp.statusText);
      render(body);
      showError(null);
    } catch (err) {
      showError('Cannot load the graph: ' + (err && err.message ? err.message : err));
    }
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    timer = setTimeout(load, REFRESH_MS);
  }

  load();
})();
