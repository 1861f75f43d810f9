"""The Helm chart in helm/comfyui-grpc, rendered and linted by Helm itself.

Every value set in VALUE_SETS must lint clean, pass values.schema.json, render
manifests that validate against the Kubernetes API schemas (kubernetes-validate, strict:
unknown fields fail), and hang together: selectors match pods, every referenced
ConfigMap/Secret/claim/port exists. The ServiceMonitor (a CRD, unknown to those schemas) is
checked against the fields of the Prometheus Operator's CRD that the chart uses.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "comfyui-grpc"
RELEASE = "demo"
NAMESPACE = "ai"
EXAMPLE_TEMPLATES = {
    path.name: path.read_text() for path in sorted((REPO_ROOT / "examples" / "templates").iterdir())
}

# A URL with a password: it must reach the gateway only through a Secret.
POSTGRES_PASSWORD = "pg-Secret-5w0rdf1sh"
POSTGRES_URL = f"postgresql://comfyui:{POSTGRES_PASSWORD}@postgres.db.svc:5432/jobs?sslmode=require"

# The value sets every structural test runs on: the defaults and the deployments
# docs/deploy.md describes.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Signed completion callbacks to listed hosts, with a secret being rotated.
    "callbacks": {
        "callbacks": {
            "allow": ["hooks.example.com", "*.internal.example.com", "10.0.0.0/8"],
            "secrets": ["new-callback-secret", "old-callback-secret"],
            "maxAgeSeconds": 3600,
        },
    },
    # An external S3 (AWS) instead of the bundled RustFS, with static keys in values.
    "external-s3": {
        "rustfs": {"enabled": False},
        "s3": {
            "endpointUrl": "https://s3.eu-central-1.amazonaws.com",
            "region": "eu-central-1",
            "bucket": "acme-comfyui-outputs",
            "prefix": "prod/",
            "createBucket": False,
            "accessKeyId": "AKIAEXAMPLEKEY",
            "secretAccessKey": "example-secret-access-key",
        },
    },
    # An existing ComfyUI outside the release: no GPU workload here.
    "no-comfyui": {
        "comfyui": {"enabled": False},
        "externalComfyui": {
            "urls": ["http://gpu-box-1.lan:8188", "http://gpu-box-2.lan:8188"],
        },
    },
    # TLS (mutual) and bearer tokens on the gRPC port, scraped by the Prometheus Operator.
    "tls-auth-servicemonitor": {
        "tls": {"enabled": True, "secretName": "comfyui-grpc-tls", "clientAuth": True},
        "auth": {"enabled": True, "tokens": ["token-one-0123456789", "token-two-9876543210"]},
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "labels": {"release": "kube-prometheus-stack"},
                "interval": "15s",
            }
        },
    },
    # Open on purpose: no auth, no TLS, no NetworkPolicies (something else protects it).
    "open-insecure": {
        "auth": {"enabled": False},
        "gateway": {"insecure": True},
        "networkPolicy": {"enabled": False},
    },
    # Workflow templates given inline: the repository's examples, graph file included.
    "templates-inline": {"templates": {"files": EXAMPLE_TEMPLATES}},
    # Workflow templates from a ConfigMap the operator manages.
    "templates-existing-configmap": {
        "templates": {"existingConfigMap": "studio-templates", "mountPath": "/srv/templates"}
    },
    # Job records in PostgreSQL, the URL given inline (kept in the chart's Secret).
    "postgres-inline": {"state": {"postgres": {"url": POSTGRES_URL}}},
    # Several gateways sharing a PostgreSQL of the operator's.
    "replicas-external-postgres": {
        "gateway": {"replicaCount": 3},
        "state": {"postgres": {"url": POSTGRES_URL}},
    },
    # Several gateways on the bundled single-node PostgreSQL, its password generated.
    "replicas-bundled-postgres": {
        "gateway": {"replicaCount": 2},
        "postgresql": {"enabled": True},
    },
    # Everything else that is optional: Traefik ingress (h2c), NetworkPolicies, one gateway
    # on PostgreSQL (URL in a Secret of the operator's), an existing Secret, existing models
    # claim, several GPU pods.
    "ingress-netpol-ha": {
        "existingSecret": "comfyui-grpc-credentials",
        "auth": {"enabled": True},
        "state": {
            "postgres": {"existingSecret": "comfyui-grpc-postgres", "existingSecretKey": "uri"}
        },
        "gateway": {
            "podDisruptionBudget": {"minAvailable": 0, "maxUnavailable": None},
            "service": {"annotations": {"example.com/owner": "ml-platform"}},
        },
        "comfyui": {
            "replicaCount": 4,
            "image": {"repository": "ghcr.io/acme/comfyui", "tag": "v0.3.40-cu124"},
            "models": {"existingClaim": "comfyui-models", "readOnly": True},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
        },
        "ingress": {
            "enabled": True,
            "annotations": {
                "traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
                "traefik.ingress.kubernetes.io/router.tls": "true",
            },
            "hosts": [
                {"host": "comfyui.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}
            ],
            "tls": [{"secretName": "comfyui-example-tls", "hosts": ["comfyui.example.com"]}],
        },
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
        },
    },
}


def require(module: str) -> ModuleType:
    """Import a test tool, or skip (fail under COMFYUI_GRPC_TEST_STRICT, as in CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if os.environ.get("COMFYUI_GRPC_TEST_STRICT"):
            raise
        pytest.skip(f"{module} is not installed ({error}); install the dev extra")


@pytest.fixture(scope="session")
def helm_sdk() -> ModuleType:
    return require("helm_python")


@pytest.fixture(scope="session")
def helm_chart(helm_sdk: ModuleType) -> Iterator[Any]:
    with helm_sdk.Chart.load(CHART_DIR) as loaded:
        yield loaded


class Rendered:
    """One rendering of the chart: its manifests as objects, and NOTES.txt."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.notes = ""
        self.docs: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__source__", path)
                    self.docs.append(doc)

    def manifests(self) -> list[dict[str, Any]]:
        """The objects without the test's own bookkeeping key."""
        return [{k: v for k, v in d.items() if k != "__source__"} for d in self.docs]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        names = [f"{d['kind']}/{d['metadata']['name']}" for d in self.docs]
        raise AssertionError(f"no {kind}/{name} rendered; have {names}")

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, name)
        except AssertionError:
            return None


@pytest.fixture(scope="session")
def render_chart(helm_chart: Any) -> Any:
    """render_chart(values, name=..., namespace=...) -> Rendered, cached per value set."""
    cache: dict[str, Rendered] = {}

    def _render(
        values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE
    ) -> Rendered:
        key = repr((values, name, namespace))
        if key not in cache:
            files = helm_chart.render(values or {}, name=name, namespace=namespace, is_install=True)
            cache[key] = Rendered(files)
        return cache[key]

    return _render


@pytest.fixture(params=sorted(VALUE_SETS), scope="session")
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, VALUE_SETS[request.param]


FULLNAME = f"{RELEASE}-comfyui-grpc"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the
# installed kubernetes-validate knows.
MIN_KUBE = "1.27"
CRD_KINDS = {"ServiceMonitor"}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}


# --- helpers ---------------------------------------------------------------------------


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for item in pod_spec(workload)["containers"]:
        if item["name"] == name:
            return item
    raise AssertionError(f"no container {name} in {workload['metadata']['name']}")


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    """A container's env as {name: value or valueFrom}."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in item.get("env", [])}


def configmap_env(rendered: Rendered, item: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from the chart's ConfigMaps through envFrom."""
    merged: dict[str, str] = {}
    for source in item.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            merged.update(rendered.get("ConfigMap", ref["name"])["data"])
    return merged


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def secret_keys(rendered: Rendered, name: str) -> set[str] | None:
    """Keys of a rendered Secret, or None when the Secret is not rendered by the chart."""
    secret = rendered.find("Secret", name)
    if secret is None:
        return None
    return set(secret.get("data", {})) | set(secret.get("stringData", {}))


