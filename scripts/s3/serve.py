"""An S3-compatible server with one versioned bucket: moto's S3 backend (in memory), for the tests
(harness/s3-server.ts), `MLFLOW_S3=1 make mlflow` and compose's `s3` service (docker/s3.Dockerfile).

It binds first (port 0: the OS picks a free one, so concurrent test runs never race for a port),
then creates the bucket, turns versioning on and sets the lifecycle rule of lifecycle.json (beside
this file: noncurrent versions expire after N days) through the S3 API itself, exactly as one would
on AWS, and only then prints one JSON line `{"msg": "s3 ready", "endpoint": …, "bucket": …}` on
stdout: whoever waits for that line (or compose's health check, a HEAD on the bucket) never sees a
bucket without versioning. SIGTERM or SIGINT stop it; everything it held is gone (moto keeps no files).
moto stores the lifecycle rule and answers for it, but never runs it (no time passes in moto).

`GET /_conveyor/requests` (not an S3 call: no bucket name starts with `_`) answers the signed S3
requests served so far, counted by AWS's price classes (PUT/COPY/POST/LIST, GET and the rest, DELETE
free) and by operation: the cost table (scripts/cost/) counts a training run's requests with it.
Unsigned requests (health checks, this counter) are not counted.

moto accepts any credentials. The ones this script signs its own requests with are random, made
here: nothing secret is configured, in the repository or anywhere else.
"""

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


LIFECYCLE = Path(__file__).with_name("lifecycle.json")
COUNTER_PATH = "/_conveyor/requests"
# Query parameters that make a GET on a bucket a LIST (priced with PUT, COPY and POST on AWS).
LIST_PARAMS = frozenset({"list-type", "versions", "uploads", "prefix", "delimiter", "marker", "max-keys"})


def price_class(method: str, on_object: bool, query: dict[str, list[str]], copy: bool) -> str:
    """AWS S3 Standard's request price classes: PUT, COPY, POST and LIST; GET, SELECT and every other
    request (HEAD, the bucket's settings); DELETE and CANCEL are free."""
    if method == "DELETE":
        return "delete"
    if method in ("PUT", "POST") or copy:
        return "put_copy_post_list"
    if method == "GET" and not on_object and (LIST_PARAMS & query.keys() or not query):
        return "put_copy_post_list"
    return "get_and_other"


class RequestCounter:
    """A WSGI wrapper that counts signed S3 requests and serves the counts at COUNTER_PATH."""

    def __init__(self, app: Callable[..., Iterable[bytes]], bucket: str) -> None:
        self.app = app
        self.bucket = bucket
        self.lock = threading.Lock()
        self.by_class: Counter[str] = Counter()
        self.by_operation: Counter[str] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == COUNTER_PATH:
            with self.lock:
                body = json.dumps(
                    {
                        "total": sum(self.by_class.values()),
                        "by_class": dict(self.by_class),
                        "by_operation": dict(self.by_operation),
                    }
                ).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if environ.get("HTTP_AUTHORIZATION") or "X-Amz-Signature" in query:
            method = environ.get("REQUEST_METHOD", "GET")
            # Path-style (/bucket/key) or virtual-hosted (bucket.host/key) addressing.
            virtual = environ.get("HTTP_HOST", "").startswith(f"{self.bucket}.")
            parts = [p for p in path.split("/") if p]
            on_object = len(parts) >= (1 if virtual else 2)
            copy = bool(environ.get("HTTP_X_AMZ_COPY_SOURCE"))
            operation = f"{method} {'object' if on_object else 'bucket'}"
            if not on_object and query:
                operation += "?" + "&".join(sorted(query))
            with self.lock:
                self.by_class[price_class(method, on_object, query, copy)] += 1
                self.by_operation[operation] += 1
        return self.app(environ, start_response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port, chosen by the OS")
    parser.add_argument("--bucket", default=os.environ.get("S3_BUCKET", ""), help="created with versioning on (env S3_BUCKET)")
    args = parser.parse_args()
    # One line per request from werkzeug would drown the caller's output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # Bound here, in the main thread, so a taken port is an error and an exit, not a thread that
    # dies while the caller waits (moto's ThreadedMotoServer would wait forever).
    server = make_server(
        args.host,
        args.port,
        RequestCounter(DomainDispatcherApplication(create_backend_app), args.bucket),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_port
    local = f"http://127.0.0.1:{port}" if args.host in ("0.0.0.0", "::") else f"http://{args.host}:{port}"

    if args.bucket:
        s3 = boto3.client(
            "s3",
            endpoint_url=local,
            region_name="us-east-1",
            aws_access_key_id=secrets.token_hex(10),
            aws_secret_access_key=secrets.token_hex(20),
        )
        s3.create_bucket(Bucket=args.bucket)
        s3.put_bucket_versioning(Bucket=args.bucket, VersioningConfiguration={"Status": "Enabled"})
        status = s3.get_bucket_versioning(Bucket=args.bucket).get("Status")
        if status != "Enabled":
            print(f"bucket {args.bucket}: versioning is {status!r} after enabling it", file=sys.stderr)
            return 1
        s3.put_bucket_lifecycle_configuration(
            Bucket=args.bucket, LifecycleConfiguration=json.loads(LIFECYCLE.read_text())
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(json.dumps({"msg": "s3 ready", "endpoint": local, "port": port, "bucket": args.bucket or None}), flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
