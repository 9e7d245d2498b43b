// The trace page: a summary, then a waterfall that renders only the rows in view (a trace
// of 10,000 spans keeps a few dozen rows in the DOM), with collapsible subtrees, the critical
// path, self time, events as ticks, and the details of the selected span beside it.
import {api, el, errorBox, fmtCost, fmtDuration, fmtTime, fmtTokens, TRACE_ID} from './common.js';
import {buildTree, criticalPath, selfTimes, spanTokens, timeBounds, visibleRows} from './tree.js';
import {renderDetails} from './details.js';
import {findBar} from './find.js';

const ROW_HEIGHT = 28;
const OVERSCAN = 12;

function summary(trace, spans, tree, decision) {
  const {start, end} = tree.bounds;
  const root = tree.root;
  const errors = spans.filter((s) => s.status_code === 'Error').length;
  const tokens = spans.map(spanTokens).reduce(([a, b], [c, d]) => [a + c, b + d], [0, 0]);
  const cost = spans.reduce((sum, s) => sum + (s.cost_usd || 0), 0);
  const facts = [['Start', fmtTime(start)], ['Duration', fmtDuration(end - start)], ['Spans', String(spans.length)],
    ['Errors', String(errors)], ['Tokens in → out', fmtTokens(...tokens)], ['Cost', fmtCost(cost)],
    ['Kept by', root.sampled_by ? `${root.sampled_by}${root.sample_rate > 1 ? ` (stands for ${root.sample_rate.toPrecision(3)} traces)` : ''}` : '—']];
  return el('section', {class: 'trace-summary', 'aria-label': 'Trace summary'},
    el('h1', {}, el('span', {class: 'svc'}, root.service), ' ', root.name),
    el('p', {class: 'mono muted'}, `trace ${trace.trace_id}`),
    el('dl', {class: 'facts'}, facts.map(([k, v]) => el('div', {}, el('dt', {}, k), el('dd', {}, v)))),
    decision ? el('p', {class: 'why'}, el('strong', {}, 'Why: '), decision.why) : null,
    trace.logs?.length ? el('p', {class: 'muted'}, `${trace.logs.length} log record(s) belong to this trace.`) : null);
}

/** A bar's label goes after the bar, else before it, else inside its end (white on the bar). */
function labelPlace(left, end) {
  if (end <= 70) return {inside: false, style: {left: `${end}%`}};
  return left >= 20 ? {inside: false, style: {right: `${100 - left}%`}} : {inside: true, style: {right: `${100 - end}%`}};
}

class Waterfall {
  constructor(spans, tree, onSelect) {
    this.tree = tree;
    this.onSelect = onSelect;
    this.start = tree.bounds.start;
    this.total = Math.max(1, tree.bounds.end - this.start);
    this.self = selfTimes(spans, tree.children);
    this.critical = criticalPath(tree.roots, tree.children);
    this.collapsed = new Set();
    this.focus = 0;
    this.selected = null;
    this.body = el('div', {class: 'wf-body', role: 'tree', 'aria-label': 'Spans, by start time; arrow keys move, left and right collapse and expand, Enter shows details',
      onscroll: () => this.schedule(), onkeydown: (e) => this.key(e), onclick: (e) => this.click(e)});
    this.sizer = el('div', {class: 'wf-sizer', 'aria-hidden': 'true'});
    this.body.append(this.sizer);
    this.element = el('section', {class: 'waterfall', 'aria-label': 'Waterfall'},
      el('div', {class: 'wf-head', 'aria-hidden': 'true'}, el('div', {class: 'wf-name'}, 'Service and span'),
        el('div', {class: 'wf-timeline'}, [0, 0.25, 0.5, 0.75].map((f) => el('span', {style: {left: `${f * 100}%`}}, fmtDuration(f * this.total))),
          el('span', {class: 'end'}, fmtDuration(this.total)))),
      this.body,
      el('p', {class: 'legend muted'}, [['critical', 'critical path'], ['error', 'error'], ['tick', 'event']].map(([key, text]) =>
        el('span', {class: 'legend-item'}, el('span', {class: `key ${key}`}), text))));
    this.refresh();
  }

  /** Every span in tree order, as if nothing were folded. */
  treeOrder() {
    return visibleRows(this.tree.roots, this.tree.children, new Set()).map((r) => r.span);
  }

