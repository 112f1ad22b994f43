"""The Kubernetes manifests (`deploy/kubernetes/`): valid against the Kubernetes schemas that
`kubernetes-validate` ships (no cluster, no network), and in step with the relay they run.

What is checked against the relay itself: the probe paths are routes that answer, the grace
period holds the preStop pause and the whole drain, every Secret key and ConfigMap entry is a
setting the relay reads, and the ports and the user are the image's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from starlette.routing import Route

from relay.app import create_app
from relay.config import Settings
from relay.server.drain import graceful_timeout
from tests.conftest import RelayFactory
from tests.test_deploy_files import final_stage, variables_read_by_the_relay
from tests.test_openapi import starlette_app

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
# The oldest release the manifests are for (the preStop `sleep` action is on by default since
# 1.30) and the newest the package knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# The secrets a production relay reads, each from the Secret under its own name.
SECRETS = {"ENCRYPTION_SECRET", "TOKEN_HMAC_SECRET", "DATABASE_URL", "REDIS_URL"}
REQUIRED_SECRETS = {"ENCRYPTION_SECRET", "DATABASE_URL", "REDIS_URL"}

JSON = dict[str, Any]


def documents(path: Path) -> list[JSON]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomizations() -> list[Path]:
    return sorted(KUBERNETES.rglob("kustomization.yaml"))


def manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def base_resources() -> Iterator[JSON]:
    for name in documents(BASE / "kustomization.yaml")[0]["resources"]:
        yield from documents(BASE / name)


def one(kind: str) -> JSON:
    (found,) = [doc for doc in base_resources() if doc["kind"] == kind]
    return found


def pod_specs() -> Iterator[tuple[str, JSON]]:
    for kind in ("Deployment", "Job"):
        yield kind, one(kind)["spec"]["template"]["spec"]


def secret_refs(container: JSON) -> dict[str, JSON]:
    """Environment variable name -> its secretKeyRef."""
    return {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }


def relay_container() -> JSON:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def config_data() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


# -- Schemas and the kustomize layout --------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for document in documents(path):
        # strict: an unknown or misspelt field is an error, not silently dropped by the server.
        kubernetes_validate.validate(document, version, strict=True)


def test_the_base_holds_what_a_cluster_needs() -> None:
    kinds = sorted(doc["kind"] for doc in base_resources())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "PodDisruptionBudget",
            "Service",
        ]
    )
    assert not [doc for doc in base_resources() if doc["kind"] == "Secret"], (
        "secrets are the operator's, never in the repository"
    )


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.parent.name))
def test_each_kustomization_lists_every_file_beside_it(path: Path) -> None:
    (kustomization,) = documents(path)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    patches = [patch["path"] for patch in kustomization.get("patches", [])]
    listed = [*kustomization.get("resources", []), *patches]
    for entry in listed:
        assert (path.parent / entry).exists(), entry
    beside = {p.name for p in path.parent.glob("*.yaml") if p.name != path.name}
    assert beside <= set(listed), f"not in {path}: {sorted(beside - set(listed))}"


# -- Against the relay -----------------------------------------------------------------------------


def probe_paths() -> dict[str, str]:
    container = relay_container()
    return {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }


def test_probes_ask_livez_and_readyz() -> None:
    assert probe_paths() == {
        "startupProbe": "/livez",
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
    }
    container = relay_container()
    port_names = {port["name"] for port in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    # A slow store answers the readiness probe with the relay's own 503, not a probe timeout.
    settings = Settings.from_env({"ENCRYPTION_SECRET": "x" * 32})
    assert container["readinessProbe"]["timeoutSeconds"] > settings.db_connect_timeout
    # Migrations run before serving: the start-up probe leaves them two minutes.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_the_probe_paths_are_routes_that_answer(make_relay: RelayFactory) -> None:
    app = starlette_app(create_app(Settings.from_env({"ENCRYPTION_SECRET": "x" * 32})))
    routes = {r.path: r.methods for r in app.routes if isinstance(r, Route)}
    server = make_relay()
    with server.client() as client:
        for path in set(probe_paths().values()):
            assert "GET" in (routes[path] or ())
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)


def test_the_grace_period_holds_the_pause_and_the_whole_drain() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    pause = relay_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5, "the endpoints and every proxy in front need a moment to drop the pod"
    env = {
        "ENCRYPTION_SECRET": "x" * 32,
        "RELAY_DRAIN_SECONDS": config_data()["RELAY_DRAIN_SECONDS"],
    }
    settings = Settings.from_env(env)
    assert spec["terminationGracePeriodSeconds"] > pause + graceful_timeout(settings.drain_seconds)


def test_secrets_come_from_the_secret_under_the_names_the_relay_reads() -> None:
    read = variables_read_by_the_relay()
    refs = secret_refs(relay_container())
    assert set(refs) >= SECRETS
    for name, ref in refs.items():
        assert name in read, f"the relay does not read {name}"
        assert ref["key"] == name
        assert ref["name"] == "byok-relay-secrets"
        assert ref.get("optional", False) is (name not in REQUIRED_SECRETS), name
    (job,) = one("Job")["spec"]["template"]["spec"]["containers"]
    assert {"ENCRYPTION_SECRET", "DATABASE_URL"} <= set(secret_refs(job))
    assert not [var for var in relay_container()["env"] if "value" in var], "values are secret"


def test_the_config_map_holds_the_production_settings() -> None:
    data = config_data()
    unknown = sorted(set(data) - variables_read_by_the_relay())
    assert not unknown, f"the relay does not read {unknown}"
    assert data["RELAY_ENV"] == "production"
    assert data["RELAY_DEMO"] == "off"
    assert data["HOST"] == "0.0.0.0"
    assert not set(data) & SECRETS
    Settings.from_env({"ENCRYPTION_SECRET": "x" * 32, **data})  # it starts a relay
    for _, spec in pod_specs():
        (container,) = spec["containers"]
        refs = [source["configMapRef"]["name"] for source in container["envFrom"]]
        assert refs == [one("ConfigMap")["metadata"]["name"]]


def test_ports_are_the_images() -> None:
    exposed = {args for keyword, args in final_stage() if keyword == "EXPOSE"}
    (port,) = relay_container()["ports"]
    assert str(port["containerPort"]) in exposed
    assert config_data()["PORT"] == str(port["containerPort"])
    service = one("Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


def test_selectors_pick_the_relay_pods() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert one("Service")["spec"]["selector"] == selector
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    job_labels = one("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items(), "the Service must not pick the Job's pod"
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_pods_run_as_the_images_user_on_a_read_only_root() -> None:
    (user,) = [args for keyword, args in final_stage() if keyword == "USER"]
    uid = int(user.split(":")[0])
    for kind, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, kind
        assert spec["securityContext"]["runAsUser"] == uid, kind
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", kind
        assert spec["automountServiceAccountToken"] is False, kind
        mounts = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, kind
            assert context["allowPrivilegeEscalation"] is False, kind
            assert context["capabilities"]["drop"] == ["ALL"], kind
            assert {"/tmp"} == {
                m["mountPath"] for m in container["volumeMounts"] if m["name"] in mounts
            }, kind
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), kind
            assert "memory" in resources["limits"], kind


def test_the_commands_are_the_clis() -> None:
    assert relay_container()["command"] == ["byok-relay", "serve"]
    job = one("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["byok-relay", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container["image"] == relay_container()["image"]


def test_the_autoscaler_scales_on_cpu_and_never_below_the_budget() -> None:
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    budget = one("PodDisruptionBudget")["spec"]
    assert hpa["spec"]["minReplicas"] >= 2, "one pod draining must leave one serving"
    assert budget.get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]
    assert "replicas" not in one("Deployment")["spec"], "the autoscaler owns the count"
    strategy = one("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_the_example_ingress_reaches_the_service() -> None:
    service = one("Service")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (ingress,) = documents(KUBERNETES / "overlays" / "example" / "ingress.yaml")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in port_names
    patch = documents(KUBERNETES / "overlays" / "example" / "relay-config.yaml")[0]
    Settings.from_env({"ENCRYPTION_SECRET": "x" * 32, **config_data(), **patch["data"]})
