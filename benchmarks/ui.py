"""The web UI with a 10,000-span trace, in headless Chromium (Debian's), on this machine.

For each of ``--runs`` fresh page loads of ``/trace/<id>``:
- **open**: from navigation start to the waterfall's first rows on screen (the page marks
  ``tailsift:waterfall`` once rendered), which includes fetching and parsing the trace's JSON;
- **scroll**: from the top to the bottom in ``--steps`` jumps, one per animation frame (a
  drag of the scrollbar), the whole time and the slowest frame; then a flick through it all,
  one jump per frame every 50 spans, for the time each frame's render takes;
- the DOM rows at the end (only what is in view is rendered).

    python -m benchmarks.ui [--spans 10000] [--runs 5]

Prints each run and the medians. Needs ``pip install -e '.[test]'`` (Playwright) and chromium.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.support import demo_traces
from tests.support.collector import Collector
from tests.support.ui import browser_page, open_page

SWEEP = """async (steps) => {
  // Like dragging the scrollbar from the top to the bottom: one jump per frame.
  const body = document.querySelector('.wf-body');
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve(performance.now())));
  window.tailsiftMeasure = true;  // the waterfall then times each render
  performance.clearMeasures('tailsift:render');
  const began = await frame();
  let last = began, worst = 0;
  for (let i = 1; i <= steps; i++) {
    body.scrollTop = (body.scrollHeight - body.clientHeight) * i / steps;
    const now = await frame();
    worst = Math.max(worst, now - last);
    last = now;
  }
  await frame();
  const renders = performance.getEntriesByName('tailsift:render').map((e) => e.duration).sort((a, b) => a - b);
  return {total: last - began, worst, rows: document.querySelectorAll('[role=treeitem]').length,
          render_p50: renders[Math.floor(renders.length / 2)], render_max: renders[renders.length - 1],
          bottom: body.scrollTop + body.clientHeight >= body.scrollHeight - 1};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="jumps from top to bottom (a scrollbar drag)")
    args = parser.parse_args()
    with Collector(Path(tempfile.mkdtemp(prefix="tailsift-ui-bench-")) / "collector").start() as c:
        trace_id = demo_traces.big_trace(c, args.spans)
        c.wait_for(lambda: len(c.get(f"/api/traces/{trace_id}").json().get("spans", [])) == args.spans, 180, "the trace")
        began = time.monotonic()
        size = len(c.get(f"/api/traces/{trace_id}").content)
        print(f"trace of {args.spans} spans: {size / 1e6:.1f} MB of JSON from the API in {time.monotonic() - began:.2f} s")
        opens: list[float] = []
        scrolls: list[float] = []
        renders: list[float] = []
        with browser_page() as (page, log):
            for run in range(args.runs):
                open_page(page, c.api + f"/trace/{trace_id}")
                page.wait_for_selector("[role=treeitem]")
                opened = page.evaluate("performance.getEntriesByName('tailsift:waterfall')[0].startTime")
                sweep = page.evaluate(SWEEP, args.steps)
                full = page.evaluate(SWEEP, args.spans // 50)  # a flick through it all, for the render time per frame
                assert sweep["bottom"] and full["bottom"]
                opens.append(opened)
                scrolls.append(sweep["total"])
                renders.append(full["render_p50"])
                print(f"run {run + 1}: open {opened:.0f} ms; scroll top to bottom in {args.steps} jumps {sweep['total']:.0f} ms "
                      f"(slowest frame {sweep['worst']:.0f} ms); in {args.spans // 50} jumps {full['total']:.0f} ms, "
                      f"render per frame median {full['render_p50']:.1f} ms, max {full['render_max']:.1f} ms; "
                      f"{sweep['rows']} rows in the DOM")  # fmt: skip
            assert not log.errors, log.errors
        print(f"median of {args.runs}: open {statistics.median(opens):.0f} ms, scroll {statistics.median(scrolls):.0f} ms, "
              f"open + scroll {statistics.median(o + s for o, s in zip(opens, scrolls)):.0f} ms; "
              f"render per frame {statistics.median(renders):.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
