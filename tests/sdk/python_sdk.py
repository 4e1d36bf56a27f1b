"""Sends events to switchyard through the official Segment Python SDK
(segment-analytics-python), for crates/switchyard/tests/sdk.rs.

Environment:
  HOST       switchyard's base URL, e.g. http://127.0.0.1:8080 (required)
  WRITE_KEY  the source's write key (required)
  RUN_ID     tag put in every event (properties.run_id, traits.run_id, or
             context.run_id for alias) so the test can attribute deliveries
  COUNT      how many track events after the six call types (default 1000)
  MODE       "async" (default): the SDK's background consumer batches and
             retries; exit 0 only if on_error was never called.
             "sync": sync_mode, one request per call and no SDK retry; every
             call that returned (HTTP 2xx) prints "ACK <messageId>", every one
             that raised prints "FAIL <messageId> <error>"; the script keeps
             going through errors (for the crash test) and exits 0.
  INTERVAL_MS  pause between track calls (default 0)

stdout: "SENT <messageId>" for every message handed to the SDK (async mode),
"ACK …"/"FAIL …" (sync mode), then "DONE sent=<n> errors=<n>".
"""

import os
import sys
import time

import segment.analytics as analytics


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    host = os.environ["HOST"]
    write_key = os.environ["WRITE_KEY"]
    run_id = os.environ.get("RUN_ID", "run")
    count = int(os.environ.get("COUNT", "1000"))
    mode = os.environ.get("MODE", "async")
    interval = int(os.environ.get("INTERVAL_MS", "0")) / 1000.0
    if mode not in ("async", "sync"):
        sys.exit("MODE must be async or sync")
    sync = mode == "sync"

    errors = []

    def on_error(error, items):
        errors.append((error, len(items)))
        sys.stderr.write("python SDK on_error: %s (%d messages)\n" % (error, len(items)))

    analytics.write_key = write_key
    analytics.host = host
    analytics.on_error = on_error
    analytics.sync_mode = sync
    analytics.debug = False
    analytics.gzip = False
    # Generous: the SDK must not give up while switchyard restarts.
    analytics.max_retries = 10
    analytics.timeout = 15

    sent = 0

    def call(method, **kwargs):
        nonlocal sent
        try:
            ok, msg = getattr(analytics, method)(**kwargs)
        except Exception as e:  # sync mode: the request failed
            # The SDK builds the message before posting; without it we cannot
            # name the messageId, so the caller passes one in.
            out("FAIL %s %s" % (kwargs.get("message_id"), str(e).replace("\n", " ")[:200]))
            errors.append((e, 1))
            if sync:
                time.sleep(0.05)
            return
        sent += 1
        if not ok:
            errors.append(("queue full", 1))
            out("FAIL %s queue full" % msg["messageId"])
        elif sync:
            out("ACK %s" % msg["messageId"])
        else:
            out("SENT %s" % msg["messageId"])

    # In sync mode a failed call raises before returning the message, so the
    # messageIds are made here (as any caller may); in async mode the SDK
    # generates them.
    def mid(label):
        return "py-%s-%s" % (run_id, label) if sync else None

    user = "py-user-" + run_id
    call("identify", user_id=user, traits={"run_id": run_id, "email": "py@example.com", "plan": "pro"}, message_id=mid("identify"))
    call(
        "track",
        user_id=user,
        event="Order Completed",
        properties={"run_id": run_id, "revenue": 39.95, "whole": 2.0, "items": [{"sku": "a", "qty": 1}]},
        message_id=mid("track"),
    )
    call("page", user_id=user, category="Docs", name="Pricing", properties={"run_id": run_id, "path": "/pricing"}, message_id=mid("page"))
    call("screen", anonymous_id="py-anon-" + run_id, name="Main Screen", properties={"run_id": run_id}, message_id=mid("screen"))
    call("group", user_id=user, group_id="py-group", traits={"run_id": run_id, "name": "Initech"}, message_id=mid("group"))
    call("alias", previous_id="py-anon-" + run_id, user_id=user, context={"run_id": run_id}, message_id=mid("alias"))
    for seq in range(count):
        call(
            "track",
            user_id=user,
            event="Load Event",
            properties={"run_id": run_id, "seq": seq},
            message_id=mid("seq-%d" % seq),
        )
        if interval:
            time.sleep(interval)

    if not sync:
        analytics.flush()
        analytics.shutdown()
    out("DONE sent=%d errors=%d" % (sent, len(errors)))
    if errors and not sync:
        sys.stderr.write("python SDK reported %d error(s)\n" % len(errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
