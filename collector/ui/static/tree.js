// A trace's spans as a tree, with each span's self time and whether it lies on the critical
// path. Iterative walks only: a 10,000-deep chain must not overflow the call stack.

/** {roots, children: Map(span_id → [spans by start]), byId, root}; orphans and cycles become roots. */
export function buildTree(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    const parent = span.parent_span_id && span.parent_span_id !== span.span_id ? byId.get(span.parent_span_id) : undefined;
    if (parent) {
      if (!children.has(parent.span_id)) children.set(parent.span_id, []);
      children.get(parent.span_id).push(span);
    } else roots.push(span);
  }
  const byStart = (a, b) => a.start_time_unix_nano - b.start_time_unix_nano;
  for (const list of children.values()) list.sort(byStart);
  roots.sort(byStart);
  // Spans on a parent cycle are reachable from no root: the earliest of those becomes one.
  const seen = new Set();
  const mark = (root) => {
    const stack = [root];
    while (stack.length) {
      const span = stack.pop();
      if (seen.has(span.span_id)) continue;
      seen.add(span.span_id);
      stack.push(...(children.get(span.span_id) || []));
    }
  };
  roots.forEach(mark);
  for (const span of [...spans].sort(byStart)) {
    if (!seen.has(span.span_id)) { roots.push(span); mark(span); }
  }
  roots.sort(byStart);
  // The trace's root: the first span with no parent (others are orphans or on a cycle).
  const root = roots.find((span) => !span.parent_span_id) || roots[0];
  return {roots, children, byId, root};
}

/** Time a span spent not waiting on any child: its duration minus the union of its children. */
export function selfTimes(spans, children) {
  const out = new Map();
  for (const span of spans) {
    const start = span.start_time_unix_nano, end = span.end_time_unix_nano;
    let covered = 0, reach = start;
    for (const child of children.get(span.span_id) || []) {  // sorted by start
      const from = Math.max(child.start_time_unix_nano, reach), to = Math.min(child.end_time_unix_nano, end);
      if (to > from) { covered += to - from; reach = to; }
    }
    out.set(span.span_id, Math.max(0, end - start - covered));
  }
  return out;
}

/** Spans on the critical path: from each root, the child that finished last, then the one that
 * finished last before that one started, and so on, recursively (as Jaeger draws it). */
export function criticalPath(roots, children) {
  const onPath = new Set();
  const stack = [...roots];
  while (stack.length) {
    const span = stack.pop();
    if (onPath.has(span.span_id)) continue;
    onPath.add(span.span_id);
    const kids = [...(children.get(span.span_id) || [])].sort((a, b) => b.end_time_unix_nano - a.end_time_unix_nano);
    let point = span.end_time_unix_nano;
    for (const child of kids) {
      if (child.start_time_unix_nano >= point) continue;  // it ran while a later critical child did
      stack.push(child);
      point = child.start_time_unix_nano;
    }
  }
  return onPath;
}

/** The rows to show: a depth-first walk that skips collapsed subtrees. */
export function visibleRows(roots, children, collapsed) {
  const rows = [];
  const stack = [...roots].reverse().map((span) => [span, 0]);
  const seen = new Set();
  while (stack.length) {
    const [span, depth] = stack.pop();
    if (seen.has(span.span_id)) continue;
    seen.add(span.span_id);
    const kids = children.get(span.span_id) || [];
    rows.push({span, depth, hasChildren: kids.length > 0});
    if (!collapsed.has(span.span_id)) for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
  }
  return rows;
}

/** The trace's first start and last end (a loop: spreading 100,000 values into Math.min overflows the stack). */
export function timeBounds(spans) {
  let start = Infinity, end = -Infinity;
  for (const span of spans) {
    if (span.start_time_unix_nano < start) start = span.start_time_unix_nano;
    if (span.end_time_unix_nano > end) end = span.end_time_unix_nano;
  }
  return {start, end};
}

const USAGE = ['gen_ai.usage.input_tokens', 'gen_ai.usage.output_tokens'];

/** A span's [input, output] tokens, read as the collector reads them (bad values are 0). */
export function spanTokens(span) {
  return USAGE.map((key) => {
    const n = Number(span.attributes?.[key]);
    return Number.isFinite(n) && n > 0 ? Math.min(n, 1e12) : 0;
  });
}
