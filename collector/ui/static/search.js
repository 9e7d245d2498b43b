// The search page: filters live in the URL (so a search can be shared), the API is asked
// with the same parameters, and a duration histogram of the results filters when clicked.
import {api, cleanParams, el, errorBox, field, fmtCost, fmtDuration, fmtTime, fmtTokens, select} from './common.js';

const PRESETS = [['15m', 'Last 15 minutes'], ['1h', 'Last hour'], ['6h', 'Last 6 hours'], ['24h', 'Last 24 hours'],
  ['7d', 'Last 7 days'], ['', 'Any time'], ['custom', 'Between…']];
const DEFAULT_LIMIT = '50';

const isAbsolute = (value) => /^\d{4}-\d\d-\d\d/.test(value || '');

/** datetime-local wants "YYYY-MM-DDTHH:MM" in local time. */
function toLocalInput(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function searchForm(params) {
  const since = params.get('since') ?? '';
  const custom = isAbsolute(since) || isAbsolute(params.get('until'));
  const range = custom ? 'custom' : since;
  const attributes = [...params.getAll('attribute'), ''];
  const form = el('form', {class: 'filters', role: 'search', 'aria-label': 'Trace filters'},
    field('Service (root)', 'service', params.get('service'), {list: 'services'}),
    field('Root span name', 'name', params.get('name')),
    field('Any span of service', 'span_service', params.get('span_service'), {list: 'services'}),
    field('Any span named', 'span_name', params.get('span_name')),
    attributes.map((value, index) => field(index ? 'And attribute' : 'Attribute key=value', 'attribute', value,
      {index, placeholder: 'gen_ai.request.model=gpt-4o'})),
    select('Status', 'error', params.get('error') ?? '', [['', 'Any'], ['true', 'Errors only'], ['false', 'No errors']]),
    field('Min duration (ms)', 'min_duration_ms', params.get('min_duration_ms'), {type: 'number', min: 0, step: 'any'}),
    field('Max duration (ms)', 'max_duration_ms', params.get('max_duration_ms'), {type: 'number', min: 0, step: 'any'}),
    select('Time range', 'range', range, PRESETS),
    el('div', {class: 'field custom-range', hidden: !custom},
      el('label', {for: 'f-from'}, 'From'), el('input', {id: 'f-from', type: 'datetime-local', value: custom && isAbsolute(since) ? toLocalInput(since) : ''}),
      el('label', {for: 'f-to'}, 'To'), el('input', {id: 'f-to', type: 'datetime-local', value: custom ? toLocalInput(params.get('until')) : ''})),
    field('Tenant', 'tenant', params.get('tenant')),
    field('Limit', 'limit', params.get('limit') ?? DEFAULT_LIMIT, {type: 'number', min: 1, max: 1000}),
    el('div', {class: 'actions'}, el('button', {type: 'submit'}, 'Search'), el('a', {href: '/'}, 'Clear')),
    el('datalist', {id: 'services'}));
  const rangeSelect = form.querySelector('#f-range');
  rangeSelect.addEventListener('change', () => { form.querySelector('.custom-range').hidden = rangeSelect.value !== 'custom'; });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const range = data.get('range');
    data.delete('range');
    if (range === 'custom') {
      const from = form.querySelector('#f-from').value, to = form.querySelector('#f-to').value;
      if (from) data.set('since', new Date(from).toISOString());
      if (to) data.set('until', new Date(to).toISOString());
    } else if (range) data.set('since', range);
    location.assign(`/?${cleanParams(data)}`);
  });
  return form;
}

/** Suggestions for the service fields: the services seen in the last day. */
async function suggestServices(form) {
  const stats = await api('/api/stats', 'group_by=service&since=24h&limit=200').catch(() => ({groups: []}));
  form.querySelector('#services').append(...stats.groups.map((g) => el('option', {value: g.group})));
}

const BINS = 16;

