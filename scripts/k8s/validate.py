"""Validates rendered Kubernetes manifests offline (`make k8s-validate`, scripts/k8s/validate.sh).

    python validate.py --kubernetes 1.37.0 --keda-schema deploy/k8s/schemas/keda-scaledobject.json \
        [--external-secret conveyor-secrets] rendered.yaml

Three checks, each of which fails the run (exit 1) with one line per problem:

1. Every built-in resource against the Kubernetes OpenAPI schema of the given release, strictly
   (unknown fields are errors): kubernetes-validate, which bundles the schemas (nothing is fetched).
2. Every KEDA ScaledObject against the openAPIV3Schema of KEDA's CRD, a pinned copy committed with
   its source (deploy/k8s/schemas/). Strict too: the API server prunes or (with strict field
   validation) refuses unknown fields, so a misspelt key would silently do nothing.
3. The project's own rules for its workloads: non-root, read-only root filesystem, no privilege
   escalation, no service-account token, requests and limits, probes, a grace period longer than
   the drain budget, the app.kubernetes.io labels, a PodDisruptionBudget and an autoscaler per
   Deployment, and references (ConfigMaps, Secrets, scale targets) that resolve.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml

LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/instance", "app.kubernetes.io/part-of")


def strict(schema: Any) -> Any:
    """The schema with additionalProperties: false wherever it lists properties and allows no more."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def containers(pod: dict) -> Iterator[dict]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def env_value(container: dict, configmaps: dict[str, dict], key: str) -> str | None:
    for entry in container.get("env") or []:
        if entry.get("name") == key and "value" in entry:
            return str(entry["value"])
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        if ref in configmaps and key in (configmaps[ref].get("data") or {}):
            return str(configmaps[ref]["data"][key])
    return None


def check_rules(docs: list[dict], external_secrets: set[str]) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    configmaps = by_kind.get("ConfigMap", {})
    secrets = set(by_kind.get("Secret", {})) | external_secrets
    deployments = by_kind.get("Deployment", {})
    pdbs = list(by_kind.get("PodDisruptionBudget", {}).values())
    scaled = {
        **{d["spec"]["scaleTargetRef"]["name"]: name_of(d) for d in by_kind.get("ScaledObject", {}).values()},
        **{d["spec"]["scaleTargetRef"]["name"]: name_of(d) for d in by_kind.get("HorizontalPodAutoscaler", {}).values()},
    }

    for doc in docs:
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if doc["kind"] not in ("Namespace", "Secret", "ConfigMap") and not all(label in labels for label in LABELS):
            problems.append(f"{name_of(doc)}: labels {', '.join(label for label in LABELS if label not in labels)} missing")

    for name, deployment in deployments.items():
        where = f"Deployment/{name}"
        template = deployment["spec"]["template"]
        pod = template["spec"]
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false (no workload talks to the API)")
        security = pod.get("securityContext") or {}
        if security.get("runAsNonRoot") is not True:
            problems.append(f"{where}: securityContext.runAsNonRoot must be true")
        if (security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile RuntimeDefault missing")
        if not any(
            all(pod_labels.get(k) == v for k, v in ((pdb["spec"].get("selector") or {}).get("matchLabels") or {}).items())
            for pdb in pdbs
        ):
            problems.append(f"{where}: no PodDisruptionBudget selects its pods")
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") in ("gateway", "inference-worker") and name not in scaled:
            problems.append(f"{where}: no HorizontalPodAutoscaler or ScaledObject scales it")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for container in containers(pod):
            c = f"{where} container {container['name']}"
            sc = container.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{c}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{c}: allowPrivilegeEscalation must be false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{c}: capabilities must drop ALL")
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        problems.append(f"{c}: resources.{part}.{resource} missing")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{c}: {probe} missing")
            for source in container.get("envFrom") or []:
                ref = (source.get("configMapRef") or {}).get("name")
                if ref and ref not in configmaps:
                    problems.append(f"{c}: envFrom ConfigMap {ref} is not rendered")
            for entry in container.get("env") or []:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional") and ref["name"] not in secrets:
                    problems.append(f"{c}: Secret {ref['name']} (key {ref['key']}) is neither rendered nor declared external")
            budget = env_value(container, configmaps, "SHUTDOWN_BUDGET_MS")
            if budget is not None:
                pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
                # The services exit by budget + 3 s (their force-exit timer), after any preStop pause.
                needed = int(budget) / 1000 + 3 + pre_stop
                if grace <= needed:
                    problems.append(f"{c}: terminationGracePeriodSeconds {grace} must exceed the drain ({needed:g} s)")

    for so in by_kind.get("ScaledObject", {}).values():
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problems.append(f"{name_of(so)}: scale target Deployment/{target} is not rendered")
        if so["spec"].get("minReplicaCount", 0) < 1:
            problems.append(f"{name_of(so)}: minReplicaCount must be >= 1 (sync requests need a warm worker)")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"{name_of(hpa)}: scale target is not rendered")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes", required=True, help="Kubernetes release whose schemas apply, e.g. 1.37.0")
    parser.add_argument("--keda-schema", required=True)
    parser.add_argument("--external-secret", action="append", default=[], help="a Secret created outside these manifests")
    parser.add_argument("rendered")
    args = parser.parse_args()

    with open(args.keda_schema, encoding="utf-8") as f:
        pinned = json.load(f)
    keda = jsonschema.Draft7Validator(strict(pinned["openAPIV3Schema"]))
    with open(args.rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]

    problems: list[str] = []
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc.get("kind", "?")] = counts.get(doc.get("kind", "?"), 0) + 1
        if doc.get("apiVersion") == f"{pinned['group']}/{pinned['version']}" and doc.get("kind") == pinned["kind"]:
            for error in sorted(keda.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                path = ".".join(str(p) for p in error.absolute_path) or "(root)"
                problems.append(f"{name_of(doc)}: {path}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(doc, args.kubernetes, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "(root)"
            problems.append(f"{name_of(doc)}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name_of(doc)}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {args.kubernetes}")
    problems += check_rules(docs, set(args.external_secret))

    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if problems:
        print(f"{args.rendered}: {len(problems)} problem(s) in {summary}", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"{args.rendered}: {summary}: valid for Kubernetes {args.kubernetes} and KEDA {pinned['source']['version']}"
        " (strict), and within the project's rules"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
