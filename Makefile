# Conveyor — run `make help` for the targets. Sections start with `##@ Title`; a target is listed
# when its rule line ends in `## what it does`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
NODE_MODULES := node_modules/.package-lock.json
TSX := node --conditions=conveyor-source --import tsx
# The compose command for the compose targets: `docker compose` (the v2 line) when the Docker CLI has
# it, else docker-compose (1.29 works too). Choose with COMPOSE='…' (e.g. COMPOSE=docker-compose, or
# COMPOSE=.tools/cli-plugins/docker-compose after `make compose-v2`). Looked up only when used.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)

$(NODE_MODULES): package.json package-lock.json shared/package.json $(wildcard services/*/package.json)
	npm ci
	@touch $@

##@ Start here

.PHONY: help
help: ## List the targets, section by section
	@awk 'BEGIN {FS = ":.*?## "} /^##@ / {printf "\n\033[1m%s\033[0m\n", substr($$0, 5); next} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-26s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(NODE_MODULES) ## Install dependencies from the lockfile

.PHONY: run
run: build ## Run the gateway and a worker (Redis from REDIS_URL, else a local redis-server); WORKERS=n for more, MODELS=digits,moderation for both models
	$(TSX) scripts/run.ts

.PHONY: build
build: $(NODE_MODULES) ## Compile every package to dist/
	npm run build

.PHONY: clean
clean: ## Remove build output and local data
	rm -rf dist shared/dist services/*/dist data *.tsbuildinfo

##@ Checks

.PHONY: test
test: $(NODE_MODULES) ## Run every test (unit and integration; starts its own Redis)
	npm test

.PHONY: lint
lint: $(NODE_MODULES) ## ESLint (type-aware, security rules), Prettier, actionlint, promtool on the alert rules, and the Kubernetes manifests (k8s-validate)
	npm run lint
	bash scripts/promtool.sh
	bash scripts/k8s/validate.sh

.PHONY: typecheck
typecheck: $(NODE_MODULES) ## TypeScript, strict, every package and test
	npm run typecheck

# The docs site has its own package.json and lock (docs/): the services' install does not carry VitePress.
DOCS_MODULES := docs/node_modules/.package-lock.json

$(DOCS_MODULES): docs/package.json docs/package-lock.json
	npm --prefix docs ci --no-audit --no-fund
	@touch $@

.PHONY: docs
docs: $(DOCS_MODULES) ## Build the docs site (VitePress, offline) into docs/.vitepress/dist; a dead link between pages fails it
	npm --prefix docs run -s build

.PHONY: docs-screenshot
docs-screenshot: $(NODE_MODULES) ## Pictures of the built docs site (home, configuration) in headless Chromium → docs/images/docs-*.png (make docs first)
	$(TSX) scripts/screenshot-docs.ts

.PHONY: format
format: $(NODE_MODULES) ## Format the code with Prettier
	npm run format

.PHONY: k8s-validate
k8s-validate: ## Render deploy/k8s (dev, prod) with kustomize and validate offline: Kubernetes 1.37 schemas (strict), KEDA's ScaledObject schema, the project's rules
	bash scripts/k8s/validate.sh

.PHONY: rules-check
rules-check: ## promtool (pinned, built once into .tools/bin): check the Prometheus rules and config, run their unit tests
	bash scripts/promtool.sh

##@ Operating a running system

.PHONY: api-key
api-key: $(NODE_MODULES) ## Create an API key (NAME=… SCOPES=predict,feedback,admin WEIGHT=1 MAX_PRIORITY=normal) in REDIS_URL's Redis; LIST=1 lists, REVOKE=<id> removes
	$(TSX) services/gateway/src/api-key.ts $(if $(NAME),--name "$(NAME)",) $(if $(SCOPES),--scopes "$(SCOPES)",) $(if $(WEIGHT),--weight "$(WEIGHT)",) $(if $(MAX_PRIORITY),--max-priority "$(MAX_PRIORITY)",) $(if $(LIST),--list,) $(if $(REVOKE),--revoke "$(REVOKE)",)

.PHONY: callback-secret
callback-secret: ## Print a new secret for signing result callbacks (CALLBACK_SECRET, Standard Webhooks whsec_ form)
	@node -e "console.log('whsec_' + require('node:crypto').randomBytes(32).toString('base64'))"

.PHONY: signing-key
signing-key: $(NODE_MODULES) ## An Ed25519 key pair for model signatures in data/keys (trainer: MODEL_SIGNING_KEY_FILE, workers: MODEL_SIGNING_PUBLIC_KEY_FILE)
	$(TSX) scripts/signing-key.ts

.PHONY: screenshot-page
screenshot-page: $(NODE_MODULES) ## The picture of the page at / in the README and docs (docs/images/page.png) from a running system (GATEWAY_URL, default http://localhost:8080)
	$(TSX) scripts/screenshot-page.ts

##@ Models, training and MLflow

.PHONY: mlflow
mlflow: $(NODE_MODULES) ## MLflow tracking server and UI on 127.0.0.1:5000 (installs the pinned server into .venv/mlflow once); MLFLOW_AUTH=1 with accounts, as compose; MLFLOW_S3=1 artifacts in a local versioned bucket (MLFLOW_ARTIFACTS_DESTINATION=s3://… for a real one)
	$(TSX) scripts/mlflow.ts

.PHONY: train
train: $(NODE_MODULES) ## ingest → validate → train 3 experiments → track in MLflow → register the best (alias staging) → models/digits, MODEL_CARD.md
	$(TSX) scripts/with-mlflow.ts $(TSX) services/trainer/src/main.ts all --publish models/digits --card MODEL_CARD.md --reports docs/validation

.PHONY: model-add
model-add: $(NODE_MODULES) ## Your own model, no code: FILE=model.onnx NAME=… LABELS=labels.txt|a,b,c [PRESET=imagenet|inception|unit] [CHANNEL_ORDER=bgr] [MODELS_DIR=models] → MODELS_DIR/NAME (docs/own-model.md)
	$(TSX) services/inference-worker/src/models-cli/main.ts add "$(FILE)" --name "$(NAME)" --labels "$(LABELS)" $(if $(PRESET),--preset $(PRESET),) $(if $(CHANNEL_ORDER),--channel-order $(CHANNEL_ORDER),) $(if $(MODELS_DIR),--models-dir $(MODELS_DIR),)

.PHONY: model-profile
model-profile: $(NODE_MODULES) ## A model's drift reference from your images: NAME=… IMAGES=dir [LABEL=class] → MODELS_DIR/NAME/reference-profile.json
	$(TSX) services/inference-worker/src/models-cli/main.ts profile "$(NAME)" "$(IMAGES)" $(if $(LABEL),--label $(LABEL),) $(if $(MODELS_DIR),--models-dir $(MODELS_DIR),)

.PHONY: promote
promote: $(NODE_MODULES) ## Apply the promotion gate to the staging version; move the production alias if it passes
	$(TSX) scripts/with-mlflow.ts $(TSX) services/trainer/src/main.ts promote $(if $(VERSION),--version $(VERSION),)

.PHONY: rollback
rollback: $(NODE_MODULES) ## Point the production alias back at the version it replaced
	$(TSX) scripts/with-mlflow.ts $(TSX) services/trainer/src/main.ts rollback

.PHONY: replay
replay: $(NODE_MODULES) ## Replay a recorded set (SET: a set folder, default data/replay/MODEL, or the workers' live store s3://bucket/prefix or its folder, newest LIMIT inputs), RATE a second (default 20; 0: unpaced), through CANDIDATE (a model folder, or a registry version with MLFLOW_TRACKING_URI) on a running system's own low-priority replay worker; judge it with promotion.json (docs/replay.md)
	$(TSX) scripts/replay.ts --model "$(or $(MODEL),digits)" --candidate "$(CANDIDATE)" $(if $(SET),--set "$(SET)",) $(if $(OUT),--out "$(OUT)",) $(if $(LIMIT),--limit "$(LIMIT)",) $(if $(RATE),--rate "$(RATE)",)

.PHONY: replay-record
replay-record: $(NODE_MODULES) ## Record production's answers to the images in IMAGES=<dir> through the gateway as a replay set (SET, default data/replay/MODEL)
	$(TSX) scripts/replay.ts --model "$(or $(MODEL),digits)" --record "$(IMAGES)" $(if $(SET),--set "$(SET)",)

.PHONY: shadow-report
shadow-report: $(NODE_MODULES) ## Report a shadow's recorded pairs (SHADOW_VERSION on the workers) as replay does: MODEL=… [LIMIT=n newest] [SHADOW=version] [OUT=dir]; judged with promotion.json (docs/shadow.md)
	$(TSX) scripts/shadow-report.ts --model "$(or $(MODEL),digits)" $(if $(LIMIT),--limit "$(LIMIT)",) $(if $(SHADOW),--shadow "$(SHADOW)",) $(if $(OUT),--out "$(OUT)",)

.PHONY: replay-purge
replay-purge: $(NODE_MODULES) ## Delete recorded days of MODEL (or all) from the live replay store (STORE or REPLAY_STORE) for good, every S3 version: those past REPLAY_RETENTION_DAYS, before BEFORE=<YYYY-MM-DD>, or every day with ALL=1
	$(TSX) scripts/replay-purge.ts --model "$(or $(MODEL),all)" $(if $(BEFORE),--before "$(BEFORE)",) $(if $(filter 1,$(ALL)),--all,) $(if $(STORE),--store "$(STORE)",)

.PHONY: model-moderation
model-moderation: $(NODE_MODULES) ## models/moderation: nsfwjs's MobileNetV2 → ONNX (pinned .venv/models), sha256 checked, compared with the original in tfjs (RECORD=1 rewrites its reference predictions)
	$(TSX) scripts/models/moderation.ts $(if $(RECORD),--record,)

.PHONY: model-moderation-profile
model-moderation-profile: $(NODE_MODULES) ## models/moderation/reference-profile.json: the serving pipeline over the scikit-image photographs, whole and cropped (IMAGES=dir LABEL=class: from your own traffic)
	$(TSX) scripts/models/moderation-profile.ts $(if $(IMAGES),--images $(IMAGES),) $(if $(LABEL),--label $(LABEL),)

.PHONY: orchestrate
orchestrate: $(NODE_MODULES) ## Prefect 3: server (UI 127.0.0.1:4200, data/prefect), the weekly training deployment, a worker, one run now, then up until Ctrl-C; ONCE=1 exits after the run
	$(TSX) scripts/with-mlflow.ts $(TSX) scripts/orchestrate.ts

.PHONY: orchestrate-screenshots
orchestrate-screenshots: $(NODE_MODULES) ## One orchestrated run (PARAMETERS='{"configs": […]}' for others), then screenshots of the Prefect UI → docs/images
	SCREENSHOTS=1 $(TSX) scripts/with-mlflow.ts $(TSX) scripts/orchestrate.ts

.PHONY: screenshots
screenshots: $(NODE_MODULES) ## Screenshots of the MLflow UI (runs, registry) in headless Chromium → docs/images
	$(TSX) scripts/with-mlflow.ts $(TSX) scripts/screenshot-mlflow.ts

##@ Containers

.PHONY: compose-up
compose-up: ## docker compose up -d --build: DIGITS_WORKERS (4) and MODERATION_WORKERS (1) workers from .env (gateway :8080, monitor :9100, MLflow :5000)
	$(COMPOSE) up -d --build

.PHONY: compose-down
compose-down: ## Stop the compose system and remove its volumes
	$(COMPOSE) down -v

.PHONY: compose-smoke
compose-smoke: ## Build, start (4 digits + 1 moderation workers), check from outside (predictions, spread, per-model scaling, dashboard, monitor, MLflow), tear down; COMPOSE='…' chooses the compose
	COMPOSE='$(COMPOSE)' bash scripts/compose-smoke.sh

.PHONY: compose-v2
compose-v2: ## Build docker compose v5.6.0 (the v2 line) from the Go module proxy into .tools/cli-plugins (once); then make compose-smoke COMPOSE=.tools/cli-plugins/docker-compose
	bash scripts/compose-v2.sh

.PHONY: compose-remote-run
compose-remote-run: CONTAINER_CLI := $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
compose-remote-run: ## Compose with the orchestrator (2 workers per model), one remote training run in the trainer container, recorded → docs/evidence, docs/images
	DIGITS_WORKERS=2 MODERATION_WORKERS=2 $(COMPOSE) -f docker-compose.yml -f docker-compose.orchestration.yml up -d --build
	COMPOSE='$(COMPOSE)' CONTAINER_CLI=$(CONTAINER_CLI) $(TSX) scripts/evidence/remote-training.ts

.PHONY: cost-table
cost-table: $(NODE_MODULES) ## Rewrite the cost table of docs/training.md from docs/evidence/remote-training-run.json × AWS list prices
	$(TSX) scripts/cost/cost-table.ts

##@ Benchmarks and demonstrations

.PHONY: bench
bench: build ## Benchmarks: Conveyor (1 and 2 workers) vs in-process, FastAPI (and BentoML with BENTOML=1) on digits and the real MobileNetV2 (moderation) at c1/c16/c64; preprocessing; batching; drift
	$(TSX) bench/compare.bench.ts $(if $(BENTOML),--bentoml,) $(ARGS)
	$(TSX) bench/preprocess.bench.ts
	$(TSX) bench/batching.bench.ts
	$(TSX) bench/drift.bench.ts

.PHONY: bench-compare
bench-compare: build ## Only the comparison (ARGS="--bentoml --rounds 1 --requests 200" for a quick look, --models moderation for one model)
	$(TSX) bench/compare.bench.ts $(ARGS)

.PHONY: bench-cache
bench-cache: $(NODE_MODULES) ## The result cache: gateway and worker CPU per cache hit vs per miss (ARGS="--requests 400 --rounds 5 --concurrency 4")
	$(TSX) bench/cache-hit.bench.ts $(ARGS)

.PHONY: drift-demo
drift-demo: build ## Normal → shifted → normal traffic through the system; the monitor alerts once and resolves; report in docs/reports
	$(TSX) scripts/drift-demo.ts

##@ Load tests

# Load tests (loadtests/): each starts a whole system of its own on free ports and checks it against
# loadtests/slo.yaml (SLO_FILE=… for another); Locust and matplotlib come from .venv/loadtests, vegeta
# from .tools/bin, both installed on first use. ARGS=… go to the driver (loadtests/capacity.ts).
LOADTEST := $(TSX) loadtests/capacity.ts

.PHONY: loadtest
loadtest: build ## Capacity per model: vegeta rate ladders to saturation (digits 1/2/4 workers, moderation 1/2) → loadtests/results/capacity.csv, capacity[-moderation].png (digits alone: 11.5 min)
	$(LOADTEST) capacity $(ARGS)

.PHONY: loadtest-scaleout
loadtest-scaleout: build ## Proof: a rate that overloads 1 worker, 3 workers added at 20 s, p95 per 5 s → loadtests/results/scaleout.csv (~1.5 min)
	$(LOADTEST) scaleout $(ARGS)

.PHONY: api-fuzz
api-fuzz: $(NODE_MODULES) ## Schemathesis (pinned, .venv/api-tests) with every check against a system of its own, offline (test/api/schemathesis.toml); ARGS go to `st run`
	bash scripts/api/fuzz.sh $(ARGS)

.PHONY: python-client-test
python-client-test: ## The Python client's pytest suite (clients/python) against CONVEYOR_URL (make test runs it against a system of its own)
	bash scripts/api/python-client-test.sh $(ARGS)

.PHONY: loadtest-smoke
loadtest-smoke: build ## 40 s Locust run at a modest rate + SLO check (CI); HTML report in loadtests/results/smoke-report.html
	$(LOADTEST) smoke $(ARGS)

.PHONY: loadtest-locust
loadtest-locust: build ## The Locust scenario in steps up to and past saturation (2 workers, ~4 min) → loadtests/results/locust-report.html
	$(LOADTEST) locust $(ARGS)

.PHONY: soak
soak: build ## Proof of endurance and isolation: the Locust mix at ~80 % of capacity for SOAK_MINUTES (120) with hostile clients beside it → loadtests/results/soak/ (docs/soak.md); exits 1 on a breach
	$(TSX) loadtests/soak.ts

.PHONY: soak-ci
# The CI soak keeps what Redis retains per job for 60 s (results, the monitor's records) and the prediction
# stream at 5,000 entries, so that ten minutes reach the plateau that the defaults (600 s, 100,000) reach
# only after ~15 minutes at this rate; `make soak` runs with the defaults.
SOAK_CI_ENV := RESULT_TTL_SECONDS=60 PREDICTION_TTL_SECONDS=60 PREDICTION_STREAM_MAXLEN=5000

soak-ci: build ## The soak for 10 minutes (CI): the same checks, retention scaled down so the plateau shows (~11 min in all)
	SOAK_MINUTES=$${SOAK_MINUTES:-10} SOAK_ENV="$${SOAK_ENV:-$(SOAK_CI_ENV)}" $(TSX) loadtests/soak.ts
