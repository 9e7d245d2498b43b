// The selected span: its status, timing, tokens and cost, GenAI messages (as stored, after
// redaction), attributes with their types, resource, events, and links to linked traces.
import {el, fmtCost, fmtDuration, fmtTokens, TRACE_ID} from './common.js';
import {selfTimes, spanTokens} from './tree.js';

/** A titled part of the panel (a named region, so it can be found by its title). */
function section(title, cls, ...children) {
  return el('section', {class: cls, 'aria-label': title}, el('h3', {}, title), ...children);
}

function typeOf(value) {
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'double';
  if (value !== null && typeof value === 'object') return 'map';
  return 'string';
}

function show(value) {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function attributeTable(caption, attributes) {
  const entries = Object.entries(attributes || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return el('p', {class: 'muted'}, `No ${caption.toLowerCase()}.`);
  return el('table', {class: 'attributes'}, el('caption', {}, caption),
    el('tbody', {}, entries.map(([key, value]) => el('tr', {},
      el('th', {scope: 'row'}, key),
      el('td', {}, el('span', {class: 'value'}, show(value)), ' ', el('span', {class: 'type'}, typeOf(value)))))));
}

/** Text of one message part in any of the shapes GenAI instrumentations write. */
function partText(part) {
  if (typeof part === 'string') return part;
  if (part?.content !== undefined) return typeof part.content === 'string' ? part.content : JSON.stringify(part.content);
  if (part?.text !== undefined) return part.text;
  return JSON.stringify(part);
}

function parseMessages(raw) {
  try {
    const value = typeof raw === 'string' ? JSON.parse(raw) : raw;
    const list = Array.isArray(value) ? value : [value];
    return list.map((m) => ({role: m.role || m.type || 'message',
      text: Array.isArray(m.parts) ? m.parts.map(partText).join('\n') : partText(m)}));
  } catch {
    return [{role: 'message', text: String(raw)}];
  }
}

/** Input and output messages from the current semantic conventions (gen_ai.input.messages),
 * the indexed attributes of OpenLLMetry and older SDKs (gen_ai.prompt.0.content), or events. */
export function genaiMessages(span) {
  const attrs = span.attributes || {};
  const input = [], output = [];
  if (attrs['gen_ai.system_instructions']) input.push(...parseMessages(attrs['gen_ai.system_instructions']).map((m) => ({...m, role: 'system'})));
  if (attrs['gen_ai.input.messages']) input.push(...parseMessages(attrs['gen_ai.input.messages']));
  if (attrs['gen_ai.output.messages']) output.push(...parseMessages(attrs['gen_ai.output.messages']));
  for (const [prefix, list] of [['gen_ai.prompt', input], ['gen_ai.completion', output]]) {
    for (let i = 0; attrs[`${prefix}.${i}.content`] !== undefined || attrs[`${prefix}.${i}.role`] !== undefined; i++) {
      list.push({role: attrs[`${prefix}.${i}.role`] || 'message', text: show(attrs[`${prefix}.${i}.content`] ?? '')});
    }
  }
  for (const event of span.events || []) {
    const match = /^gen_ai\.(system|user|assistant|tool)\.message$|^gen_ai\.(choice)$/.exec(event.name);
    if (!match) continue;
    const content = event.attributes?.content ?? event.attributes?.message ?? '';
    (match[2] ? output : input).push({role: match[1] || 'assistant', text: show(content)});
  }
  return {input, output};
}

function messages(title, list) {
  if (!list.length) return null;
  return section(title, 'messages',
    list.map((m) => el('div', {class: `message role-${String(m.role).replace(/[^a-z]/gi, '')}`},
      el('div', {class: 'role'}, m.role), el('pre', {}, m.text))));
}

function linkList(links) {
  if (!links?.length) return null;
  return section('Links', null, el('ul', {class: 'links'}, links.map((link) => el('li', {},
    TRACE_ID.test(link.trace_id) ? el('a', {href: `/trace/${link.trace_id}`}, `trace ${link.trace_id}`) : `trace ${link.trace_id}`,
    el('span', {class: 'mono muted'}, ` span ${link.span_id}`),
    Object.keys(link.attributes || {}).length ? attributeTable('Link attributes', link.attributes) : null))));
}

function logList(logs, span) {
  if (!logs.length) return null;
  return section('Logs', null, el('ol', {class: 'events'}, logs.map((log) => el('li', {},
    el('strong', {}, log.severity_text || `severity ${log.severity_number}`),
    el('span', {class: 'muted'}, ` at +${fmtDuration(log.time_unix_nano - span.start_time_unix_nano)} `),
    el('pre', {class: 'log-body'}, show(log.body))))));
}

/** Shows one span in the panel; ``logs`` are the trace's log records (those of this span are listed). */
export function renderDetails(panel, span, tree, logs = []) {
  const self = selfTimes([span], tree.children).get(span.span_id);
  const traceStart = tree.bounds.start;
  const error = span.status_code === 'Error';
  const {input, output} = genaiMessages(span);
  const facts = [['Service', span.service], ['Kind', span.kind], ['Span id', span.span_id], ['Parent', span.parent_span_id || '(root)'],
    ['Starts at', `+${fmtDuration(span.start_time_unix_nano - traceStart)}`], ['Duration', fmtDuration(span.duration_ns)],
    ['Self time', fmtDuration(self)], ['Tokens in → out', fmtTokens(...spanTokens(span))], ['Cost', fmtCost(span.cost_usd)],
    ['Scope', [span.scope?.name, span.scope?.version].filter(Boolean).join(' ') || '—']];
  panel.replaceChildren(...[
    el('h2', {}, span.name),
    el('p', {class: error ? 'status error' : 'status'}, el('strong', {}, `Status: ${span.status_code || 'Unset'}`),
      span.status_message ? el('span', {class: 'status-message'}, ` — ${span.status_message}`) : null),
    el('dl', {class: 'facts'}, facts.map(([k, v]) => el('div', {}, el('dt', {}, k), el('dd', {}, v)))),
    messages('Input messages', input), messages('Output messages', output),
    section('Attributes', null, attributeTable('Span attributes', span.attributes)),
    section('Resource', null, attributeTable('Resource attributes', span.resource_attributes)),
    span.events?.length ? section('Events', null, el('ol', {class: 'events'}, span.events.map((ev) => el('li', {},
      el('strong', {}, ev.name), el('span', {class: 'muted'}, ` at +${fmtDuration(ev.time_unix_nano - span.start_time_unix_nano)}`),
      Object.keys(ev.attributes || {}).length ? attributeTable('Event attributes', ev.attributes) : null)))) : null,
    logList(logs.filter((log) => log.span_id === span.span_id), span),
    linkList(span.links)].filter(Boolean));
}
