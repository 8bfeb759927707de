# Jaeger v2 (all in one: OTLP receiver, in-memory storage, query API) for the observability profile
# (docker-compose.observability.yml), built from the Go module proxy exactly as the tests build it
# (scripts/jaeger.sh, the pinned module in harness/jaeger): Jaeger's own images and release binaries
# are on hosts this project's machines cannot reach. Such a binary has no UI assets: the API at
# :16686/api/traces answers, the UI page is a placeholder (docs/tracing.md).
FROM debian:bookworm-slim AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/ensure-go.sh scripts/jaeger.sh scripts/
COPY harness/jaeger harness/jaeger
RUN bash scripts/jaeger.sh

FROM debian:bookworm-slim
COPY --from=build /src/.tools/bin/jaeger /usr/local/bin/jaeger
COPY harness/jaeger/compose.yaml /etc/jaeger/config.yaml
USER 65534
EXPOSE 4318 16686
ENTRYPOINT ["/usr/local/bin/jaeger", "--config=file:/etc/jaeger/config.yaml"]
