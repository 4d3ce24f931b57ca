"""End-to-end latency: gateway -> router -> webhook sink -> subscriber.

usage: e2e_latency.py GOVBUS BOOTSTRAP RATE SECONDS

Runs the production path as separate processes against the broker at
BOOTSTRAP (a fresh one: scripts/bench-e2e starts Tansu): `govbus router`,
`govbus gateway` and `govbus sink`, the sample catalog with one webhook grant
for civil_affairs.death_registration pointing at a receiver in this process.
A department client publishes RATE records a second for SECONDS, one record
per HTTP request over 16 keep-alive connections, each request sent when due;
a record's latency is from when its request was due to the moment the
receiver has read the webhook batch that holds it (one clock,
this process). Start-up is reported apart: the phase starts once a warm-up
record has arrived within 100 ms of its request (the path is warm: the
first one to arrive can precede a stage's producer id or a group's last
join, which then delayed the phase's first records). Prints one JSON line.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

govbus, bootstrap, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "civil_affairs.death_registration"

arrived = {}
# subject -> (the event's `time`, the gateway's receipt; wall clock at arrival)
stamped = {}
arrived_lock = threading.Lock()
requests = [0]
LANES = 16


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        now, wall = time.monotonic(), time.time()
        with arrived_lock:
            requests[0] += 1
            for event in json.loads(body):
                arrived.setdefault(event.get("subject"), now)
                stamped.setdefault(event.get("subject"), (event.get("time"), wall))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, limit=60):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listening on {port} after {limit} s")


def cpu_seconds(pid):
    """User + system CPU of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record(i):
    return {
        "registration_no": f"DR-2026-{i:08d}",
        "deceased_id_number": "11010519491231002X",
        "deceased_name": "张建国",
        "gender": "MALE",
        "birth_date": "1949-12-31",
        "death_date": "2026-11-02",
        "death_place": "北京市朝阳区第一人民医院",
        "death_cause_category": "disease",
        "registering_office": "朝阳区民政局",
        "registered_at": "2026-11-03T09:15:00+08:00",
    }