/** Durations on a log scale, errors stacked on top; each bar links to the search narrowed to it. */
function histogram(traces, params) {
  const durations = traces.map((t) => Math.max(Number(t.duration_ns), 1000));
  if (!durations.length) return el('div');
  const low = Math.log(durations.reduce((a, b) => Math.min(a, b))), high = Math.log(durations.reduce((a, b) => Math.max(a, b))) + 1e-9;
  const width = (high - low) / BINS || 1;
  const bins = Array.from({length: BINS}, (_, i) => ({ok: 0, errors: 0, from: Math.exp(low + i * width), to: Math.exp(low + (i + 1) * width)}));
  traces.forEach((t, i) => {
    const bin = bins[Math.min(BINS - 1, Math.floor((Math.log(durations[i]) - low) / width))];
    t.error ? bin.errors++ : bin.ok++;
  });
  const tallest = Math.max(...bins.map((b) => b.ok + b.errors));
  const bars = bins.map((bin) => {
    const count = bin.ok + bin.errors;
    const narrowed = new URLSearchParams(params);
    narrowed.set('min_duration_ms', (Math.floor(bin.from / 1e3) / 1e3).toString());
    narrowed.set('max_duration_ms', (Math.ceil(bin.to / 1e3) / 1e3).toString());
    const label = `${count} trace${count === 1 ? '' : 's'} (${bin.errors} with errors) from ${fmtDuration(bin.from)} to ${fmtDuration(bin.to)}: show only these`;
    return el(count ? 'a' : 'span', {class: 'bar', href: count ? `/?${narrowed}` : null, 'aria-label': count ? label : null, title: label,
      'aria-hidden': count ? null : 'true'},
    el('span', {class: 'ok', style: {height: `${(bin.ok / tallest) * 100}%`}}),
    el('span', {class: 'err', style: {height: `${(bin.errors / tallest) * 100}%`}}));
  });
  return el('figure', {class: 'histogram'},
    el('div', {class: 'bars'}, bars),
    el('figcaption', {}, el('span', {}, fmtDuration(Math.exp(low))), el('span', {}, 'duration (log scale); click a bar to filter'),
      el('span', {}, fmtDuration(Math.exp(high)))));
}

function resultsTable(traces) {
  const head = ['Trace', 'Start', 'Duration', 'Spans', 'Status', 'Tokens in → out', 'Cost', 'Kept by'];
  return el('table', {class: 'results'},
    el('caption', {class: 'sr-only'}, 'Traces found, newest first'),
    el('thead', {}, el('tr', {}, head.map((h) => el('th', {scope: 'col'}, h)))),
    el('tbody', {}, traces.map((t) => el('tr', {class: t.error ? 'has-error' : null},
      el('td', {}, el('a', {href: `/trace/${t.trace_id}`}, el('span', {class: 'svc'}, t.root_service || '?'), ' ',
        t.root_name || '(root span not stored)'), el('div', {class: 'mono muted'}, t.trace_id)),
      el('td', {}, fmtTime(t.start_time_unix_nano)),
      el('td', {class: 'num'}, fmtDuration(t.duration_ns)),
      el('td', {class: 'num'}, String(t.span_count)),
      el('td', {}, t.error ? el('span', {class: 'badge error'}, 'error') : el('span', {class: 'badge'}, 'ok')),
      el('td', {class: 'num'}, fmtTokens(t.input_tokens, t.output_tokens)),
      el('td', {class: 'num'}, fmtCost(t.cost_usd)),
      el('td', {}, t.sampled_by || '—', t.sample_rate > 1 ? el('span', {class: 'muted'}, ` (1 in ${t.sample_rate.toPrecision(3).replace(/\.?0+$/, '')})`) : '')))));
}

/** What a new user needs when nothing is stored yet. */
function firstSteps() {
  const env = ['export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318', 'export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf',
    'export OTEL_SERVICE_NAME=my-service'].join('\n');
  return el('section', {class: 'first-steps', 'aria-label': 'Getting started'},
    el('h2', {}, 'Send traces here'),
    el('p', {}, 'Point any OpenTelemetry SDK at this collector: OTLP over gRPC on port 4317 or HTTP on port 4318 ',
      '(the defaults; tailsift run logs the addresses). No code change is needed:'),
    el('pre', {}, env),
    el('p', {}, 'A trace shows up here once it is decided: about 2 s after its root span ends (sampling.quiet_period), ',
      'or 10 s after its first span at the latest. Only kept traces are stored: by default every trace with an error, ',
      'every trace over 2 s and 5% of the rest, so most healthy traces are dropped on purpose. ',
      'tailsift explain <trace id> says why a trace was kept or dropped.'));
}

export async function renderSearch(main, params) {
  document.title = 'Search traces · tailsift';
  const form = searchForm(params);
  const summary = el('p', {class: 'summary', role: 'status'}, 'Searching…');
  const results = el('div', {class: 'results-area'});
  main.append(el('h1', {}, 'Find traces'), form, summary, results);
  suggestServices(form);
  const limit = params.get('limit') || DEFAULT_LIMIT;
  const query = cleanParams(params);
  query.set('limit', limit);
  try {
    const {traces} = await api('/api/traces', query);
    const capped = traces.length >= Number(limit) ? ` (the newest ${limit}: narrow the search or raise the limit for more)` : '';
    const filtered = [...query.keys()].some((key) => key !== 'limit');
    summary.textContent = traces.length ? `${traces.length} trace${traces.length === 1 ? '' : 's'}${capped}`
      : filtered ? 'No kept trace matches these filters.' : 'No traces stored yet.';
    results.append(...(traces.length || filtered ? [histogram(traces, query), resultsTable(traces)] : [firstSteps()]));
  } catch (error) {
    summary.textContent = '';
    results.append(errorBox(error));
  }
}