def reference_problems(rendered: Rendered, values: dict[str, Any]) -> list[str]:
    """Everything that points at something the release does not provide."""
    problems: list[str] = []
    existing_secrets = {values.get("existingSecret"), values.get("tls", {}).get("secretName")}
    existing_secrets.add(values.get("state", {}).get("postgres", {}).get("existingSecret"))
    existing_secrets.add(values.get("postgresql", {}).get("auth", {}).get("existingSecret"))
    existing_secrets |= {t.get("secretName") for t in values.get("ingress", {}).get("tls", [])}
    existing_claims = {
        values.get("gateway", {}).get("persistence", {}).get("existingClaim"),
        values.get("comfyui", {}).get("models", {}).get("existingClaim"),
    }
    existing_configmaps = {values.get("templates", {}).get("existingConfigMap")}
    existing_secrets.discard(None)
    existing_claims.discard(None)
    pods = []
    for workload in rendered.docs:
        if workload["kind"] not in WORKLOAD_KINDS:
            continue
        name = workload["metadata"]["name"]
        spec = workload["spec"]
        template_labels = spec["template"]["metadata"]["labels"]
        if not selects(spec["selector"]["matchLabels"], template_labels):
            problems.append(f"{name}: selector does not match its pod template")
        pods.append((name, template_labels, pod_spec(workload)))
        if workload["kind"] == "StatefulSet" and not rendered.find("Service", spec["serviceName"]):
            problems.append(f"{name}: serviceName {spec['serviceName']} is not rendered")
        claim_templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        podspec = pod_spec(workload)
        volumes = {v["name"]: v for v in podspec.get("volumes", [])}
        sa = podspec.get("serviceAccountName")
        if sa and not rendered.find("ServiceAccount", sa):
            problems.append(f"{name}: ServiceAccount {sa} is not rendered")
        for vol in volumes.values():
            if (
                "configMap" in vol
                and vol["configMap"]["name"] not in existing_configmaps
                and not rendered.find("ConfigMap", vol["configMap"]["name"])
            ):
                problems.append(f"{name}: volume {vol['name']} needs a missing ConfigMap")
            if "secret" in vol:
                ref = vol["secret"]["secretName"]
                keys = secret_keys(rendered, ref)
                if ref not in existing_secrets and keys is None:
                    problems.append(f"{name}: volume {vol['name']} needs a missing Secret {ref}")
                for item in vol["secret"].get("items", []):
                    if keys is not None and item["key"] not in keys:
                        problems.append(f"{name}: volume {vol['name']} needs key {item['key']}")
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                if claim not in existing_claims and not rendered.find(
                    "PersistentVolumeClaim", claim
                ):
                    problems.append(f"{name}: volume {vol['name']} needs a missing claim {claim}")
        for item in podspec["containers"]:
            ports = {p["name"] for p in item.get("ports", [])}
            for mount in item.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claim_templates:
                    problems.append(f"{name}/{item['name']}: mount {mount['name']} has no volume")
            for source in item.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and not rendered.find("ConfigMap", ref):
                    problems.append(f"{name}/{item['name']}: envFrom needs ConfigMap {ref}")
            for var in item.get("env", []):
                key_ref = var.get("valueFrom", {}).get("secretKeyRef")
                if not key_ref:
                    continue
                keys = secret_keys(rendered, key_ref["name"])
                if keys is None and key_ref["name"] not in existing_secrets:
                    problems.append(f"{name}: {var['name']} needs a missing Secret")
                elif keys is not None and key_ref["key"] not in keys:
                    problems.append(f"{name}: {var['name']} needs key {key_ref['key']}")
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = item.get(probe_name, {})
                port = (probe.get("httpGet") or probe.get("grpc") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{name}: {probe_name} uses unknown port {port}")
                if isinstance(port, int) and port not in {
                    p["containerPort"] for p in item.get("ports", [])
                }:
                    problems.append(f"{name}: {probe_name} uses unexposed port {port}")
    for service in rendered.of_kind("Service"):
        selector = service["spec"].get("selector", {})
        matching = [pod for pod in pods if selects(selector, pod[1])]
        if not matching:
            problems.append(f"Service {service['metadata']['name']} selects no pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(
                target in {p["name"] for c in pod[2]["containers"] for p in c.get("ports", [])}
                for pod in matching
            ):
                problems.append(f"Service {service['metadata']['name']}: no pod port {target}")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for doc in rendered.of_kind(kind):
            spec = doc["spec"]
            selector = (spec.get("selector") or spec.get("podSelector"))["matchLabels"]
            if not any(selects(selector, pod[1]) for pod in pods):
                problems.append(f"{kind} {doc['metadata']['name']} selects no pods")
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = rendered.find("Service", backend["name"])
                if service is None or backend["port"]["name"] not in {
                    p["name"] for p in service["spec"]["ports"]
                }:
                    problems.append(f"Ingress backend {backend} does not exist")
    for monitor in rendered.of_kind("ServiceMonitor"):
        spec = monitor["spec"]
        services = [
            s
            for s in rendered.of_kind("Service")
            if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
            and s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
        ]
        if not services:
            problems.append("ServiceMonitor selects no Service")
        for endpoint in spec["endpoints"]:
            served = {p["name"] for s in services for p in s["spec"]["ports"]}
            if endpoint["port"] not in served:
                problems.append(f"ServiceMonitor endpoint port {endpoint['port']} is not served")
    return problems


# The ServiceMonitor fields of monitoring.coreos.com/v1 the chart may write, with the
# CRD's own constraints; anything else (a typo) fails.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
_LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": DNS_SUBDOMAIN.pattern},
                "namespace": {"type": "string", "pattern": DNS_LABEL.pattern},
                "labels": _LABEL_MAP,
                "annotations": _LABEL_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": _LABEL_MAP,
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                            "tlsConfig": {"type": "object"},
                            "authorization": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def validate_service_monitor(doc: dict[str, Any]) -> None:
    jsonschema = require("jsonschema")
    jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(doc)


# --- Helm: lint, schema, render ------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [None, f"v{MIN_KUBE}.0"])
def test_lint_has_no_errors_or_warnings(
    helm_sdk: Any, value_set: tuple[str, dict[str, Any]], kube_version: str | None
) -> None:
    name, values = value_set
    report = helm_sdk.lint(CHART_DIR, values, strict=True, kube_version=kube_version)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], f"{name}: {report['errors']}"
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], f"{name}: {serious}"


def test_lint_catches_a_broken_chart(helm_sdk: Any, helm_chart: Any, tmp_path: Path) -> None:
    """The lint test above can fail: a template error is reported as an error."""
    broken_dir = Path(helm_chart.save_dir(tmp_path))
    target = broken_dir / "templates" / "gateway-service.yaml"
    target.write_text(target.read_text() + "\n{{ .Values.gateway.nope.missing }}\n")
    report = helm_sdk.lint(broken_dir, {})
    assert report["errors"], report


def test_every_value_set_passes_the_values_schema(
    helm_chart: Any, value_set: tuple[str, dict[str, Any]]
) -> None:
    helm_chart.validate_schema(value_set[1])


