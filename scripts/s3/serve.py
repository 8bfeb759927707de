"""An S3-compatible server with one versioned bucket: moto's S3 backend (in memory), for the tests
(scripts/lib/s3-server.ts), `MLFLOW_S3=1 make mlflow` and compose's `s3` service (docker/s3.Dockerfile).

It binds first (port 0: the OS picks a free one, so concurrent test runs never race for a port),
then creates the bucket and turns versioning on through the S3 API itself, exactly as one would on
AWS, and only then prints one JSON line `{"msg": "s3 ready", "endpoint": …, "bucket": …}` on stdout:
whoever waits for that line (or compose's health check, a HEAD on the bucket) never sees a bucket
without versioning. SIGTERM or SIGINT stop it; everything it held is gone (moto keeps no files).

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

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


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
        DomainDispatcherApplication(create_backend_app),
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

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(json.dumps({"msg": "s3 ready", "endpoint": local, "port": port, "bucket": args.bucket or None}), flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
