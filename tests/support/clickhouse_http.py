"""The ClickHouse HTTP interface, served by the real ClickHouse engine (chDB) in this process.

No ClickHouse server can be installed on these machines, so this puts the same engine behind
the wire protocol clickhouse-connect's HTTP client speaks: the query in the URL or body,
``param_*`` for bound parameters, data in the body for ``INSERT ... FORMAT``, compressed
request bodies, ``X-ClickHouse-*`` headers and error codes. It is a test front, not a
database: the parsing, planning and storage are all ClickHouse's own.

Every statement received is appended to ``--log`` as one JSON line, so a test can compare
what went over HTTP with what the code says it sends.

Run: ``python -m tests.support.clickhouse_http --port 8123 --path DIR --log FILE``
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from chdb import session as chdb_session

_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*$", re.IGNORECASE)
_INSERT_HEAD = re.compile(rb"^(\s*INSERT\s+INTO\s+.+?\s+FORMAT\s+\w+)[ \t]*\r?\n", re.IGNORECASE | re.DOTALL)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+(\w+)\s*$", re.IGNORECASE | re.DOTALL)


def decompress(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(body))
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine: Any = None
    lock = threading.Lock()
    log_path = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle(b"")

    def do_POST(self) -> None:  # noqa: N802
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        self._handle(body)

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path == "/ping":
            return self._reply(200, b"Ok.\n", {})
        qs = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = decompress(body, self.headers.get("Content-Encoding"))
            sql = qs.get("query")
            data = body
            if sql is None:  # the statement is in the body, an INSERT's data after its first line
                head = _INSERT_HEAD.match(body)
                if head:
                    sql, data = head.group(1).decode(), body[head.end():]
                else:
                    sql, data = body.decode(), b""
            params = {k[len("param_"):]: v for k, v in qs.items() if k.startswith("param_")}
            with open(self.log_path, "a") as log:
                log.write(json.dumps({"sql": sql, "params": sorted(params)}) + "\n")
            with self.lock:
                out, fmt = self._execute(sql, data, params, qs.get("default_format", "TabSeparated"))
        except Exception as exc:  # noqa: BLE001 - report every engine error the way ClickHouse does
            text = str(exc)
            code = re.search(r"Code: (\d+)", text)
            return self._reply(500, f"Code: {code.group(1) if code else 1000}. DB::Exception: {text}\n".encode(),
                               {"X-ClickHouse-Exception-Code": code.group(1) if code else "1000"})  # fmt: skip
        self._reply(200, out, {"X-ClickHouse-Format": fmt})

    def _execute(self, sql: str, data: bytes, params: dict[str, str], default_format: str) -> tuple[bytes, str]:
        insert = _INSERT.match(sql)
        if insert:
            inserter = self.engine.send_insert(f"INSERT INTO {insert.group(1)}", fmt=insert.group(2))
            inserter.append(data)
            inserter.finish()
            return b"", insert.group(2)
        fmt_match = _FORMAT.search(sql)
        fmt = fmt_match.group(1) if fmt_match else default_format
        statement = sql[: fmt_match.start()] if fmt_match else sql
        result = self.engine.query(statement, fmt, params=params or None)
        return bytes(result.bytes()) if result is not None else b"", fmt

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": "0", "written_bytes": "0"}
        for key, value in {"Content-Type": "application/octet-stream", "Content-Length": str(len(body)),
                           "X-ClickHouse-Query-Id": str(uuid.uuid4()), "X-ClickHouse-Timezone": "UTC",
                           "X-ClickHouse-Summary": json.dumps(summary), **headers}.items():  # fmt: skip
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    Handler.engine = chdb_session.Session(args.path)
    Handler.log_path = args.log
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.tls_cert:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