def test_defaults_in_values_yaml_are_all_described_by_the_schema() -> None:
    """values.schema.json forbids unknown keys at every level the chart owns, so every key
    of values.yaml must be declared there (else the defaults themselves would fail)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    require("jsonschema").Draft7Validator(schema).validate(defaults)
    assert schema["additionalProperties"] is False
    assert set(defaults) <= set(schema["properties"])


def test_manifests_validate_against_kubernetes_schemas(
    render_chart: Any, value_set: tuple[str, dict[str, Any]]
) -> None:
    kv = require("kubernetes_validate")
    name, values = value_set
    rendered = render_chart(values)
    assert rendered.docs, f"{name}: nothing rendered"
    checked: set[str] = set()
    for doc in rendered.manifests():
        if doc["kind"] in CRD_KINDS:
            validate_service_monitor(doc)
            checked.add(doc["kind"])
            continue
        for version in (MIN_KUBE, kv.latest_version()):
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                pytest.fail(
                    f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                    f"{version} at {where}: {error.message}"
                )
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= checked


def test_kubernetes_validation_can_fail(render_chart: Any) -> None:
    """A misspelt field is caught by the strict schemas the test above uses."""
    kv = require("kubernetes_validate")
    deployment = render_chart({}).get("Deployment", FULLNAME)
    broken = json.loads(json.dumps({k: v for k, v in deployment.items() if k != "__source__"}))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, MIN_KUBE, strict=True)


def test_service_monitor_check_can_fail(render_chart: Any) -> None:
    jsonschema = require("jsonschema")
    monitor = render_chart(VALUE_SETS["tls-auth-servicemonitor"]).get("ServiceMonitor", FULLNAME)
    broken = json.loads(json.dumps({k: v for k, v in monitor.items() if k != "__source__"}))
    broken["spec"]["endpoints"][0]["interval"] = "every 30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate_service_monitor(broken)


def test_references_and_selectors_hold_together(
    render_chart: Any, value_set: tuple[str, dict[str, Any]]
) -> None:
    name, values = value_set
    assert reference_problems(render_chart(values), values) == [], name


def test_reference_check_can_fail(render_chart: Any) -> None:
    rendered = render_chart({})
    broken = Rendered(rendered.files)
    service = broken.get("Service", FULLNAME)
    service["spec"]["selector"]["app.kubernetes.io/component"] = "nothing"
    deployment = broken.get("Deployment", FULLNAME)
    pod_spec(deployment)["containers"][0]["envFrom"][0]["configMapRef"]["name"] = "missing"
    problems = reference_problems(broken, {})
    assert any("selects no pods" in p for p in problems), problems
    assert any("ConfigMap missing" in p for p in problems), problems


def test_names_and_labels(render_chart: Any, value_set: tuple[str, dict[str, Any]]) -> None:
    name, values = value_set
    for doc in render_chart(values).docs:
        meta = doc["metadata"]
        label = f"{name}: {doc['kind']}/{meta['name']}"
        assert DNS_SUBDOMAIN.match(meta["name"]), label
        if doc["kind"] == "Service":
            assert DNS_LABEL.match(meta["name"]), label
        assert meta["namespace"] == (
            "monitoring" if doc["kind"] == "ServiceMonitor" else NAMESPACE
        ), label
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "comfyui-grpc", label
        assert labels["app.kubernetes.io/instance"] == RELEASE, label
        assert labels["app.kubernetes.io/managed-by"] == "Helm", label
        assert labels["app.kubernetes.io/part-of"] == "comfyui-grpc", label
        assert labels["app.kubernetes.io/component"] in {
            "gateway",
            "comfyui",
            "rustfs",
            "postgresql",
        }, label
        assert labels["app.kubernetes.io/version"] == "0.1.0", label
        assert labels["helm.sh/chart"] == "comfyui-grpc-0.1.0", label


def test_long_release_names_still_make_valid_names(render_chart: Any) -> None:
    release = "a-very-long-release-name-for-comfyui-grpc-on-k3s-x"  # 50 characters
    rendered = render_chart({}, name=release)
    for doc in rendered.docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63, name
        assert DNS_LABEL.match(name), name
    names = [d["metadata"]["name"] for d in rendered.docs if d["kind"] == "Service"]
    assert len(names) == len(set(names))


# --- what each deployment looks like ------------------------------------------------------


def test_default_gateway_follows_the_runtime_contract(render_chart: Any) -> None:
    rendered = render_chart({})
    deployment = rendered.get("Deployment", FULLNAME)
    spec = pod_spec(deployment)
    gateway = container(deployment, "gateway")
    assert gateway["image"] == "ghcr.io/comfyui-grpc/comfyui-grpc:0.1.0"
    assert gateway["args"] == ["serve"]
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
    }
    env = configmap_env(rendered, gateway)
    comfyui_host = f"{FULLNAME}-comfyui.{NAMESPACE}.svc.cluster.local"
    assert env["COMFYUI_GRPC_PORT"] == "50051"
    assert env["COMFYUI_GRPC_METRICS_PORT"] == "9464"
    assert env["COMFYUI_GRPC_COMFYUI_URLS"] == f"http://{comfyui_host}:8188"
    assert env["COMFYUI_GRPC_COMFYUI_DNS_DISCOVERY"] == "true"
    assert env["COMFYUI_GRPC_STATE_PATH"] == "/var/lib/comfyui-grpc/state.db"
    assert env["COMFYUI_GRPC_S3_ENDPOINT_URL"] == (
        f"http://{FULLNAME}-rustfs.{NAMESPACE}.svc.cluster.local:9000"
    )
    assert env["COMFYUI_GRPC_S3_CREATE_BUCKET"] == "true"
    assert env["COMFYUI_GRPC_LOG_FORMAT"] == "json"
    assert int(env["COMFYUI_GRPC_SHUTDOWN_GRACE_SECONDS"]) < spec["terminationGracePeriodSeconds"]
    assert spec["terminationGracePeriodSeconds"] == 60
    # Service links would inject COMFYUI_GRPC_PORT=tcp://... for a Service named comfyui-grpc.
    assert spec["enableServiceLinks"] is False
    secret_env = env_of(gateway)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret_env[var]["secretKeyRef"]["name"] == FULLNAME
    # Secure by default: a bearer token (generated into the chart's Secret) is required.
    assert secret_env["COMFYUI_GRPC_AUTH_TOKENS"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "auth-tokens",
    }
    assert "COMFYUI_GRPC_INSECURE" not in env
    # Native gRPC probes on the health service: "liveness" for liveness, "" for readiness.
    assert gateway["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert gateway["startupProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert gateway["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    # Non-root, read-only root filesystem, writable state and /tmp.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert gateway["resources"]["requests"]
    assert gateway["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    state = volumes[mounts["/var/lib/comfyui-grpc"]]
    assert state["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-state"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert rendered.get("PodDisruptionBudget", FULLNAME)["spec"]["maxUnavailable"] == 1
    assert rendered.find("ServiceMonitor", FULLNAME) is None
    assert rendered.find("Ingress", FULLNAME) is None
    policies = {p["metadata"]["name"] for p in rendered.of_kind("NetworkPolicy")}
    assert policies == {FULLNAME, f"{FULLNAME}-comfyui", f"{FULLNAME}-rustfs"}


def test_default_service_exposes_grpc_and_metrics(render_chart: Any) -> None:
    service = render_chart({}).get("Service", FULLNAME)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["metrics"]["port"] == 9464
    assert "annotations" not in service["metadata"]


def test_default_comfyui_is_a_gpu_workload_behind_a_headless_service(render_chart: Any) -> None:
    rendered = render_chart({})
    name = f"{FULLNAME}-comfyui"
    deployment = rendered.get("Deployment", name)
    comfyui = container(deployment, "comfyui")
    assert comfyui["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert comfyui["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert comfyui["args"][:6] == [
        "--listen",
        "0.0.0.0",
        "--port",
        "8188",
        "--preview-method",
        "auto",
    ]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert comfyui[probe]["httpGet"]["path"] == "/system_stats"
    spec = pod_spec(deployment)
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    models = next(m for m in comfyui["volumeMounts"] if m["name"] == "models")
    assert models["mountPath"] == "/opt/ComfyUI/models"
    claim = rendered.get("PersistentVolumeClaim", f"{FULLNAME}-comfyui-models")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    service = rendered.get("Service", name)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False


def test_default_rustfs_is_a_statefulset_sharing_the_gateway_credentials(render_chart: Any) -> None:
    rendered = render_chart({})
    name = f"{FULLNAME}-rustfs"
    statefulset = rendered.get("StatefulSet", name)
    rustfs = container(statefulset, "rustfs")
    assert rustfs["image"] == "rustfs/rustfs:1.0.0"
    assert rustfs["securityContext"]["readOnlyRootFilesystem"] is True
    env = env_of(rustfs)
    gateway_env = env_of(container(rendered.get("Deployment", FULLNAME), "gateway"))
    assert env["RUSTFS_ACCESS_KEY"] == gateway_env["AWS_ACCESS_KEY_ID"]
    assert env["RUSTFS_SECRET_KEY"] == gateway_env["AWS_SECRET_ACCESS_KEY"]
    assert env["RUSTFS_ADDRESS"] == ":9000"
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "50Gi"
    }
    assert {m["mountPath"] for m in rustfs["volumeMounts"]} >= {"/data", "/tmp", "/logs"}
    ports = rendered.get("Service", name)["spec"]["ports"]
    assert [p["port"] for p in ports] == [9000]
    secret = rendered.get("Secret", FULLNAME)
    assert set(secret["data"]) == {"s3-access-key-id", "s3-secret-access-key", "auth-tokens"}
    assert all(len(v) >= 20 for v in secret["data"].values())


def test_auth_is_on_by_default_with_a_generated_token(helm_chart: Any, render_chart: Any) -> None:
    def token(values: dict[str, Any]) -> str:
        files = helm_chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        secret = Rendered(files).get("Secret", FULLNAME)
        return base64.b64decode(secret["data"]["auth-tokens"]).decode()

    first, second = token({}), token({})
    assert re.fullmatch(r"[A-Za-z0-9]{40}", first)
    assert first != second  # generated per install (and read back from the cluster on upgrade)
    assert token({"auth": {"tokens": ["one-token", "two-token"]}}) == "one-token,two-token"
    template = (CHART_DIR / "templates" / "secret.yaml").read_text()
    assert 'get $previous "auth-tokens"' in template


def test_callbacks_get_their_allow_list_and_a_mounted_secret(
    helm_chart: Any, render_chart: Any
) -> None:
    rendered = render_chart(VALUE_SETS["callbacks"])
    gateway = container(rendered.get("Deployment", FULLNAME), "gateway")
    env = configmap_env(rendered, gateway)
    assert (
        env["COMFYUI_GRPC_CALLBACK_ALLOW"] == "hooks.example.com,*.internal.example.com,10.0.0.0/8"
    )
    assert env["COMFYUI_GRPC_CALLBACK_ALLOW_HTTP"] == "false"
    assert env["COMFYUI_GRPC_CALLBACK_MAX_AGE_SECONDS"] == "3600"
    secret_file = Path(env["COMFYUI_GRPC_CALLBACK_SECRET_FILE"])
    [mount] = [m for m in gateway["volumeMounts"] if m["name"] == "callback-secret"]
    assert Path(mount["mountPath"]) == secret_file.parent
    [volume] = [
        v for v in pod_spec(rendered.get("Deployment", FULLNAME))["volumes"]
        if v["name"] == "callback-secret"
    ]  # fmt: skip
    assert volume["secret"]["items"] == [{"key": "callback-secret", "path": secret_file.name}]
    data = rendered.get("Secret", FULLNAME)["data"]
    assert base64.b64decode(data["callback-secret"]) == b"new-callback-secret\nold-callback-secret"
    # No secret given: one is generated (and kept across upgrades, like the token).
    files = helm_chart.render(
        {"callbacks": {"allow": ["hooks.example.com"]}}, name=RELEASE, namespace=NAMESPACE,
        is_install=True,
    )  # fmt: skip
    generated = Rendered(files).get("Secret", FULLNAME)["data"]["callback-secret"]
    assert re.fullmatch(rb"[A-Za-z0-9]{48}", base64.b64decode(generated))
    assert (
        'get $previous "callback-secret"' in (CHART_DIR / "templates" / "secret.yaml").read_text()
    )
    # Off by default: no flags, no secret, no mount.
    default = render_chart({})
    default_gateway = container(default.get("Deployment", FULLNAME), "gateway")
    assert not [k for k in configmap_env(default, default_gateway) if "CALLBACK" in k]
    assert "callback-secret" not in default.get("Secret", FULLNAME)["data"]
    assert all(m["name"] != "callback-secret" for m in default_gateway["volumeMounts"])


def test_an_open_gateway_must_be_confirmed(render_chart: Any) -> None:
    rendered = render_chart(VALUE_SETS["open-insecure"])
    gateway = container(rendered.get("Deployment", FULLNAME), "gateway")
    assert configmap_env(rendered, gateway)["COMFYUI_GRPC_INSECURE"] == "true"
    assert "COMFYUI_GRPC_AUTH_TOKENS" not in env_of(gateway)
    assert "auth-tokens" not in rendered.get("Secret", FULLNAME)["data"]
    assert not rendered.of_kind("NetworkPolicy")
    # TLS alone is protection enough: no confirmation needed.
    tls_only = render_chart(
        {"auth": {"enabled": False}, "tls": {"enabled": True, "secretName": "gateway-tls"}}
    )
    tls_gateway = container(tls_only.get("Deployment", FULLNAME), "gateway")
    assert "COMFYUI_GRPC_INSECURE" not in configmap_env(tls_only, tls_gateway)


def test_external_s3_drops_rustfs(render_chart: Any) -> None:
    rendered = render_chart(VALUE_SETS["external-s3"])
    assert not rendered.of_kind("StatefulSet")
    assert rendered.find("Service", f"{FULLNAME}-rustfs") is None
    gateway = container(rendered.get("Deployment", FULLNAME), "gateway")
    env = configmap_env(rendered, gateway)
    assert env["COMFYUI_GRPC_S3_ENDPOINT_URL"] == "https://s3.eu-central-1.amazonaws.com"
    assert env["COMFYUI_GRPC_S3_REGION"] == "eu-central-1"
    assert env["COMFYUI_GRPC_S3_BUCKET"] == "acme-comfyui-outputs"
    assert env["COMFYUI_GRPC_S3_PREFIX"] == "prod/"
    assert env["COMFYUI_GRPC_S3_CREATE_BUCKET"] == "false"
    secret = rendered.get("Secret", FULLNAME)
    assert secret["data"]["s3-access-key-id"] == "QUtJQUVYQU1QTEVLRVk="  # AKIAEXAMPLEKEY
    assert "secretKeyRef" in env_of(gateway)["AWS_ACCESS_KEY_ID"]


def test_external_s3_without_keys_uses_the_default_credential_chain(render_chart: Any) -> None:
    rendered = render_chart({"rustfs": {"enabled": False}})
    gateway = container(rendered.get("Deployment", FULLNAME), "gateway")
    assert "AWS_ACCESS_KEY_ID" not in env_of(gateway)
    assert set(rendered.get("Secret", FULLNAME)["data"]) == {"auth-tokens"}
    assert "COMFYUI_GRPC_S3_ENDPOINT_URL" not in configmap_env(rendered, gateway)


def test_no_comfyui_points_the_gateway_at_the_external_urls(render_chart: Any) -> None:
    rendered = render_chart(VALUE_SETS["no-comfyui"])
    assert rendered.find("Deployment", f"{FULLNAME}-comfyui") is None
    assert rendered.find("Service", f"{FULLNAME}-comfyui") is None
    assert not [d for d in rendered.of_kind("PersistentVolumeClaim") if "models" in str(d)]
    env = configmap_env(rendered, container(rendered.get("Deployment", FULLNAME), "gateway"))
    assert env["COMFYUI_GRPC_COMFYUI_URLS"] == "http://gpu-box-1.lan:8188,http://gpu-box-2.lan:8188"
    assert env["COMFYUI_GRPC_COMFYUI_DNS_DISCOVERY"] == "false"


def test_tls_auth_and_service_monitor(render_chart: Any) -> None:
    values = VALUE_SETS["tls-auth-servicemonitor"]
    rendered = render_chart(values)
    deployment = rendered.get("Deployment", FULLNAME)
    gateway = container(deployment, "gateway")
    env = configmap_env(rendered, gateway)
    assert env["COMFYUI_GRPC_TLS_CERT"] == "/etc/comfyui-grpc/tls/tls.crt"
    assert env["COMFYUI_GRPC_TLS_KEY"] == "/etc/comfyui-grpc/tls/tls.key"
    assert env["COMFYUI_GRPC_TLS_CLIENT_CA"] == "/etc/comfyui-grpc/tls/ca.crt"
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "comfyui-grpc-tls"
    # The kubelet cannot probe gRPC over TLS: the probes run the bundled script instead.
    script = (CHART_DIR / "files" / "healthcheck.py").read_text()
    probe_map = rendered.get("ConfigMap", f"{FULLNAME}-probe")
    assert probe_map["data"]["healthcheck.py"] == script
    for probe, service in (("livenessProbe", "liveness"), ("readinessProbe", "")):
        assert "grpc" not in gateway[probe]
        command = gateway[probe]["exec"]["command"]
        assert command == [
            "/opt/venv/bin/python",
            "/etc/comfyui-grpc/probe/healthcheck.py",
            service,
        ]
    # Bearer tokens from the chart's Secret.
    token_ref = env_of(gateway)["COMFYUI_GRPC_AUTH_TOKENS"]["secretKeyRef"]
    secret = rendered.get("Secret", token_ref["name"])
    assert secret["data"][token_ref["key"]] == (
        "dG9rZW4tb25lLTAxMjM0NTY3ODksdG9rZW4tdHdvLTk4NzY1NDMyMTA="
    )  # "token-one-0123456789,token-two-9876543210"
    service = rendered.get("Service", FULLNAME)
    assert "appProtocol" not in service["spec"]["ports"][0]
    monitor = rendered.get("ServiceMonitor", FULLNAME)
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert monitor["spec"]["endpoints"][0] == {
        "port": "metrics",
        "path": "/metrics",
        "scheme": "http",
        "interval": "15s",
        "scrapeTimeout": "10s",
    }


def test_ingress_routes_grpc_through_traefik_with_h2c(render_chart: Any) -> None:
    rendered = render_chart(VALUE_SETS["ingress-netpol-ha"])
    ingress = rendered.get("Ingress", FULLNAME)
    assert ingress["spec"]["ingressClassName"] == "traefik"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "grpc"}}
    annotations = rendered.get("Service", FULLNAME)["metadata"]["annotations"]
    assert annotations == {
        "traefik.ingress.kubernetes.io/service.serversscheme": "h2c",
        "example.com/owner": "ml-platform",
    }
    with_tls = render_chart({"ingress": {"enabled": True}, **VALUE_SETS["tls-auth-servicemonitor"]})
    scheme = with_tls.get("Service", FULLNAME)["metadata"]["annotations"]
    assert scheme["traefik.ingress.kubernetes.io/service.serversscheme"] == "https"


def test_ha_set_uses_existing_secrets_postgres_and_network_policies(
    render_chart: Any,
) -> None:
    rendered = render_chart(VALUE_SETS["ingress-netpol-ha"])
    assert rendered.find("Secret", FULLNAME) is None
    deployment = rendered.get("Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == ROLLING_WITHOUT_DOWNTIME
    assert rendered.find("PersistentVolumeClaim", f"{FULLNAME}-state") is None
    gateway = container(deployment, "gateway")
    refs = {n: v["secretKeyRef"] for n, v in env_of(gateway).items() if "secretKeyRef" in v}
    assert {r["name"] for r in refs.values()} == {"comfyui-grpc-credentials"}
    assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "COMFYUI_GRPC_AUTH_TOKENS"}
    pdb = rendered.get("PodDisruptionBudget", FULLNAME)
    assert pdb["spec"] == {"minAvailable": 0, "selector": pdb["spec"]["selector"]}
    comfyui = rendered.get("Deployment", f"{FULLNAME}-comfyui")
    assert comfyui["spec"]["replicas"] == 4
    claim = next(v for v in pod_spec(comfyui)["volumes"] if v["name"] == "models")
    assert claim["persistentVolumeClaim"] == {"claimName": "comfyui-models", "readOnly": True}
    assert rendered.find("PersistentVolumeClaim", f"{FULLNAME}-comfyui-models") is None
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert set(policies) == {FULLNAME, f"{FULLNAME}-comfyui", f"{FULLNAME}-rustfs"}
    gateway_selector = deployment["spec"]["selector"]["matchLabels"]
    for name in (f"{FULLNAME}-comfyui", f"{FULLNAME}-rustfs"):
        sources = policies[name]["spec"]["ingress"][0]["from"]
        assert sources == [{"podSelector": {"matchLabels": gateway_selector}}]
    metrics_rule = policies[FULLNAME]["spec"]["ingress"][1]
    assert metrics_rule["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert metrics_rule["from"][0]["namespaceSelector"]


def test_notes_show_grpcurl_commands(render_chart: Any) -> None:
    notes = render_chart({}).notes
    assert f"kubectl -n {NAMESPACE} port-forward service/{FULLNAME} 50051:50051" in notes
    assert 'grpcurl -plaintext -H "authorization: Bearer $TOKEN" localhost:50051 list' in notes
    assert f"TOKEN=$(kubectl -n {NAMESPACE} get secret {FULLNAME}" in notes
    assert "A bearer token was generated" in notes
    open_notes = render_chart(VALUE_SETS["open-insecure"]).notes
    assert "grpcurl -plaintext localhost:50051 list" in open_notes
    assert "TOKEN" not in open_notes
    assert "grpc.health.v1.Health/Check" in notes
    assert "comfyui_grpc.v1.GenerationService/Generate" in notes
    assert "comfyui_grpc.v1.GenerationService/StreamProgress" in notes
    assert "placeholder" in notes
    secure = render_chart(VALUE_SETS["tls-auth-servicemonitor"]).notes
    assert "-plaintext" not in secure
    assert "-cacert ca.crt" in secure
    assert '-H "authorization: Bearer $TOKEN"' in secure
    assert "-cert client.crt -key client.key" in secure
    ingress = render_chart(VALUE_SETS["ingress-netpol-ha"]).notes
    assert "comfyui.example.com:443 list" in ingress
    assert "placeholder" not in ingress


# --- bad values are refused with a message that names them --------------------------------

BAD_VALUES = [
    ({"gateway": {"replicaCount": "two"}}, ["/gateway/replicaCount", "got string, want integer"]),
    ({"gatway": {"replicaCount": 2}}, ["additional properties 'gatway' not allowed"]),
    ({"gateway": {"logFormat": "yaml"}}, ["/gateway/logFormat", "'json', 'text'"]),
    ({"gateway": {"grpcPort": 70000}}, ["/gateway/grpcPort", "want 65,535"]),
    ({"comfyui": {"gpu": {"count": -1}}}, ["/comfyui/gpu/count"]),
    ({"comfyui": {"enabled": "yes"}}, ["/comfyui/enabled", "got string, want boolean"]),
    ({"rustfs": {"persistence": {"size": "lots"}}}, ["/rustfs/persistence/size"]),
    ({"s3": {"bucket": "Outputs_Bucket"}}, ["/s3/bucket", "Outputs_Bucket"]),
    ({"externalComfyui": {"urls": ["comfyui:8188"]}}, ["/externalComfyui/urls/0"]),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, ["/metrics/serviceMonitor/interval"]),
    ({"auth": {"tokens": ["a,b"]}}, ["/auth/tokens/0"]),
    ({"auth": {"enabled": False}, "ingress": {"enabled": True}}, ["/auth/enabled", "true"]),
    ({"gateway": {"insecure": "yes"}}, ["/gateway/insecure", "got string, want boolean"]),
    ({"gateway": {"persistence": {"sizee": "1Gi"}}}, ["additional properties 'sizee'"]),
    ({"comfyui": {"previewMethod": "fast"}}, ["previewMethod"]),
    (
        {"templates": {"files": {"../escape.yaml": "name: x"}}},
        ["/templates/files", "'../escape.yaml' not allowed"],
    ),
    ({"templates": {"files": {"notes.txt": "name: x"}}}, ["'notes.txt' not allowed"]),
    ({"templates": {"files": {"a.yaml": ""}}}, ["/templates/files/a.yaml"]),
    ({"templates": {"existingConfigMap": "My_Templates"}}, ["/templates/existingConfigMap"]),
    ({"templates": {"mountPath": "relative/dir"}}, ["/templates/mountPath"]),
    ({"gateway": {"replicaCount": 0}}, ["/gateway/replicaCount"]),
    (
        {"state": {"postgres": {"url": "postgresql:/missing-slash"}}},
        ["/state/postgres/url", "a postgresql:// or postgres:// URL"],
    ),
    ({"state": {"postgres": {"existingSecret": "My_Secret"}}}, ["/state/postgres/existingSecret"]),
    ({"state": {"postgres": {"existingSecretKey": "a/b"}}}, ["/state/postgres/existingSecretKey"]),
    ({"state": {"sqlite": {}}}, ["additional properties 'sqlite' not allowed"]),
    ({"gateway": {"leaseSeconds": 0}}, ["/gateway/leaseSeconds"]),
    ({"gateway": {"leaseSeconds": "10s"}}, ["/gateway/leaseSeconds", "got string, want integer"]),
    ({"postgresql": {"enabled": "yes"}}, ["/postgresql/enabled", "got string, want boolean"]),
    ({"postgresql": {"auth": {"username": "Comfy-UI"}}}, ["/postgresql/auth/username"]),
    ({"postgresql": {"auth": {"database": "jobs;drop"}}}, ["/postgresql/auth/database"]),
    (
        {"postgresql": {"auth": {"existingSecret": "My_Secret"}}},
        ["/postgresql/auth/existingSecret"],
    ),
    ({"postgresql": {"persistence": {"size": "lots"}}}, ["/postgresql/persistence/size"]),
    ({"postgresql": {"storage": {}}}, ["additional properties 'storage' not allowed"]),
]


@pytest.mark.parametrize(("values", "expected"), BAD_VALUES)
def test_bad_values_are_rejected_with_a_readable_message(
    helm_sdk: Any, helm_chart: Any, values: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(helm_sdk.HelmValuesError) as caught:
        helm_chart.validate_schema(values)
    message = str(caught.value)
    for part in expected:
        assert part in message, message
    # An install refuses them the same way, before rendering anything.
    with pytest.raises(helm_sdk.HelmValuesError) as on_render:
        helm_chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "values don't meet the specifications of the schema" in str(on_render.value)


REPLICAS_REFUSED = (
    "needs job state on PostgreSQL: with SQLite each replica would keep its own jobs, queue "
    "and backends apart from the others. Set state.postgres.url, state.postgres.existingSecret "
    "or postgresql.enabled=true, or run one replica."
)
BOTH_POSTGRES_REFUSED = (
    "set state.postgres.url / state.postgres.existingSecret (a PostgreSQL of yours) or "
    "postgresql.enabled (the bundled one), not both"
)

CONFLICTING_VALUES = [
    ({"gateway": {"replicaCount": 2}}, f"gateway.replicaCount=2 {REPLICAS_REFUSED}"),
    (
        {"gateway": {"replicaCount": 3, "persistence": {"enabled": False}}},
        f"gateway.replicaCount=3 {REPLICAS_REFUSED}",
    ),
    (
        {"state": {"postgres": {"url": POSTGRES_URL}}, "postgresql": {"enabled": True}},
        BOTH_POSTGRES_REFUSED,
    ),
    (
        {
            "gateway": {"replicaCount": 2},
            "state": {"postgres": {"existingSecret": "team-postgres"}},
            "postgresql": {"enabled": True},
        },
        BOTH_POSTGRES_REFUSED,
    ),
    (
        {"postgresql": {"enabled": True, "auth": {"password": "pw", "existingSecret": "db"}}},
        "set postgresql.auth.password or postgresql.auth.existingSecret, not both",
    ),
    (
        {"state": {"postgres": {"url": POSTGRES_URL, "existingSecret": "pg"}}},
        "set state.postgres.url or state.postgres.existingSecret, not both",
    ),
    (
        {"existingSecret": "mine", "state": {"postgres": {"url": POSTGRES_URL}}},
        "name it in state.postgres.existingSecret",
    ),
    ({"gateway": {"shutdownGraceSeconds": 60}}, "shorter than gateway.terminationGrace"),
    ({"comfyui": {"enabled": False}}, "needs externalComfyui.urls"),
    ({"externalComfyui": {"urls": ["http://x:8188"]}}, "set comfyui.enabled=false"),
    ({"s3": {"endpointUrl": "https://s3.example.com"}}, "set rustfs.enabled=false"),
    ({"s3": {"accessKeyId": "only-half"}}, "set both s3.accessKeyId and s3.secretAccessKey"),
    ({"auth": {"enabled": False}}, "set gateway.insecure=true to confirm"),
    ({"tls": {"enabled": True}}, "tls.enabled needs tls.secretName"),
    ({"gateway": {"podDisruptionBudget": {"minAvailable": 1}}}, "not both"),
    (
        {"templates": {"files": {"a.yaml": "name: a"}, "existingConfigMap": "mine"}},
        "set templates.files or templates.existingConfigMap, not both",
    ),
]


@pytest.mark.parametrize(("values", "expected"), CONFLICTING_VALUES)
def test_conflicting_values_fail_the_render_with_advice(
    helm_sdk: Any, helm_chart: Any, values: dict[str, Any], expected: str
) -> None:
    helm_chart.validate_schema(values)  # each value is fine alone: the combination is not
    with pytest.raises(helm_sdk.HelmRenderError) as caught:
        helm_chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert expected in str(caught.value)


# --- job state on PostgreSQL ---------------------------------------------------------------

STATE_URL_FILE = "/etc/comfyui-grpc/state/state-url"
ROLLING_WITHOUT_DOWNTIME = {
    "type": "RollingUpdate",
    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
}


def gateway_settings(env: dict[str, str]) -> Any:
    """The gateway's own reading of the chart's environment (it exits on a conflict)."""
    import argparse

    from comfyui_grpc.config import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args([]), environ=env)


def state_url_volume(deployment: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The Secret volume whose mounted file is COMFYUI_GRPC_STATE_URL_FILE."""
    gateway = container(deployment, "gateway")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for mount in gateway["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        for item in secret.get("items", []):
            if f"{mount['mountPath']}/{item['path']}" == env["COMFYUI_GRPC_STATE_URL_FILE"]:
                assert mount.get("readOnly") is True
                return secret
    raise AssertionError(f"no Secret mounted at {env['COMFYUI_GRPC_STATE_URL_FILE']}")


def assert_keeps_nothing_on_disk(rendered: Rendered, env: dict[str, str]) -> None:
    """With PostgreSQL: no SQLite path, no state claim, no state volume, one pod at a time."""
    deployment = rendered.get("Deployment", FULLNAME)
    assert "COMFYUI_GRPC_STATE_PATH" not in env
    assert rendered.find("PersistentVolumeClaim", f"{FULLNAME}-state") is None
    volumes = pod_spec(deployment)["volumes"]
    assert "state" not in {v["name"] for v in volumes}
    assert not [v for v in volumes if "emptyDir" in v and v["name"] != "tmp"]
    mounts = {m["mountPath"] for m in container(deployment, "gateway")["volumeMounts"]}
    assert "/var/lib/comfyui-grpc" not in mounts
    # The replicas share the database: a new pod joins before an old one leaves.
    assert deployment["spec"]["strategy"] == ROLLING_WITHOUT_DOWNTIME
    settings = gateway_settings(env)
    assert settings.state_url_file == STATE_URL_FILE
    assert (settings.state_path, settings.state_url) == ("", "")


def test_postgres_url_inline_lives_in_the_chart_secret_and_reaches_the_gateway_as_a_file(
    render_chart: Any,
) -> None:
    rendered = render_chart(VALUE_SETS["postgres-inline"])
    deployment = rendered.get("Deployment", FULLNAME)
    gateway = container(deployment, "gateway")
    env = configmap_env(rendered, gateway)
    assert env["COMFYUI_GRPC_STATE_URL_FILE"] == STATE_URL_FILE
    secret = state_url_volume(deployment, env)
    assert secret["secretName"] == FULLNAME
    assert secret["items"] == [{"key": "state-url", "path": "state-url"}]
    assert secret["defaultMode"] == 0o440
    stored = rendered.get("Secret", FULLNAME)["data"]["state-url"]
    assert base64.b64decode(stored).decode() == POSTGRES_URL
    assert_keeps_nothing_on_disk(rendered, env)
    assert f"PostgreSQL, URL from secret/{FULLNAME} key state-url" in rendered.notes


def test_postgres_url_from_an_existing_secret(render_chart: Any) -> None:
    values = {
        "state": {"postgres": {"existingSecret": "team-postgres", "existingSecretKey": "uri"}}
    }
    rendered = render_chart(values)
    deployment = rendered.get("Deployment", FULLNAME)
    env = configmap_env(rendered, container(deployment, "gateway"))
    secret = state_url_volume(deployment, env)
    assert secret["secretName"] == "team-postgres"
    assert secret["items"] == [{"key": "uri", "path": "state-url"}]
    # The chart's own Secret still holds the generated token, but no URL.
    assert "state-url" not in rendered.get("Secret", FULLNAME)["data"]
    assert_keeps_nothing_on_disk(rendered, env)
    default_key = render_chart({"state": {"postgres": {"existingSecret": "team-postgres"}}})
    deployment = default_key.get("Deployment", FULLNAME)
    env = configmap_env(default_key, container(deployment, "gateway"))
    assert state_url_volume(deployment, env)["items"] == [{"key": "state-url", "path": "state-url"}]


# A password URL escaping must keep intact: user-info delimiters, a space, a plus, a percent.
BUNDLED_PASSWORD = "db p@ss:w/rd+%?#1"
DATABASE_VALUE_SETS = {
    "postgres-inline": VALUE_SETS["postgres-inline"],
    "ingress-netpol-ha": VALUE_SETS["ingress-netpol-ha"],
    "replicas-external-postgres": VALUE_SETS["replicas-external-postgres"],
    "replicas-bundled-postgres": VALUE_SETS["replicas-bundled-postgres"],
    "bundled-given-password": {
        "postgresql": {"enabled": True, "auth": {"password": BUNDLED_PASSWORD}}
    },
}


def database_secrets(rendered: Rendered, values: dict[str, Any]) -> list[str]:
    """The strings that must appear in Secrets only: the database password and URL."""
    if not values.get("postgresql", {}).get("enabled"):
        return [POSTGRES_PASSWORD, POSTGRES_URL]
    data = rendered.get("Secret", f"{FULLNAME}-postgresql")["data"]
    found = [base64.b64decode(data[key]).decode() for key in ("password", "state-url")]
    assert all(len(s) >= 16 for s in found), found
    return found


@pytest.mark.parametrize("name", sorted(DATABASE_VALUE_SETS))
def test_the_postgres_url_is_never_in_a_configmap_or_an_env_value(
    render_chart: Any, name: str
) -> None:
    values = DATABASE_VALUE_SETS[name]
    rendered = render_chart(values)
    for secret in database_secrets(rendered, values):
        encoded = base64.b64encode(secret.encode()).decode()
        for doc in rendered.docs:
            text = json.dumps(doc)
            if doc["kind"] == "Secret":
                continue
            assert secret not in text, f"{doc['kind']}/{doc['metadata']['name']}"
            assert encoded not in text, f"{doc['kind']}/{doc['metadata']['name']}"
        assert secret not in rendered.notes
    for configmap in rendered.of_kind("ConfigMap"):
        assert not [v for v in configmap["data"].values() if "postgres" in v.lower()]
    for workload in rendered.docs:
        if workload["kind"] not in WORKLOAD_KINDS:
            continue
        for item in pod_spec(workload)["containers"]:
            literal = [e["name"] for e in item.get("env", []) if "value" in e]
            assert "COMFYUI_GRPC_STATE_URL" not in literal
            assert "COMFYUI_GRPC_STATE_URL" not in env_of(item)
            assert not [
                e
                for e in item.get("env", [])
                if re.search(r"postgres(ql)?://", str(e.get("value")))
            ]
    # The gateway reads the URL from a file of a mounted Secret, and from nowhere else.
    deployment = rendered.get("Deployment", FULLNAME)
    env = configmap_env(rendered, container(deployment, "gateway"))
    assert env["COMFYUI_GRPC_STATE_URL_FILE"] == STATE_URL_FILE
    assert state_url_volume(deployment, env)["items"][0]["path"] == "state-url"


def test_sqlite_stays_the_default_job_store(render_chart: Any) -> None:
    rendered = render_chart({})
    env = configmap_env(rendered, container(rendered.get("Deployment", FULLNAME), "gateway"))
    assert "COMFYUI_GRPC_STATE_URL_FILE" not in env
    assert gateway_settings(env).state_path == "/var/lib/comfyui-grpc/state.db"
    assert "state-url" not in rendered.get("Secret", FULLNAME)["data"]
    assert f"SQLite on persistentvolumeclaim/{FULLNAME}-state" in rendered.notes


def test_a_malformed_postgres_url_is_refused_without_repeating_it(
    helm_sdk: Any, helm_chart: Any
) -> None:
    url = POSTGRES_URL.replace("postgresql://", "mysql://")
    with pytest.raises(helm_sdk.HelmValuesError) as caught:
        helm_chart.validate_schema({"state": {"postgres": {"url": url}}})
    assert "a postgresql:// or postgres:// URL" in str(caught.value)
    assert POSTGRES_PASSWORD not in str(caught.value)
    for good in (POSTGRES_URL, "postgres://db/jobs", ""):
        helm_chart.validate_schema({"state": {"postgres": {"url": good}}})


# --- several gateway replicas ---------------------------------------------------------------

REPLICA_SETS = ["replicas-external-postgres", "replicas-bundled-postgres"]


def gateway_selector(rendered: Rendered) -> dict[str, str]:
    selector: dict[str, str] = rendered.get("Deployment", FULLNAME)["spec"]["selector"][
        "matchLabels"
    ]
    return selector


@pytest.mark.parametrize("name", REPLICA_SETS)
def test_several_replicas_on_postgres_roll_one_surge_pod_at_a_time(
    render_chart: Any, name: str
) -> None:
    values = VALUE_SETS[name]
    rendered = render_chart(values)
    deployment = rendered.get("Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == values["gateway"]["replicaCount"]
    # Replicas hand their backends over on SIGTERM: never fewer pods than asked for.
    assert deployment["spec"]["strategy"] == ROLLING_WITHOUT_DOWNTIME
    env = configmap_env(rendered, container(deployment, "gateway"))
    assert_keeps_nothing_on_disk(rendered, env)
    # The pod outlives the gateway's drain (handover included).
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert int(env["COMFYUI_GRPC_SHUTDOWN_GRACE_SECONDS"]) < grace


def test_sqlite_keeps_one_pod_at_a_time_and_postgres_rolls(render_chart: Any) -> None:
    def strategy(values: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = render_chart(values).get("Deployment", FULLNAME)["spec"][
            "strategy"
        ]
        return result

    # SQLite on the ReadWriteOnce volume: the old pod must let go of the file first.
    assert strategy({}) == {"type": "Recreate"}
    # SQLite in an emptyDir: nothing shared, a surge pod as before.
    assert strategy({"gateway": {"persistence": {"enabled": False}}}) == ROLLING_WITHOUT_DOWNTIME
    # One replica on PostgreSQL rolls too: the new pod takes over through the leases.
    assert strategy(VALUE_SETS["postgres-inline"]) == ROLLING_WITHOUT_DOWNTIME
    assert strategy({"postgresql": {"enabled": True}}) == ROLLING_WITHOUT_DOWNTIME


@pytest.mark.parametrize("name", REPLICA_SETS)
def test_replicas_prefer_different_nodes(render_chart: Any, name: str) -> None:
    rendered = render_chart(VALUE_SETS[name])
    affinity = pod_spec(rendered.get("Deployment", FULLNAME))["affinity"]
    assert set(affinity) == {"podAntiAffinity"}
    [term] = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": gateway_selector(rendered)},
    }
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity["podAntiAffinity"]


def test_gateway_affinity_replaces_the_default_spread(render_chart: Any) -> None:
    assert "affinity" not in pod_spec(render_chart({}).get("Deployment", FULLNAME))
    mine = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["cpu"]}]}
                ]
            }
        }
    }
    values = {
        **VALUE_SETS["replicas-external-postgres"],
        "gateway": {"replicaCount": 3, "affinity": mine},
    }
    rendered = render_chart(values)
    assert pod_spec(rendered.get("Deployment", FULLNAME))["affinity"] == mine


