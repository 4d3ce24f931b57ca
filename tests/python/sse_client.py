"""A live-stream subscriber using httpx-sse.

usage: sse_client.py URL TOKEN status
       sse_client.py URL TOKEN read N [LAST_EVENT_ID]
       sse_client.py URL TOKEN idle SECONDS
       sse_client.py URL TOKEN follow SECONDS
       sse_client.py URL TOKEN resume SECONDS [LAST_EVENT_ID]

`status` prints the HTTP status of the stream request. `idle` listens for
SECONDS and prints how many heartbeat comments (`: ...`) arrived. `read` reads N
events (resuming after LAST_EVENT_ID when given), then disconnects and
prints JSON: the event ids (CloudEvent ids), the last SSE id and a sample
event. `follow` prints every event as one JSON line as it arrives
(`{"event": ..., "data": ...}`), then `{"end": "closed"}` when the server
ends the stream or `{"end": "timeout"}` after SECONDS. `resume` is `follow`
as a browser's EventSource does it: when the stream ends or the server is
unreachable or refuses (a restarted server, a revoked grant), it connects
again after 300 ms with `Last-Event-ID` set to the last event's id, until
SECONDS have passed; it prints `{"connected": STATUS}` per attempt and
each event's SSE `id` with it. Given LAST_EVENT_ID, the first connection
resumes after it (a subscriber coming back after an outage).
"""
import json
import sys
import time

import httpx
from httpx_sse import connect_sse

url, token, mode = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"Authorization": f"Bearer {token}"}
if mode == "status":
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", url, headers=headers) as r:
            print(r.status_code)
    sys.exit(0)

if mode == "idle":
    beats, end = 0, time.monotonic() + float(sys.argv[4])
    with httpx.Client(timeout=httpx.Timeout(10, read=5)) as client:
        with client.stream("GET", url, headers=headers) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith(":"):
                    beats += 1
                if time.monotonic() > end:
                    break
    print(beats)
    sys.exit(0)

if mode == "follow":
    end = time.monotonic() + float(sys.argv[4])
    with httpx.Client(timeout=httpx.Timeout(10, read=5)) as client:
        with connect_sse(client, "GET", url, headers=headers) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                if sse.data:
                    print(json.dumps({"event": sse.event, "data": sse.data}), flush=True)
                if time.monotonic() > end:
                    print(json.dumps({"end": "timeout"}), flush=True)
                    sys.exit(0)
    print(json.dumps({"end": "closed"}), flush=True)
    sys.exit(0)

if mode == "resume":
    end = time.monotonic() + float(sys.argv[4])
    last_id = sys.argv[5] if len(sys.argv) > 5 else None
    while time.monotonic() < end:
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=5)) as client:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    print(json.dumps({"connected": source.response.status_code}), flush=True)
                    if source.response.status_code == 200:
                        for sse in source.iter_sse():
                            if sse.data and sse.event != "revoked":
                                print(json.dumps({"event": sse.event, "data": sse.data, "id": sse.id}), flush=True)
                                last_id = sse.id or last_id
                            if time.monotonic() > end:
                                break
        except (httpx.HTTPError, OSError) as e:
            print(json.dumps({"connected": type(e).__name__}), flush=True)
        time.sleep(0.3)
    print(json.dumps({"end": "timeout"}), flush=True)
    sys.exit(0)

want = int(sys.argv[4])
if len(sys.argv) > 5:
    headers["Last-Event-ID"] = sys.argv[5]
ids, last_id, sample = [], None, None
deadline = time.monotonic() + 60  # heartbeats keep the read alive; bound the wait
with httpx.Client(timeout=httpx.Timeout(10, read=30)) as client:
    with connect_sse(client, "GET", url, headers=headers) as source:
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if time.monotonic() > deadline:
                break
            if not sse.data:
                continue
            event = json.loads(sse.data)
            ids.append(event["id"])
            last_id = sse.id
            sample = sample or event
            if len(ids) >= want:
                break
print(json.dumps({"ids": ids, "last_id": last_id, "sample": sample}))