  /** Unfold a span's ancestors, scroll to it and show it (the focus stays where it is). */
  reveal(spanId) {
    const seen = new Set();  // parent links may form a cycle
    for (let span = this.tree.byId.get(spanId); span && !seen.has(span.span_id); span = this.tree.byId.get(span.parent_span_id)) {
      seen.add(span.span_id);
      this.collapsed.delete(span.parent_span_id);
    }
    this.refresh();
    const index = this.rows.findIndex((r) => r.span.span_id === spanId);
    if (index >= 0) this.select(index, false);
  }

  highlight(spanIds) {
    this.matches = spanIds;
    this.render();
  }

  /** Fold every span with children (the roots stay open), or unfold them all. */
  foldAll(fold) {
    const roots = new Set(this.tree.roots.map((r) => r.span_id));
    this.collapsed = new Set(fold ? [...this.tree.children.keys()].filter((id) => !roots.has(id)) : []);
    this.refresh();
    this.render();
  }

  /** The rows after a fold or unfold, keeping the focus on the same span (the caller renders). */
  refresh() {
    const focused = this.rows?.[this.focus]?.span.span_id;
    this.rows = visibleRows(this.tree.roots, this.tree.children, this.collapsed);
    if (focused) this.focus = Math.max(0, this.rows.findIndex((r) => r.span.span_id === focused));
    this.sizer.style.height = `${this.rows.length * ROW_HEIGHT}px`;
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = 0; this.render(); });
  }

  render() {
    const began = performance.now();
    const top = this.body.scrollTop, height = this.body.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    const wanted = [];
    for (let i = first; i < last; i++) wanted.push(i);
    if (this.focus < first || this.focus >= last) wanted.push(this.focus);  // keeps the tree reachable by Tab
    const hadFocus = this.body.contains(document.activeElement) && document.activeElement !== this.body;
    this.body.replaceChildren(this.sizer, ...wanted.filter((i) => i < this.rows.length).map((i) => this.row(i)));
    if (hadFocus) this.body.querySelector('[tabindex="0"]')?.focus({preventScroll: true});
    if (window.tailsiftMeasure) performance.measure('tailsift:render', {start: began});  // set by benchmarks/ui.py
  }

  row(index) {
    const {span, depth, hasChildren} = this.rows[index];
    const left = ((span.start_time_unix_nano - this.start) / this.total) * 100;
    const width = Math.max(0.15, (span.duration_ns / this.total) * 100);
    const error = span.status_code === 'Error';
    const [tokensIn, tokensOut] = spanTokens(span);
    const expanded = hasChildren ? String(!this.collapsed.has(span.span_id)) : null;
    const label = labelPlace(left, left + width);
    return el('div', {class: `wf-row${error ? ' error' : ''}${this.critical.has(span.span_id) ? ' critical' : ''}${this.matches?.has(span.span_id) ? ' match' : ''}`,
      role: 'treeitem', 'aria-level': depth + 1, 'aria-expanded': expanded, 'aria-selected': String(this.selected === span.span_id),
      tabindex: index === this.focus ? 0 : -1, 'data-index': index, 'data-span': span.span_id, style: {top: `${index * ROW_HEIGHT}px`}},
    el('div', {class: 'wf-name', style: {paddingLeft: `${Math.min(depth, 30) * 14 + 4}px`}},  // deeper: aria-level says
      el('span', {class: 'toggle', 'aria-hidden': 'true'}, hasChildren ? (expanded === 'true' ? '▾' : '▸') : ''),
      el('span', {class: 'svc'}, span.service), ' ', el('span', {class: 'name'}, span.name),
      error ? el('span', {class: 'badge error'}, 'error') : null,
      tokensIn || tokensOut ? el('span', {class: 'badge tokens'}, `${tokensIn}→${tokensOut} tok`) : null,
      span.cost_usd ? el('span', {class: 'badge'}, fmtCost(span.cost_usd)) : null),
    el('div', {class: 'wf-timeline'},
      el('div', {class: 'wf-bar', style: {left: `${left}%`, width: `${width}%`}},
        (span.events || []).map((ev) => el('span', {class: 'tick', title: ev.name,
          style: {left: `${Math.min(100, Math.max(0, ((ev.time_unix_nano - span.start_time_unix_nano) / (span.duration_ns || 1)) * 100))}%`}}))),
      el('span', {class: `wf-label${label.inside ? ' inside' : ''}`, style: label.style},
        `${fmtDuration(span.duration_ns)}${hasChildren ? ` · self ${fmtDuration(this.self.get(span.span_id))}` : ''}`)));
  }

  /** Make row ``index`` the tree's current row: scrolled into view, rendered, and focused
   * unless ``focus`` is false (the find box keeps the keyboard). */
  moveTo(index, focus = true) {
    this.focus = Math.min(Math.max(0, index), this.rows.length - 1);
    const top = this.focus * ROW_HEIGHT, view = this.body.clientHeight - ROW_HEIGHT;
    if (top < this.body.scrollTop) this.body.scrollTop = top;
    else if (top > this.body.scrollTop + view) this.body.scrollTop = top - view;
    this.render();
    if (focus) this.body.querySelector(`[data-index="${this.focus}"]`)?.focus({preventScroll: true});
  }

  toggle(index, open) {
    const id = this.rows[index].span.span_id;
    if (open ?? this.collapsed.has(id)) this.collapsed.delete(id); else this.collapsed.add(id);
    this.focus = index;
    this.refresh();
    this.moveTo(this.focus);
  }

  select(index, focus = true) {
    this.selected = this.rows[index].span.span_id;
    this.moveTo(index, focus);
    this.onSelect(this.rows[index].span);
  }

  parentIndex(index) {
    const depth = this.rows[index].depth;
    for (let i = index - 1; i >= 0; i--) if (this.rows[i].depth < depth) return i;
    return index;
  }

  key(event) {
    const i = this.focus, row = this.rows[i];
    const page = Math.max(1, Math.floor(this.body.clientHeight / ROW_HEIGHT) - 1);
    const open = row && row.hasChildren && !this.collapsed.has(row.span.span_id);
    const actions = {
      ArrowDown: () => this.moveTo(i + 1), ArrowUp: () => this.moveTo(i - 1),
      PageDown: () => this.moveTo(i + page), PageUp: () => this.moveTo(i - page),
      Home: () => this.moveTo(0), End: () => this.moveTo(this.rows.length - 1),
      ArrowRight: () => (row.hasChildren && !open ? this.toggle(i, true) : open ? this.moveTo(i + 1) : null),
      ArrowLeft: () => (open ? this.toggle(i, false) : this.moveTo(this.parentIndex(i))),
      Enter: () => this.select(i), ' ': () => this.select(i),
    };
    if (!row || !actions[event.key]) return;
    event.preventDefault();
    actions[event.key]();
  }

  click(event) {
    const rowElement = event.target.closest('.wf-row');
    if (!rowElement) return;
    const index = Number(rowElement.dataset.index);
    if (event.target.closest('.toggle') && this.rows[index].hasChildren) this.toggle(index);
    else this.select(index);
  }
}

