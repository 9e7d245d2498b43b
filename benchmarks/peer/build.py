"""Build the peer collector: the OTel Collector's own builder (``ocb``) at the pinned release,
then ``builder-config.yaml``, all from the Go module proxy. Nothing is committed but the
manifest; the binary goes to a cache directory outside the repository.

    python -m benchmarks.peer.build          # prints the binary's path (built once, then reused)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

RELEASE = "v0.161.0"
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("TAILSIFT_PEER_CACHE", Path.home() / ".cache" / "tailsift" / f"otelcol-peer-{RELEASE}"))


def binary() -> Path:
    return CACHE / "dist" / "otelcol-peer"


def build(force: bool = False) -> Path:
    """The peer's binary, built if missing (a few minutes the first time: the modules are
    downloaded and compiled)."""
    if binary().exists() and not force:
        return binary()
    if shutil.which("go") is None:
        raise SystemExit("the peer collector is built with Go: install it (https://go.dev/dl/) and run again")
    CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(CACHE / "bin"), CGO_ENABLED="0")
    builder = CACHE / "bin" / "builder"
    if not builder.exists():
        print(f"installing the collector builder {RELEASE} ...", file=sys.stderr)
        subprocess.run(["go", "install", f"go.opentelemetry.io/collector/cmd/builder@{RELEASE}"], env=env, check=True)
    manifest = yaml.safe_load((HERE / "builder-config.yaml").read_text())
    manifest["dist"]["output_path"] = str(CACHE / "dist")
    (CACHE / "builder-config.yaml").write_text(yaml.safe_dump(manifest))
    print(f"building otelcol-peer {RELEASE} into {CACHE / 'dist'} ...", file=sys.stderr)
    subprocess.run([str(builder), "--config", str(CACHE / "builder-config.yaml")], env=env, check=True)
    return binary()


if __name__ == "__main__":
    print(build(force="--force" in sys.argv))
