"""``tailsift bench --plot OUT.png``: throughput and p99 ack latency per second.

matplotlib is optional (``pip install 'tailsift[bench]'``); without it the plot is skipped
with a message, the figures are still printed."""

from __future__ import annotations

from typing import Any


def plot(report: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'tailsift[bench]'")
        return
    seconds = [row["second"] for row in report["timeline"]]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(seconds, [row["spans_per_second"] for row in report["timeline"]])
    top.set_ylabel("spans/s accepted")
    bottom.plot(seconds, [row["ack_latency_ms_p99"] for row in report["timeline"]], color="tab:red")
    bottom.set_ylabel("p99 ack latency (ms)")
    bottom.set_xlabel("seconds")
    fig.suptitle(f"tailsift bench: {report['shape']} over {report['protocol']}, queue {report['queue']}")
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")
