// The router: the server answers every page path with the same shell; the path picks the page.
import {renderSearch} from './search.js';
import {renderTrace} from './trace.js';
import {renderStats} from './stats.js';
import {errorBox, el} from './common.js';

const main = document.getElementById('main');
const params = new URLSearchParams(location.search);
const path = location.pathname;

function current(page) {
  for (const link of document.querySelectorAll('nav a[data-page]')) {
    if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
  }
}

main.replaceChildren();
let page;
if (path === '/') { current('search'); page = renderSearch(main, params); }
else if (path === '/stats') { current('stats'); page = renderStats(main, params); }
else if (path.startsWith('/trace/')) page = renderTrace(main, decodeURIComponent(path.slice('/trace/'.length)));
else page = Promise.resolve(main.append(el('h1', {}, 'Not found')));
page.catch((error) => main.append(errorBox(error))).finally(() => document.body.setAttribute('data-ready', 'true'));
