"""Conveyor's authorization function for MLflow's basic-auth app (`authorization_function` in
basic-auth.ini): MLflow's own Basic authentication, plus one rule — only an admin may change
accounts.

Why: MLflow lets every account change its own password (`PATCH users/update-password` with the
current one). The workers and the monitor all hold the `reader` password, so any one of them (or
whoever reads one of their secrets) could change it and lock every worker and the monitor out of
the registry. In Conveyor, passwords come from secrets (provision-auth.py sets them at every start),
so no account but the admin has a reason to touch an account: every non-GET request under
`…/mlflow/users/` or `…/mlflow/roles/` (passwords, admin flags, creating and deleting accounts,
permissions and roles) is refused with 403 for anyone else, whatever MLflow's own validators would
allow. Reads (the UI's "current user") still work.

MLflow calls this for every request of the Flask app and, through its bridge, of the FastAPI routes;
it must return the request's Authorization or a Response. The server finds the module on PYTHONPATH
(harness/mlflow-server.ts and docker/mlflow.Dockerfile set it).
"""

import re

from flask import Response, request
from werkzeug.datastructures import Authorization

from mlflow.server.auth import authenticate_request_basic_auth, store

# /api/2.0/mlflow/users/update-password, /ajax-api/3.0/mlflow/roles/create, … (behind any static prefix).
_ACCOUNT_PATH = re.compile(r".*/(?:api|ajax-api)/\d+\.\d+/mlflow/(?:users|roles)(?:/.*)?")


def authenticate_request() -> Authorization | Response:
    authorization = authenticate_request_basic_auth()
    if isinstance(authorization, Response):
        return authorization
    if request.method not in ("GET", "HEAD", "OPTIONS") and _ACCOUNT_PATH.fullmatch(request.path):
        if not store.get_user(authorization.username).is_admin:
            return Response(
                "Permission denied: in Conveyor only the admin changes accounts and passwords "
                "(they come from secrets; see scripts/mlflow/provision-auth.py)",
                status=403,
                mimetype="text/plain",
            )
    return authorization
