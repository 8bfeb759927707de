# The orchestrator: one image for the Prefect server and the Prefect worker (docker-compose.orchestration.yml).
# The worker runs the training flow (orchestration/), whose tasks run the project's own trainer:
# so the image holds Node with the compiled trainer and its dependencies, and Python with Prefect
# from the pinned lock (requirements/prefect.lock.txt) in a venv. Runs as an unprivileged user.
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS trainer
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY shared/package.json shared/
COPY services/gateway/package.json services/gateway/
COPY services/inference-worker/package.json services/inference-worker/
COPY services/monitor/package.json services/monitor/
COPY services/trainer/package.json services/trainer/
RUN npm ci --no-audit --no-fund
COPY tsconfig.base.json tsconfig.build.json ./
COPY shared shared
COPY services services
RUN npm run build

FROM ${NODE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY requirements/prefect.lock.txt /tmp/prefect.lock.txt
RUN python3 -m venv /opt/prefect \
 && /opt/prefect/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/prefect.lock.txt \
 && rm /tmp/prefect.lock.txt
WORKDIR /app
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /app --shell /usr/sbin/nologin conveyor
COPY --from=trainer /app /app
COPY orchestration orchestration
RUN mkdir -p /app/data /prefect && chown -R conveyor:conveyor /app/data /prefect
USER conveyor
# The flow's tasks run services/trainer/dist (no tsx at run time); Prefect offline, home on a volume.
# The server writes its UI's static files at start-up: by default into the venv, which this user may
# not write (the UI was then missing), so into the volume.
ENV PATH=/opt/prefect/bin:$PATH \
    CONVEYOR_TRAINER=dist \
    PREFECT_HOME=/prefect \
    PREFECT_UI_STATIC_DIRECTORY=/prefect/ui \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/prefect", "/app/data"]
CMD ["prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"]
