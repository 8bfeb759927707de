# One image for the gateway, the inference workers and the drift monitor: the command picks the
# service (see docker-compose.yml). Dependencies come from the lockfile; TypeScript is compiled in
# a build stage; the runtime stage holds production dependencies, the compiled code and both models
# (models/digits as committed, models/moderation converted in its own stage), and runs as an
# unprivileged user.
ARG NODE_IMAGE=node:22-bookworm-slim

# The lockfile and the workspaces' package.json files: what both dependency stages install from.
FROM ${NODE_IMAGE} AS manifests
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY shared/package.json shared/
COPY services/gateway/package.json services/gateway/
COPY services/inference-worker/package.json services/inference-worker/
COPY services/monitor/package.json services/monitor/
COPY services/trainer/package.json services/trainer/
COPY clients/typescript/package.json clients/typescript/

FROM manifests AS deps
RUN npm ci --no-audit --no-fund

FROM deps AS build
COPY tsconfig.base.json tsconfig.build.json ./
COPY shared shared
COPY services services
COPY clients clients
RUN npm run build

# models/moderation/model.onnx is not in the repository (its converter and checksum are): it is built
# here exactly as `make model-moderation` builds it, so every image serves the same, checked file
# whatever the build context holds. nsfwjs is fetched with `npm pack` (integrity checked), numpy and
# onnx come from the pinned lock into a venv, and convert.py refuses any output but the manifest's
# sha256. The file is the same on every architecture. (The comparison with the original model in
# tfjs, which `make model-moderation` also runs, is left to the tests.)
FROM deps AS moderation-model
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY shared shared
COPY harness harness
COPY requirements/models.in requirements/models.lock.txt requirements/
COPY scripts/models scripts/models
COPY models/moderation models/moderation
RUN rm -f models/moderation/model.onnx \
 && node --conditions=conveyor-source --import tsx scripts/models/moderation.ts --build-only \
 && rm -rf .venv .tools

FROM manifests AS prod-deps
# Serving services only (the trainer's tfjs stays out), and onnxruntime's native binding for the
# architecture the image is built for only (TARGETARCH, set by BuildKit: amd64 or arm64; the
# script fails if that binding is missing, so no image ships workers that cannot load a model).
ARG TARGETARCH
COPY docker/prune-onnxruntime.sh docker/
RUN npm ci --omit=dev --no-audit --no-fund \
      --workspace shared --workspace services/gateway --workspace services/inference-worker --workspace services/monitor \
 && sh docker/prune-onnxruntime.sh "$TARGETARCH" node_modules/onnxruntime-node/bin \
 && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    CONVEYOR_SERVICE=gateway \
    HEALTH_FILE=/tmp/conveyor-healthy
WORKDIR /app
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /app --shell /usr/sbin/nologin conveyor
COPY --from=prod-deps /app/node_modules node_modules
COPY --from=prod-deps /app/package.json ./
COPY --from=prod-deps /app/shared/package.json shared/
COPY --from=prod-deps /app/services/gateway/package.json services/gateway/
COPY --from=prod-deps /app/services/inference-worker/package.json services/inference-worker/
COPY --from=prod-deps /app/services/monitor/package.json services/monitor/
COPY --from=build /app/shared/dist shared/dist
COPY --from=build /app/services/gateway/dist services/gateway/dist
# The page at / and the API reference at /docs (plain files, read at start-up).
COPY services/gateway/public services/gateway/public
COPY --from=build /app/services/inference-worker/dist services/inference-worker/dist
COPY --from=build /app/services/monitor/dist services/monitor/dist
COPY models models
COPY --from=moderation-model /app/models/moderation/model.onnx models/moderation/model.onnx
COPY docker/healthcheck.mjs docker/healthcheck.mjs
RUN mkdir -p /app/data && chown -R conveyor:conveyor /app/data
USER conveyor
EXPOSE 8080 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["node", "docker/healthcheck.mjs"]
ENTRYPOINT ["node"]
CMD ["services/gateway/dist/main.js"]