@pytest.mark.parametrize("name", REPLICA_SETS)
def test_replicas_have_a_disruption_budget_of_one_pod(render_chart: Any, name: str) -> None:
    values = VALUE_SETS[name]
    rendered = render_chart(values)
    pdb = rendered.get("PodDisruptionBudget", FULLNAME)
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": gateway_selector(rendered)},
    }
    # A drain takes one replica at a time and leaves the others serving.
    assert values["gateway"]["replicaCount"] - pdb["spec"]["maxUnavailable"] >= 1


@pytest.mark.parametrize("name", REPLICA_SETS)
def test_each_replica_is_named_by_its_pod_and_gets_the_lease(render_chart: Any, name: str) -> None:
    rendered = render_chart(VALUE_SETS[name])
    gateway = container(rendered.get("Deployment", FULLNAME), "gateway")
    [replica_id] = [e for e in gateway["env"] if e["name"] == "COMFYUI_GRPC_REPLICA_ID"]
    assert replica_id == {
        "name": "COMFYUI_GRPC_REPLICA_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert configmap_env(rendered, gateway)["COMFYUI_GRPC_LEASE_SECONDS"] == "10"
    longer = render_chart({**VALUE_SETS[name], "gateway": {"replicaCount": 2, "leaseSeconds": 25}})
    longer_gateway = container(longer.get("Deployment", FULLNAME), "gateway")
    assert configmap_env(longer, longer_gateway)["COMFYUI_GRPC_LEASE_SECONDS"] == "25"


def test_sqlite_gets_no_replica_settings(render_chart: Any) -> None:
    rendered = render_chart({})
    gateway = container(rendered.get("Deployment", FULLNAME), "gateway")
    assert "COMFYUI_GRPC_REPLICA_ID" not in env_of(gateway)
    assert "COMFYUI_GRPC_LEASE_SECONDS" not in configmap_env(rendered, gateway)


def test_replicas_without_postgres_are_refused_saying_why(helm_sdk: Any, helm_chart: Any) -> None:
    with pytest.raises(helm_sdk.HelmRenderError) as caught:
        helm_chart.render({"gateway": {"replicaCount": 2}}, name=RELEASE, namespace=NAMESPACE)
    message = str(caught.value)
    assert "each replica would keep its own jobs" in message
    for remedy in ("state.postgres.url", "state.postgres.existingSecret", "postgresql.enabled"):
        assert remedy in message
    # One replica on SQLite, and several on either PostgreSQL, render.
    for values in ({}, *(VALUE_SETS[name] for name in REPLICA_SETS)):
        helm_chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- the bundled PostgreSQL ----------------------------------------------------------------

PG_NAME = f"{FULLNAME}-postgresql"
PG_HOST = f"{PG_NAME}.{NAMESPACE}.svc.cluster.local"


def test_bundled_postgresql_is_a_non_root_statefulset_with_a_volume(render_chart: Any) -> None:
    values = {
        "gateway": {"replicaCount": 2},
        "postgresql": {
            "enabled": True,
            "persistence": {"size": "20Gi", "storageClass": "fast-ssd"},
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
        },
    }
    rendered = render_chart(values)
    statefulset = rendered.get("StatefulSet", PG_NAME)
    assert statefulset["spec"]["replicas"] == 1
    spec = pod_spec(statefulset)
    postgres = container(statefulset, "postgresql")
    assert postgres["image"] == "postgres:16-alpine"
    assert postgres["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    # uid 70 is postgres in the alpine image; the volume is group-owned by it.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"]) == (70, 70)
    assert postgres["securityContext"]["allowPrivilegeEscalation"] is False
    env = env_of(postgres)
    mounts = {m["name"]: m["mountPath"] for m in postgres["volumeMounts"]}
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"] == {"storage": "20Gi"}
    # PGDATA is a directory inside the mount (the volume's root may hold lost+found).
    assert Path(env["PGDATA"]).parent == Path(mounts["data"])
    # The password comes from the Secret as a file, as the gateway's URL does.
    password_file = Path(env["POSTGRES_PASSWORD_FILE"])
    assert Path(mounts["password"]) == password_file.parent
    [volume] = [v for v in spec["volumes"] if v["name"] == "password"]
    assert volume["secret"]["secretName"] == PG_NAME
    assert volume["secret"]["items"] == [{"key": "password", "path": password_file.name}]
    assert "POSTGRES_PASSWORD" not in env
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == ("comfyui", "comfyui")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = postgres[probe]["exec"]["command"]
        assert command[0] == "pg_isready"
        assert command[1:] == [
            "--host=127.0.0.1",
            "--port=5432",
            "--username=comfyui",
            "--dbname=comfyui",
        ]
    service = rendered.get("Service", PG_NAME)
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (5432, "postgresql")
    ]
    assert statefulset["spec"]["serviceName"] == PG_NAME
    assert f"PostgreSQL in statefulset/{PG_NAME}" in rendered.notes
    assert "(single node: back it up)" in rendered.notes


