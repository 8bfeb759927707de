"""Makes MLflow's basic-auth user store hold Conveyor's accounts, before the server starts.

Run with the MLflow venv's Python and the same MLFLOW_AUTH_CONFIG_PATH as `mlflow server
--app-name basic-auth`, so it writes the database that server reads (`database_uri` in the INI):

  admin   `admin_username` of the INI (or MLFLOW_AUTH_ADMIN_USERNAME), an MLflow admin: the trainer's
          account, the only one that registers versions and moves aliases.
          Password: MLFLOW_AUTH_ADMIN_PASSWORD_FILE (a secret's path) or MLFLOW_AUTH_ADMIN_PASSWORD.
  reader  MLFLOW_AUTH_READER_USERNAME (default `reader`), not an admin: with the INI's
          `default_permission = READ` it can read every experiment, run, artifact and model version
          and change nothing: the workers' and the monitor's account. Password:
          MLFLOW_AUTH_READER_PASSWORD_FILE or MLFLOW_AUTH_READER_PASSWORD; no reader without one.

Why here and not through the REST API once the server is up: the accounts exist before the first
request can arrive (a worker starting with the server gets no 401 for a user not created yet),
and the admin password never has to be in the server's environment (MLflow reads it only to create
the admin on first start, and ignores it afterwards). Every start sets the configured passwords, so
the secrets are the truth: rotate one by changing the secret and restarting. Idempotent.
"""

import os
import sys
import warnings

# Importing the auth store imports the whole server, whose Starlette import warns on every start.
warnings.filterwarnings("ignore", message=".*starlette.middleware.wsgi is deprecated")

from mlflow.server.auth.config import read_auth_config  # noqa: E402
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore  # noqa: E402


def secret(name: str) -> str | None:
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except OSError as error:
            sys.exit(f"provision-auth: cannot read {name}_FILE ({path}): {error.strerror}")
        # Secrets written by `echo` or an editor end with a newline that is not part of them.
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            sys.exit(f"provision-auth: {name}_FILE ({path}) is empty")
        return value
    return os.environ.get(name) or None


def ensure(store: SqlAlchemyStore, username: str, password: str, is_admin: bool) -> str:
    if not store.has_user(username, use_primary=True):
        store.create_user(username, password, is_admin=is_admin)
        return "created"
    changed = []
    if not store.authenticate_user(username, password, use_primary=True):
        changed.append("password")
    if store.get_user(username).is_admin != is_admin:
        changed.append("admin flag")
    if changed:
        store.update_user(username, password=password, is_admin=is_admin)
        return f"{' and '.join(changed)} updated"
    return "unchanged"


def main() -> None:
    config = read_auth_config()
    admin = config.admin_username
    admin_password = secret("MLFLOW_AUTH_ADMIN_PASSWORD")
    if not admin or not admin_password:
        sys.exit(
            "provision-auth: the MLflow admin needs a username (admin_username in the INI) and a "
            "password (MLFLOW_AUTH_ADMIN_PASSWORD_FILE or MLFLOW_AUTH_ADMIN_PASSWORD)"
        )
    reader = os.environ.get("MLFLOW_AUTH_READER_USERNAME") or "reader"
    reader_password = secret("MLFLOW_AUTH_READER_PASSWORD")
    if reader == admin:
        sys.exit(f"provision-auth: the reader cannot be the admin ({admin})")
    for name, password in [(admin, admin_password), (reader, reader_password)]:
        if password is not None and len(password) < 12:
            # MLflow's own rule; said here with the account's name instead of deep in a traceback.
            sys.exit(f"provision-auth: the password of {name} must be at least 12 characters")

    store = SqlAlchemyStore()
    store.init_db(config.database_uri)
    done = [f"admin {admin!r} {ensure(store, admin, admin_password, True)}"]
    if reader_password is not None:
        done.append(f"reader {reader!r} {ensure(store, reader, reader_password, False)}")
    print(f"provision-auth: {', '.join(done)} (default permission {config.default_permission})", file=sys.stderr)


if __name__ == "__main__":
    main()
