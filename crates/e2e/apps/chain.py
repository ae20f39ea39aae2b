#!/usr/bin/env python3
"""The istio-tutorial applications (customer -> preference -> recommendation) and the external
clock API of seed 004, for sluice's end-to-end tests. Python 3 standard library only.

One script, the mode is chosen by environment variables:

  MODE=customer|preference   GET $NEXT_URL; on 200 answer 200 "<mode> => <next body>";
                             on status S with body B answer 503 "<mode> => Error: S - B";
                             when the call fails without a response, 503 "<mode> => Error: <why>".
  MODE=recommendation        "recommendation $VERSION from '$POD_NAME': <count>", or, when
                             $CLOCK_URL is set, first GET it (JSON field currentDateTime) and answer
                             "recommendation $VERSION <time> from '$POD_NAME': <count>"; if that
                             call fails, 500 "recommendation $VERSION from '$POD_NAME': Error
                             fetching time: <why>".
                             While the file $FAIL_FILE exists: 503 "recommendation misbehavior
                             from '$POD_NAME'" (drives outlier detection).
  MODE=clock                 worldclockapi.com: GET /api/json/cet/now answers
                             {"currentDateTime": "2020-04-06T18:31+01:00", ...}.

Every mode answers GET /ready with 200 "ready" (no side effects), and GET /delay?ms=N sleeps N ms
before answering as GET / would (drives circuit breaking). Other variables: PORT (default 8080),
BIND (default 0.0.0.0), UPSTREAM_TIMEOUT (seconds, default 10). One line per request on stdout.
"""

import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ.get("MODE", "")
PORT = int(os.environ.get("PORT", "8080"))
BIND = os.environ.get("BIND", "0.0.0.0")
POD = os.environ.get("POD_NAME") or socket.gethostname()
VERSION = os.environ.get("VERSION", "v1")
NEXT_URL = os.environ.get("NEXT_URL", "")
CLOCK_URL = os.environ.get("CLOCK_URL", "")
FAIL_FILE = os.environ.get("FAIL_FILE", "")
TIMEOUT = float(os.environ.get("UPSTREAM_TIMEOUT", "10"))

# Never use a proxy from the environment: the sidecar captures traffic transparently.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_count = 0
_count_lock = threading.Lock()


def next_count():
    global _count
    with _count_lock:
        _count += 1
        return _count


def fetch(url):
    """GET url; returns (status or None, body text or error description)."""
    try:
        with OPENER.open(url, timeout=TIMEOUT) as r:
            return r.status, r.read().decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as e:
        try:
            body = e.read().decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the body is only informative
            body = ""
        return e.code, body
    except Exception as e:  # noqa: BLE001 - any failure becomes the answer's text
        return None, f"{type(e).__name__}: {e}"


def forwarder():
    status, body = fetch(NEXT_URL)
    if status == 200:
        return 200, f"{MODE} => {body}"
    if status is None:
        return 503, f"{MODE} => Error: {body}"
    return 503, f"{MODE} => Error: {status} - {body}"


def recommendation():
    if FAIL_FILE and os.path.exists(FAIL_FILE):
        return 503, f"recommendation misbehavior from '{POD}'"
    if CLOCK_URL:
        status, body = fetch(CLOCK_URL)
        if status != 200:
            why = body if status is None else f"{status} - {body}"
            return 500, f"recommendation {VERSION} from '{POD}': Error fetching time: {why}"
        try:
            now = json.loads(body)["currentDateTime"]
        except (ValueError, KeyError, TypeError) as e:
            return 500, f"recommendation {VERSION} from '{POD}': Error fetching time: bad JSON ({e}): {body}"
        return 200, f"recommendation {VERSION} {now} from '{POD}': {next_count()}"
    return 200, f"recommendation {VERSION} from '{POD}': {next_count()}"


def clock(path):
    if path.rstrip("/") != "/api/json/cet/now":
        return 404, "not found", "text/plain"
    cet = timezone(timedelta(hours=1))
    now = datetime.now(cet)
    doc = {
        "$id": "1",
        "currentDateTime": now.strftime("%Y-%m-%dT%H:%M") + "+01:00",
        "utcOffset": "01:00:00",
        "isDayLightSavingsTime": False,
        "dayOfTheWeek": now.strftime("%A"),
        "timeZoneName": "Central Europe Standard Time",
        "currentFileTime": int(time.time() * 10_000_000) + 116444736000000000,
        "ordinalDate": now.strftime("%Y-%j"),
        "serviceResponse": None,
    }
    return 200, json.dumps(doc), "application/json"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY every keep-alive response would
    # wait for the peer's delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def version_string(self):
        return "chain.py"

    def do_GET(self):  # noqa: N802 - the name BaseHTTPRequestHandler calls
        url = urllib.parse.urlsplit(self.path)
        ctype = "text/plain"
        if url.path == "/ready":
            status, body = 200, "ready"
        else:
            if url.path == "/delay":
                query = urllib.parse.parse_qs(url.query)
                ms = int(query.get("ms", ["0"])[0])
                time.sleep(ms / 1000.0)
            if MODE in ("customer", "preference"):
                status, body = forwarder()
            elif MODE == "recommendation":
                status, body = recommendation()
            elif MODE == "clock":
                status, body, ctype = clock(url.path)
            else:
                status, body = 500, f"unknown MODE {MODE!r}"
        data = (body + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stdout.write(
            "%s %s %s\n" % (time.strftime("%H:%M:%S"), self.address_string(), fmt % args)
        )
        sys.stdout.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    if MODE not in ("customer", "preference", "recommendation", "clock"):
        sys.exit(f"chain.py: MODE must be customer, preference, recommendation or clock, not {MODE!r}")
    if MODE in ("customer", "preference") and not NEXT_URL:
        sys.exit(f"chain.py: MODE={MODE} needs NEXT_URL")
    server = Server((BIND, PORT), Handler)
    print(f"chain.py {MODE} {VERSION} pod {POD} listening on {BIND}:{PORT}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