def test_bundled_postgresql_url_reaches_the_gateway_as_a_file(render_chart: Any) -> None:
    values = {"postgresql": {"enabled": True, "auth": {"password": BUNDLED_PASSWORD}}}
    rendered = render_chart(values)
    deployment = rendered.get("Deployment", FULLNAME)
    env = configmap_env(rendered, container(deployment, "gateway"))
    secret = state_url_volume(deployment, env)
    assert secret["secretName"] == PG_NAME
    assert secret["items"] == [{"key": "state-url", "path": "state-url"}]
    assert secret["defaultMode"] == 0o440
    data = rendered.get("Secret", PG_NAME)["data"]
    assert base64.b64decode(data["password"]).decode() == BUNDLED_PASSWORD
    url = base64.b64decode(data["state-url"]).decode()
    # What the gateway's driver makes of the URL: the password survives the escaping.
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(url) == {
        "user": "comfyui",
        "password": BUNDLED_PASSWORD,
        "host": PG_HOST,
        "port": "5432",
        "dbname": "comfyui",
    }
    assert_keeps_nothing_on_disk(rendered, env)
    # The chart's main Secret keeps its own keys and no URL.
    assert "state-url" not in rendered.get("Secret", FULLNAME)["data"]


def test_bundled_password_is_stable_when_given_and_generated_otherwise(helm_chart: Any) -> None:
    def secret(values: dict[str, Any]) -> dict[str, str]:
        files = helm_chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        data = Rendered(files).get("Secret", PG_NAME)["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    given = {"postgresql": {"enabled": True, "auth": {"password": "s3cret-given-password"}}}
    first, second = secret(given), secret(given)
    assert first == second
    assert first["password"] == "s3cret-given-password"
    generated = [secret({"postgresql": {"enabled": True}}) for _ in range(2)]
    for item in generated:
        assert re.fullmatch(r"[A-Za-z0-9]{32}", item["password"])
        assert f":{item['password']}@{PG_HOST}:5432/" in item["state-url"]
    assert generated[0]["password"] != generated[1]["password"]  # per install...
    template = (CHART_DIR / "templates" / "postgresql-secret.yaml").read_text()
    assert 'get $previous "password"' in template  # ...and read back from the cluster on upgrade


def test_bundled_postgresql_from_an_existing_secret(render_chart: Any) -> None:
    values = {
        "gateway": {"replicaCount": 2},
        "postgresql": {
            "enabled": True,
            "auth": {
                "existingSecret": "team-db",
                "existingSecretPasswordKey": "pw",
                "existingSecretUrlKey": "uri",
            },
        },
    }
    rendered = render_chart(values)
    assert rendered.find("Secret", PG_NAME) is None
    deployment = rendered.get("Deployment", FULLNAME)
    env = configmap_env(rendered, container(deployment, "gateway"))
    url_secret = state_url_volume(deployment, env)
    assert url_secret["secretName"] == "team-db"
    assert url_secret["items"] == [{"key": "uri", "path": "state-url"}]
    statefulset = rendered.get("StatefulSet", PG_NAME)
    [volume] = [v for v in pod_spec(statefulset)["volumes"] if v["name"] == "password"]
    assert volume["secret"]["secretName"] == "team-db"
    assert volume["secret"]["items"] == [{"key": "pw", "path": "password"}]
    assert reference_problems(rendered, values) == []
    assert "URL from secret/team-db key uri" in rendered.notes


def test_only_the_gateway_reaches_the_bundled_postgresql(render_chart: Any) -> None:
    rendered = render_chart(VALUE_SETS["replicas-bundled-postgres"])
    policy = rendered.get("NetworkPolicy", PG_NAME)
    statefulset = rendered.get("StatefulSet", PG_NAME)
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == statefulset["spec"]["selector"]["matchLabels"]
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {
            "ports": [{"port": 5432, "protocol": "TCP"}],
            "from": [{"podSelector": {"matchLabels": gateway_selector(rendered)}}],
        }
    ]
    # No other policy lets anything in to the database's pods.
    pg_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    others = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if p is not policy and selects(p["spec"]["podSelector"]["matchLabels"], pg_labels)
    ]
    assert others == []
    off = render_chart(
        {**VALUE_SETS["replicas-bundled-postgres"], "networkPolicy": {"enabled": False}}
    )
    assert not off.of_kind("NetworkPolicy")
    assert render_chart({}).find("NetworkPolicy", PG_NAME) is None


