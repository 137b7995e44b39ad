"""A storefront's webhook receiver for tests/webhooks.rs, verifying every call with the
`standardwebhooks` package (an implementation independent of cartbus's).

Each path is its own receiver: PUT /_secrets/<path> with a JSON list of the secrets it
accepts, and optionally PUT /_behave/<path> with {"fail": N, "hang": N, "hang_seconds": S,
"gone": bool}: answer 500 to the first N verified calls, hang S seconds on the next N,
answer 410 while gone. A call that does not verify (forged, stale, or signed only with a
secret it does not hold) is answered 401. Every call is one JSON line in the journal
file: path, webhook-id, type, cart, signatures sent, whether it verified and why not, and
the status answered.

Usage: receiver.py JOURNAL  (prints {"port": N} on its first line, then serves)
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
SECRETS = {}
BEHAVE = {}
CALLS = {}
JOURNAL = None


def record(entry):
    with LOCK:
        JOURNAL.write(json.dumps(entry) + "\n")
        JOURNAL.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_PUT(self):
        data = json.loads(self.body() or b"null")
        if self.path.startswith("/_secrets/"):
            with LOCK:
                SECRETS["/" + self.path[len("/_secrets/"):]] = data
        elif self.path.startswith("/_behave/"):
            with LOCK:
                BEHAVE["/" + self.path[len("/_behave/"):]] = data
        else:
            return self.answer(404)
        self.answer(204)

    def do_POST(self):
        payload = self.body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        with LOCK:
            secrets = list(SECRETS.get(path, []))
        verified, why = False, "no secret set for this path"
        for secret in secrets:
            try:
                Webhook(secret).verify(payload, headers)
                verified, why = True, None
                break
            except WebhookVerificationError as e:
                why = str(e)
        entry = {
            "path": path,
            "id": headers.get("webhook-id"),
            "signatures": len((headers.get("webhook-signature") or "").split()),
            "verified": verified,
            "why": why,
            "at": time.time(),
        }
        try:
            event = json.loads(payload)
            entry["type"] = event.get("type")
            entry["cart_id"] = (event.get("data") or {}).get("cart_id")
            entry["order_id"] = (event.get("data") or {}).get("order_id")
            entry["status_to"] = (event.get("data") or {}).get("status")
        except ValueError:
            pass
        if not verified:
            entry["status"] = 401
            record(entry)
            return self.answer(401)
        with LOCK:
            behave = BEHAVE.get(path, {})
            n = CALLS.get(path, 0)
            CALLS[path] = n + 1
        fail = behave.get("fail", 0)
        hang = behave.get("hang", 0)
        if behave.get("gone"):
            status = 410
        elif n < fail:
            status = 500
        elif n < fail + hang:
            entry["hung"] = True
            record(dict(entry, status=None))
            time.sleep(behave.get("hang_seconds", 5))
            try:
                self.answer(200)
            except OSError:
                pass
            return
        else:
            status = 200
        entry["status"] = status
        record(entry)
        self.answer(status)


def main():
    global JOURNAL
    JOURNAL = open(sys.argv[1], "a", encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
