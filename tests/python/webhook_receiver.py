"""A subscriber's webhook endpoint, written the way a department would:
the Standard Webhooks reference library checks every signature and the
CloudEvents SDK parses every event of a batch.

usage: webhook_receiver.py PORT SECRET LOG [SCRIPT]

SCRIPT is a comma-separated list of answers for successive requests; after
it runs out every request gets 200. Answers: a status code (`500`, `410`),
`429:N` (429 with Retry-After: N), `sleep:S` (answer 200 after S seconds, so
a short client timeout fires), `redirect` (302 to another path). While a file LOG.fail exists, every
request gets the answer it holds instead (a destination that is down for a
while; the test creates and removes it).
Every request is logged to LOG as one JSON line: webhook-id, the answer,
whether the signature verified, the event ids and the events.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.formats.json import JSONFormat
from standardwebhooks import Webhook

port, secret, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
script = [s for s in (sys.argv[4] if len(sys.argv) > 4 else "").split(",") if s]
hook = Webhook(secret)
lock = threading.Lock()
count = [0]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with lock:
            n = count[0]
            count[0] += 1
        answer = script[n] if n < len(script) else "200"
        try:
            with open(log_path + ".fail") as f:
                answer = f.read().strip() or "503"
        except FileNotFoundError:
            pass
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            hook.verify(body, headers)
            verified = True
        except Exception as e:  # noqa: BLE001 - any failure is a bad signature
            verified = False
            answer = "400"
            print("signature check failed:", e, file=sys.stderr)
        events = []
        if verified:
            for element in json.loads(body):
                event = JSONFormat().read(None, json.dumps(element))
                events.append({
                    "id": event.get_id(),
                    "type": event.get_type(),
                    "source": event.get_source(),
                    "subject": event.get_subject(),
                    "op": event.get_extension("op"),
                    "sourceversion": event.get_extension("sourceversion"),
                    "traceparent": event.get_extension("traceparent"),
                    "data": event.get_data(),
                })
        entry = {
            "webhook_id": headers.get("webhook-id"),
            "content_type": headers.get("content-type"),
            "traceparent": headers.get("traceparent"),
            "answer": answer,
            "verified": verified,
            "events": events,
            "at": time.time(),
        }
        with lock, open(log_path, "a") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if answer.startswith("sleep:"):
            time.sleep(float(answer.split(":")[1]))
            answer = "200"
        if answer.startswith("429:"):
            self.send_response(429)
            self.send_header("Retry-After", answer.split(":")[1])
        elif answer == "redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(int(answer))
        self.send_header("content-length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