def test_bundled_postgresql_is_off_by_default(render_chart: Any) -> None:
    rendered = render_chart({})
    assert rendered.find("StatefulSet", PG_NAME) is None
    assert rendered.find("Service", PG_NAME) is None
    assert rendered.find("Secret", PG_NAME) is None


# --- the image the chart runs -------------------------------------------------------------


def test_chart_app_version_matches_the_package_version() -> None:
    chart_meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version is not None
    assert chart_meta["appVersion"] == version.group(1)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={version.group(1)}" in dockerfile


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins,
    a pattern matching a parent directory matches its contents)."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatchcase(prefix, glob) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerfile_builds_the_image_the_chart_expects() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    runtime = dockerfile.split(" AS runtime", 1)[1]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert "pip install --no-cache-dir '.[server]'" in dockerfile
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    user = re.search(r"^USER (\d+):(\d+)$", runtime, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) == 10001  # the chart's runAsUser
    assert int(user.group(1)) != 0
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert re.search(r"^EXPOSE 50051 9464$", runtime, re.MULTILINE)
    # Exec form, so SIGTERM reaches the gateway; the TLS probe runs the venv's Python.
    assert 'ENTRYPOINT ["/opt/venv/bin/comfyui-grpc"]' in runtime
    assert 'CMD ["serve"]' in runtime
    assert "/opt/venv/bin/python" in (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    # Everything the builder copies is in the build context, and nothing else is.
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE)
    copied = [s for line in sources for s in line.split()]
    assert copied == ["pyproject.toml", "README.md", "protos", "server", "clients/python"]
    for source in copied:
        root = REPO_ROOT / source
        assert root.exists(), source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not _dockerignored(relative, patterns), relative
    for outside in ("tests/helm/test_helm_chart.py", "helm/comfyui-grpc/Chart.yaml", ".git/HEAD"):
        assert _dockerignored(outside, patterns), outside
    assert _dockerignored("server/comfyui_grpc/__pycache__/x.cpython-311.pyc", patterns)


