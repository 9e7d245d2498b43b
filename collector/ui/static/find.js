// Finding spans in a big trace: by name, service or span id, or the next error. A match is
// revealed (its ancestors unfold), scrolled to and shown; every match is highlighted.
import {el} from './common.js';

/** The toolbar above a waterfall: a find box with previous/next, next error, fold and unfold all. */
export function findBar(waterfall, spans) {
  const order = new Map(waterfall.treeOrder().map((span, i) => [span.span_id, i]));
  const input = el('input', {id: 'find', type: 'search', placeholder: 'name, service or span id', autocomplete: 'off'});
  const count = el('span', {class: 'muted', role: 'status'});
  let matches = [], at = -1, key = null;  // key: what the matches were found for

  const go = (step) => {
    if (!matches.length) return;
    at = (at + step + matches.length) % matches.length;
    count.textContent = `${at + 1} of ${matches.length}`;
    waterfall.reveal(matches[at].span_id);
  };
  /** The next match for `wanted`, finding the matches first when they are for something else. */
  const next = (wanted, step, select, none) => {
    if (wanted === key && matches.length) return go(step);
    key = wanted;
    matches = wanted ? spans.filter(select).sort((a, b) => order.get(a.span_id) - order.get(b.span_id)) : [];
    at = step > 0 ? -1 : 0;
    waterfall.highlight(new Set(matches.map((s) => s.span_id)));
    count.textContent = matches.length || !wanted ? '' : none;
    go(step);
  };
  const text = (step) => {
    const query = input.value.trim().toLowerCase();
    next(query && `text:${query}`, step, (s) => s.name.toLowerCase().includes(query) ||
      s.service.toLowerCase().includes(query) || s.span_id === query, 'no match');
  };
  input.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter') return;
    event.preventDefault();
    text(event.shiftKey ? -1 : 1);
  });
  return el('div', {class: 'find-bar', role: 'toolbar', 'aria-label': 'Find in this trace'},
    el('label', {for: 'find'}, 'Find span'), input,
    el('button', {type: 'button', onclick: () => text(-1), 'aria-label': 'Previous match'}, '↑'),
    el('button', {type: 'button', onclick: () => text(1), 'aria-label': 'Next match'}, '↓'),
    count,
    el('button', {type: 'button', class: 'secondary', onclick: () => next('errors', 1, (s) => s.status_code === 'Error', 'no error span')}, 'Next error'),
    el('button', {type: 'button', class: 'secondary', onclick: () => waterfall.foldAll(true)}, 'Fold all'),
    el('button', {type: 'button', class: 'secondary', onclick: () => waterfall.foldAll(false)}, 'Unfold all'));
}
