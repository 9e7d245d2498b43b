// Shared by every page: building elements, calling the query API with the tab's token, and
// formatting. Text from the API is only ever set as text (textContent), never parsed as
// HTML, so a span name cannot become markup; the CSP forbids inline script besides.

const TOKEN_KEY = 'tailsift.token';

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** el('a', {href: '/x', class: 'c'}, 'text', child): attributes, then children (strings are text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'style') Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

let asking = null;  // one dialog for all the calls that were refused together

/** Asks for a token in the page's dialog; resolves once one is entered. */
function askToken(rejected) {
  asking ??= openTokenDialog(rejected).finally(() => { asking = null; });
  return asking;
}

function openTokenDialog(rejected) {
  const dialog = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  document.getElementById('token-why').textContent = rejected
    ? 'That token was not accepted. Enter another.'
    : 'Its query API has query.auth on. The token is kept in this browser tab only.';
  input.value = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
      resolve();
    }, {once: true});
    dialog.showModal();
  });
}

/** GET a query API path; asks for a token on 401, throws ApiError with the API's message. */
export async function api(path, params) {
  const query = params && String(params) ? `?${params}` : '';
  let rejected = false;
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(path + query, {headers: token ? {Authorization: `Bearer ${token}`} : {}});
    if (response.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(rejected || Boolean(token));
      rejected = true;
      continue;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body.error || `HTTP ${response.status}`);
    return body;
  }
}

/** A labelled input in a filter form (``attrs.index`` tells apart repeated names). */
export function field(label, name, value, attrs = {}) {
  const {index = 0, ...rest} = attrs;
  const id = `f-${name}-${index}`;
  return el('div', {class: 'field'}, el('label', {for: id}, label), el('input', {id, name, value: value ?? '', ...rest}));
}

/** A labelled select; ``options`` are [value, text] pairs. */
export function select(label, name, value, options) {
  const id = `f-${name}`;
  return el('div', {class: 'field'}, el('label', {for: id}, label),
    el('select', {id, name}, options.map(([v, text]) => el('option', {value: v, selected: v === value}, text))));
}

export function errorBox(error) {
  return el('p', {class: 'error-box', role: 'alert'}, error instanceof ApiError ? error.message : `Error: ${error}`);
}

export function fmtDuration(ns) {
  const ms = Number(ns) / 1e6;
  if (ms === 0) return '0';
  if (ms < 1) return `${(ms * 1000).toFixed(ms < 0.01 ? 2 : 0)} µs`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(ms < 100 ? 1 : 0)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function fmtCost(usd) {
  if (!usd) return '—';
  return usd < 0.01 ? `$${usd.toPrecision(3)}` : `$${usd.toFixed(usd < 1 ? 3 : 2)}`;
}

export function fmtCount(n) {
  return Number(n).toLocaleString('en-US', {maximumFractionDigits: 1});
}

export function fmtTokens(input, output) {
  return input || output ? `${fmtCount(input)} → ${fmtCount(output)}` : '—';
}

export function fmtTime(ns) {
  const date = new Date(Number(ns) / 1e6);
  return `${date.toLocaleDateString('en-CA')} ${date.toLocaleTimeString('en-GB')}.${String(date.getMilliseconds()).padStart(3, '0')}`;
}

export function fmtPercent(rate, digits = 1) {
  return `${(rate * 100).toFixed(digits)}%`;
}

/** The parameters of a URL with the empty ones left out. */
export function cleanParams(params) {
  const out = new URLSearchParams();
  for (const [key, value] of params) if (value.trim() !== '') out.append(key, value.trim());
  return out;
}

export const TRACE_ID = /^[0-9a-f]{32}$/i;