# --- workflow templates ---------------------------------------------------------------------


def templates_volume(rendered: Rendered) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The gateway's templates volume, its mount, and the settings it reads."""
    deployment = rendered.get("Deployment", FULLNAME)
    gateway = container(deployment, "gateway")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "templates")
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "templates")
    return volume, mount, configmap_env(rendered, gateway)


def test_no_templates_by_default(render_chart: Any) -> None:
    rendered = render_chart({})
    deployment = rendered.get("Deployment", FULLNAME)
    gateway = container(deployment, "gateway")
    assert "templates" not in {v["name"] for v in pod_spec(deployment)["volumes"]}
    assert "COMFYUI_GRPC_TEMPLATES_DIR" not in configmap_env(rendered, gateway)
    assert rendered.find("ConfigMap", f"{FULLNAME}-templates") is None


def test_inline_templates_are_mounted_as_the_templates_directory(
    render_chart: Any, tmp_path: Path
) -> None:
    rendered = render_chart(VALUE_SETS["templates-inline"])
    configmap = rendered.get("ConfigMap", f"{FULLNAME}-templates")
    assert configmap["data"] == EXAMPLE_TEMPLATES  # every file, byte for byte
    volume, mount, env = templates_volume(rendered)
    assert volume["configMap"]["name"] == f"{FULLNAME}-templates"
    assert mount == {
        "name": "templates",
        "mountPath": "/etc/comfyui-grpc/templates",
        "readOnly": True,
    }  # no subPath: a subPath mount never sees ConfigMap updates
    assert env["COMFYUI_GRPC_TEMPLATES_DIR"] == "/etc/comfyui-grpc/templates"

    # What the pod sees is what the gateway loads: the examples, graph file included.
    from comfyui_grpc.workflows.template_library import TemplateLibrary

    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    library = TemplateLibrary(str(tmp_path))
    library.reload()
    names = {(t.name, t.version) for t in library.all() if not t.built_in}
    assert names == {("image-to-image", 1), ("sdxl-lora", 1)}