def main():
    work = tempfile.mkdtemp(prefix="govbus-e2e-")
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    catalog = os.path.join(work, "schemas")
    shutil.copytree(os.path.join(repo, "schemas"), catalog)
    subs = os.path.join(catalog, "subscriptions")
    shutil.rmtree(subs)
    os.mkdir(subs)
    with open(os.path.join(subs, "e2e.toml"), "w") as f:
        f.write(f'''subscriber = "hrss"
dataset = "{DATASET}"
purpose = "end-to-end latency benchmark"

[fields]
include = ["deceased_id_number", "death_date"]

[fields.treatment]
deceased_id_number = "clear"

[sink]
type = "webhook"
url = "http://127.0.0.1:{hook.server_address[1]}/hook"
secret = "whsec_ZTJlLWxhdGVuY3ktYmVuY2htYXJrLXNlY3JldA=="
allow_private = true
timeout = "2s"
''')
    out = subprocess.run([govbus, "credential", "new", "--department", "civil_affairs"],
                         capture_output=True, text=True, check=True).stdout
    token = out.splitlines()[0].rsplit(" ", 1)[-1]
    creds = os.path.join(work, "credentials.toml")
    with open(creds, "w") as f:
        f.write(out.split("\n\n", 1)[1])
    prefix = f"e2e{os.getpid()}."
    common = ["--bootstrap", bootstrap, "--topic-prefix", prefix, "--catalog", catalog]
    # Extra librdkafka settings for the router and the sink
    # (E2E_KAFKA="k=v,k=v"), to see what the configured waits contribute.
    extra = []
    for kv in filter(None, os.environ.get("E2E_KAFKA", "").split(",")):
        extra += ["--kafka", kv]
    env = dict(os.environ, GOVBUS_PSEUDONYM_SECRET="e2e-pseudonym-secret-0123456789",
               GOVBUS_LOG="warn")
    gw_port, sink_port = free_port(), free_port()
    logs = open(os.path.join(work, "components.log"), "w")
    procs = [
        subprocess.Popen([govbus, "router", *common, *extra, "--group", prefix + "router",
                          "--listen", "127.0.0.1:0"], env=env, stdout=logs, stderr=logs),
        subprocess.Popen([govbus, "gateway", *common, "--credentials", creds,
                          "--listen", f"127.0.0.1:{gw_port}"], env=env, stdout=logs, stderr=logs),
        subprocess.Popen([govbus, "sink", *common, *extra, "--listen", f"127.0.0.1:{sink_port}"],
                         env=env, stdout=logs, stderr=logs),
    ]
    try:
        wait_listening(gw_port)
        wait_listening(sink_port)
        path = f"/v1/datasets/{DATASET}/records"
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}

        def post(conn, i):
            conn.request("POST", path, body=json.dumps(record(i)), headers=headers)
            answer = conn.getresponse()
            answer.read()
            return answer.status

        # Start-up apart: until a warm-up record arrives within 100 ms of
        # its request (groups joined, topics known, every producer holding
        # its id, the sink's ledger open).
        started = time.monotonic()
        warm = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
        i = 0
        while True:
            asked = time.monotonic()
            status = post(warm, i)
            if status != 200:
                sys.exit(f"the gateway answered {status} to the warm-up record")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and f"DR-2026-{i:08d}" not in arrived:
                time.sleep(0.005)
            with arrived_lock:
                at = arrived.get(f"DR-2026-{i:08d}")
            if at is not None and at - asked < 0.1:
                break
            i += 1
            if time.monotonic() - started > 120:
                sys.exit("no warm-up record arrived within 120 s")
        startup = time.monotonic() - started

        total = rate * seconds
        first = 1_000_000
        sent = {}
        late = {}
        sent_wall = {}
        errors = [0]
        phase = time.monotonic()

        def client(lane, lanes=LANES):
            conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
            for n in range(lane, total, lanes):
                due = phase + n / rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                key = f"DR-2026-{first + n:08d}"
                # Latency counts from when the record was due, so a lane held
                # up by a slow answer does not hide the delay (coordinated
                # omission); how late sends were is reported.
                now = time.monotonic()
                sent[key] = due
                late[key] = max(0.0, now - due)
                sent_wall[key] = time.time()
                status = post(conn, first + n)
                if status != 200:
                    with arrived_lock:
                        errors[0] += 1

        requests_before = requests[0]
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        lanes = [threading.Thread(target=client, args=(k,)) for k in range(LANES)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
        sending = time.monotonic() - phase
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with arrived_lock:
                if all(k in arrived for k in sent):
                    break
            time.sleep(0.05)
        cpu = [round(cpu_seconds(p.pid) - c, 2) for p, c in zip(procs, cpu_before)]
        with arrived_lock:
            lat = sorted((arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived)
        missing = len(sent) - len(lat)
        # Where the time goes: before the gateway stamped the record (the
        # request, ms precision) and after it (ingest write, router, data
        # topic, sink, webhook POST).
        from datetime import datetime
        before, after = [], []
        with arrived_lock:
            for k, t0 in sent_wall.items():
                if k not in stamped or not stamped[k][0]:
                    continue
                at = datetime.fromisoformat(stamped[k][0].replace("Z", "+00:00")).timestamp()
                before.append((at - t0) * 1000)
                after.append((stamped[k][1] - at) * 1000)
        before.sort()
        after.sort()

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        def mid(xs):
            return round(xs[len(xs) // 2], 1) if xs else None

        print(json.dumps({
            "rate": rate, "seconds": seconds, "sent": len(sent), "errors": errors[0],
            "missing": missing, "sending_s": round(sending, 2), "startup_s": round(startup, 2),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(lat[-1], 1) if lat else None,
            "p50_to_gateway_stamp_ms": mid(before), "p50_stamp_to_subscriber_ms": mid(after),
            "max_send_lateness_ms": round(max(late.values(), default=0) * 1000, 1),
            "webhook_requests": requests[0] - requests_before,
            "cpu_s_router_gateway_sink": cpu,
        }))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        hook.shutdown()
        shutil.rmtree(work, ignore_errors=True)


main()