export async function renderTrace(main, traceId) {
  document.title = 'Trace · tailsift';
  if (!TRACE_ID.test(traceId)) {
    main.append(el('h1', {}, 'Trace'), errorBox(new Error(`"${traceId}" is not a trace id: it must be 32 hex characters.`)));
    return;
  }
  const [trace, decision] = await Promise.all([api(`/api/traces/${traceId.toLowerCase()}`).catch((error) => ({error})),
    api(`/api/decisions/${traceId.toLowerCase()}`).catch(() => null)]);
  if (trace.error) {
    main.append(el('h1', {}, 'Trace ', el('span', {class: 'mono'}, traceId)), errorBox(trace.error));
    return;
  }
  const spans = trace.spans;
  const tree = {...buildTree(spans), bounds: timeBounds(spans)};
  document.title = `${tree.root.name} · trace · tailsift`;
  const details = el('aside', {class: 'details', 'aria-label': 'Span details', tabindex: 0},  // scrollable: reachable by keyboard
    el('p', {class: 'muted'}, 'Select a span (click, or Enter on a row) to see its attributes, events and links.'));
  const waterfall = new Waterfall(spans, tree, (span) => renderDetails(details, span, tree, trace.logs || []));
  main.append(summary(trace, spans, tree, decision), findBar(waterfall, spans),
    el('div', {class: 'trace-layout'}, waterfall.element, details));
  waterfall.render();  // now that it has a size
  performance.mark('tailsift:waterfall');
}