def test_an_existing_configmap_is_mounted_instead(render_chart: Any) -> None:
    rendered = render_chart(VALUE_SETS["templates-existing-configmap"])
    assert rendered.find("ConfigMap", f"{FULLNAME}-templates") is None
    volume, mount, env = templates_volume(rendered)
    assert volume["configMap"]["name"] == "studio-templates"
    assert mount["mountPath"] == env["COMFYUI_GRPC_TEMPLATES_DIR"] == "/srv/templates"
    assert "subPath" not in mount


def test_a_template_edit_does_not_restart_the_gateway(render_chart: Any) -> None:
    """Only the templates ConfigMap changes: the Deployment (its pod template and
    checksum annotations) stays byte for byte the same, so no rollout starts."""
    edited = dict(EXAMPLE_TEMPLATES)
    edited["sdxl-lora.yaml"] = edited["sdxl-lora.yaml"].replace("version: 1", "version: 2")
    edited["extra.yaml"] = "name: extra\nversion: 1\nworkflow_file: image-to-image.api.json\n"
    before = render_chart({"templates": {"files": EXAMPLE_TEMPLATES}})
    after = render_chart({"templates": {"files": edited}})
    assert after.get("ConfigMap", f"{FULLNAME}-templates")["data"] == edited
    assert after.get("Deployment", FULLNAME) == before.get("Deployment", FULLNAME)
    assert after.get("ConfigMap", FULLNAME) == before.get("ConfigMap", FULLNAME)


def _kubelet_projection(directory: Path, files: dict[str, str], generation: int) -> None:
    """Write ``files`` the way the kubelet updates a ConfigMap volume: a new
    timestamped directory, then one atomic swap of the ``..data`` symlink the
    visible names point through."""
    fresh = directory / f"..2025_01_01_00_00_0{generation}.000000000"
    fresh.mkdir()
    for name, text in files.items():
        (fresh / name).write_text(text)
    swap = directory / "..data_tmp"
    swap.symlink_to(fresh.name)
    swap.replace(directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


async def test_a_configmap_volume_update_reaches_the_gateway(tmp_path: Path) -> None:
    """The rollout-free update the chart relies on: the gateway's watcher sees a
    kubelet-style swap of the mounted files and serves the new version."""
    import asyncio

    from comfyui_grpc.workflows.template_library import TemplateLibrary

    files = dict(EXAMPLE_TEMPLATES)
    _kubelet_projection(tmp_path, files, 1)
    library = TemplateLibrary(str(tmp_path))
    library.reload()
    assert library.get("sdxl-lora").version == 1
    watcher = asyncio.create_task(library.watch(0.01))
    try:
        reloads = library.reloads
        files["sdxl-lora.yaml"] = files["sdxl-lora.yaml"].replace("version: 1", "version: 2")
        _kubelet_projection(tmp_path, files, 2)
        async with asyncio.timeout(10):
            while library.get("sdxl-lora").version != 2:
                await library.reloaded_past(reloads)
                reloads = library.reloads
    finally:
        watcher.cancel()
    assert library.get("sdxl-lora", 2).version == 2
