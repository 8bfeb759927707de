# Conveyor — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
NODE_MODULES := node_modules/.package-lock.json
TSX := node --conditions=conveyor-source --import tsx

$(NODE_MODULES): package.json package-lock.json shared/package.json $(wildcard services/*/package.json)
	npm ci
	@touch $@

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: $(NODE_MODULES) ## Install dependencies from the lockfile

.PHONY: run
run: build ## Run the gateway and a worker (Redis from REDIS_URL, else a local redis-server); WORKERS=n for more
	$(TSX) scripts/run.ts

.PHONY: test
test: $(NODE_MODULES) ## Run every test (unit and integration; starts its own Redis)
	npm test

.PHONY: lint
lint: $(NODE_MODULES) ## ESLint (type-aware, security rules) and Prettier
	npm run lint

.PHONY: typecheck
typecheck: $(NODE_MODULES) ## TypeScript, strict, every package and test
	npm run typecheck

.PHONY: format
format: $(NODE_MODULES) ## Format the code with Prettier
	npm run format

.PHONY: build
build: $(NODE_MODULES) ## Compile every package to dist/
	npm run build

.PHONY: train
train: $(NODE_MODULES) ## Train the default digit model (deterministic) into models/digits
	$(TSX) services/trainer/src/main.ts --config services/trainer/configs/cnn.json --out models/digits

.PHONY: bench
bench: build ## Throughput and latency: full HTTP path vs. sharp + onnxruntime called directly
	$(TSX) bench/throughput.bench.ts $(ARGS)

.PHONY: clean
clean: ## Remove build output and local data
	rm -rf dist shared/dist services/*/dist data *.tsbuildinfo
