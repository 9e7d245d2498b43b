// The stats page: /api/stats (every span weighted by its trace's sample rate) grouped by
// service, model, prompt key or any attribute, and two groups side by side with the
// difference and whether it is more than noise (two standard errors).
import {api, cleanParams, el, errorBox, field, fmtCost, fmtCount, fmtPercent, select} from './common.js';

const GROUPS = [['service', 'Service'], ['span_name', 'Span name'], ['model', 'Model'], ['prompt_key', 'Prompt key'], ['route', 'HTTP route']];
const RANGES = [['1h', 'Last hour'], ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['', 'Any time']];

function statsForm(params) {
  const group = params.get('group_by') || 'service';
  const known = GROUPS.some(([v]) => v === group);
  const attribute = field('Attribute key', 'attribute_key', known ? '' : group, {placeholder: 'gen_ai.request.model'});
  attribute.hidden = known;
  const form = el('form', {class: 'filters', 'aria-label': 'Statistics options'},
    select('Group by', 'group_by', known ? group : '', [...GROUPS, ['', 'Attribute…']]),
    attribute,
    select('Time range', 'since', params.get('since') ?? '', RANGES),
    field('Service', 'service', params.get('service')),
    select('Spans', 'scope', params.get('scope') || 'all', [['all', 'All spans'], ['root', 'Root spans only']]),
    field('Tenant', 'tenant', params.get('tenant')),
    el('div', {class: 'actions'}, el('button', {type: 'submit'}, 'Show')));
  const groupSelect = form.querySelector('#f-group_by');
  groupSelect.addEventListener('change', () => { attribute.hidden = groupSelect.value !== ''; });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (!data.get('group_by')) data.set('group_by', data.get('attribute_key') || 'service');
    data.delete('attribute_key');
    location.assign(`/stats?${cleanParams(data)}`);
  });
  return form;
}

const pm = (value, stderr, format) => `${format(value)} ± ${format(1.96 * stderr)}`;

/** The search that lists a group's traces, where the search has a filter for it. */
function searchLink(groupBy, group) {
  const filter = {service: ['service', group], span_name: ['span_name', group], model: ['attribute', `gen_ai.request.model=${group}`]}[groupBy]
    ?? ['attribute', `${groupBy}=${group}`];
  return `/?${new URLSearchParams([filter])}`;
}

function table(data, params, compare) {
  const head = ['Compare', data.group_by, 'Spans (est.)', 'Error rate (95% CI)', 'p50', 'p95', 'p99', 'Tokens in → out', 'Cost', 'Stored spans'];
  return el('table', {class: 'results stats'},
    el('caption', {class: 'sr-only'}, `Statistics by ${data.group_by}, weighted by sample rate`),
    el('thead', {}, el('tr', {}, head.map((h) => el('th', {scope: 'col'}, h)))),
    el('tbody', {}, data.groups.map((g) => {
      const next = new URLSearchParams(params);
      const chosen = compare.includes(g.group);
      next.delete('compare');
      for (const c of (chosen ? compare.filter((x) => x !== g.group) : [...compare, g.group].slice(-2))) next.append('compare', c);
      return el('tr', {class: chosen ? 'chosen' : null},
        el('td', {}, el('a', {href: `/stats?${next}`, class: 'compare', 'aria-pressed': String(chosen), role: 'button',
          'aria-label': `${chosen ? 'Remove' : 'Add'} ${g.group || '(empty)'} ${chosen ? 'from' : 'to'} the comparison`}, chosen ? '✓' : '+')),
        el('th', {scope: 'row'}, el('a', {href: searchLink(data.group_by, g.group)}, g.group || '(empty)')),
        el('td', {class: 'num'}, pm(g.count, g.count_stderr, fmtCount)),
        el('td', {class: 'num'}, pm(g.error_rate, g.error_rate_stderr, fmtPercent)),
        ...[g.p50_ms, g.p95_ms, g.p99_ms].map((ms) => el('td', {class: 'num'}, `${ms.toFixed(1)} ms`)),
        el('td', {class: 'num'}, `${fmtCount(g.input_tokens)} → ${fmtCount(g.output_tokens)}`),
        el('td', {class: 'num'}, fmtCost(g.cost_usd)),
        el('td', {class: 'num'}, String(g.stored_spans)));
    })));
}

/** Two groups side by side; a difference counts when it exceeds 1.96 combined standard errors. */
function comparison(groups, names) {
  const [a, b] = names.map((n) => groups.find((g) => g.group === n));
  if (!a || !b) return el('p', {class: 'muted'}, 'Pick two groups (the + buttons) to compare them side by side.');
  const diff = b.error_rate - a.error_rate;
  const se = Math.hypot(a.error_rate_stderr, b.error_rate_stderr);
  const significant = Math.abs(diff) > 1.96 * se;
  const perSpan = (g) => (g.count ? g.cost_usd / g.count : 0);
  const rows = [
    ['Spans (est.)', fmtCount(a.count), fmtCount(b.count), ''],
    ['Error rate', pm(a.error_rate, a.error_rate_stderr, fmtPercent), pm(b.error_rate, b.error_rate_stderr, fmtPercent),
      `${diff >= 0 ? '+' : ''}${fmtPercent(diff)} ${significant ? '(more than noise)' : '(within noise)'}`],
    ...['p50_ms', 'p95_ms', 'p99_ms'].map((k) => [k.slice(0, 3), `${a[k].toFixed(1)} ms`, `${b[k].toFixed(1)} ms`, a[k] ? `×${(b[k] / a[k]).toFixed(2)}` : '']),
    ['Tokens out per span', (a.output_tokens / (a.count || 1)).toFixed(1), (b.output_tokens / (b.count || 1)).toFixed(1), ''],
    ['Cost per span', fmtCost(perSpan(a)), fmtCost(perSpan(b)), perSpan(a) ? `×${(perSpan(b) / perSpan(a)).toFixed(2)}` : ''],
  ];
  return el('table', {class: 'results compare-table'}, el('caption', {}, `${a.group} compared with ${b.group}`),
    el('thead', {}, el('tr', {}, ['Measure', a.group, b.group, 'Difference'].map((h) => el('th', {scope: 'col'}, h)))),
    el('tbody', {}, rows.map(([k, x, y, d]) => el('tr', {}, el('th', {scope: 'row'}, k), el('td', {class: 'num'}, x), el('td', {class: 'num'}, y), el('td', {}, d)))));
}

export async function renderStats(main, params) {
  document.title = 'Stats · tailsift';
  const compare = params.getAll('compare').slice(0, 2);
  const query = cleanParams(params);
  query.delete('compare');
  if (!params.has('since')) query.set('since', '24h');
  const area = el('div');
  main.append(el('h1', {}, 'Statistics'), el('p', {class: 'muted'},
    'Estimates for all traffic: each stored span counts as many times as its trace\'s sample rate, with 95% intervals.'),
  statsForm(query), area);
  try {
    const data = await api('/api/stats', query);
    area.append(el('section', {'aria-label': 'Comparison'}, comparison(data.groups, compare)),
      data.groups.length ? table(data, params, compare) : el('p', {}, 'No spans stored in this range.'));
  } catch (error) {
    area.append(errorBox(error));
  }
}
