"""deploy/k8s: schema validation of core kinds (kubernetes-validate, offline schemas), structure
of the CRDs (ServiceMonitor, PrometheusRule, ScaledObject), and the cross-references between
manifests, the settings, the Dockerfile, the alerts and the compose file."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import (
    ALERTS_PATH,
    K8S_DIR,
    REPO,
    cli_env_names,
    compose,
    load_module,
    load_yaml,
    load_yaml_all,
    settings_env_names,
)

K8S_VERSION = "1.30"
CORE_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Deployment",
    "Service",
    "PersistentVolumeClaim",
}
# STREAM_SASL_MECHANISM (kafka-python spelling) -> the KEDA Kafka scaler's `sasl` value.
KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
    "GSSAPI": "gssapi",
}
OVERLAY = K8S_DIR / "overlays" / "shared-checkpoints"
rule_builder = load_module(K8S_DIR / "build_prometheusrule.py")


def _documents(folder: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(load_yaml_all(path))
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in _documents(K8S_DIR):
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in found, f"duplicate {key}"
        found[key] = doc
    return found


def _one(manifests: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for (k, _), d in manifests.items() if k == kind]
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _config(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    return dict(_one(manifests, "ConfigMap")["data"])


def _secret(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    return dict(_one(manifests, "Secret")["stringData"])


def _apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """The RFC 6902 `replace` and `add` operations the overlays use."""
    result = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in {"replace", "add"}, op
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, op["value"])
            else:
                node[index] = op["value"]
        else:
            assert op["op"] == "add" or last in node, op
            node[last] = op["value"]
    return result


# --------------------------------------------------------------------------- schemas


def test_core_kinds_validate_against_the_kubernetes_schemas(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    validated = set()
    for (kind, _), doc in manifests.items():
        if kind in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            validated.add(kind)
    assert validated == CORE_KINDS - {"PersistentVolumeClaim"}


def test_the_validator_rejects_a_wrong_deployment(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    bad = copy.deepcopy(_one(manifests, "Deployment"))
    _container(bad)["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(_one(manifests, "Deployment"))
    _container(bad)["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "stream-reco"
    deployment = load_yaml(K8S_DIR / "deployment.yaml")
    (image,) = kustomization["images"]
    assert _container(deployment)["image"].split(":")[0] == image["name"]


# --------------------------------------------------------------------------- workload


def test_deployment_probes_resources_and_security(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = _one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # the uid the image declares (Dockerfile USER) is the one the pod runs as
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.M)
    assert (
        str(pod["securityContext"]["runAsUser"]),
        str(pod["securityContext"]["runAsGroup"]),
    ) == user
    # a surge pod beyond the partition count would never be ready: the rollout must not surge
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_environment_comes_from_the_configmap_and_the_secret(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    container = _container(_one(manifests, "Deployment"))
    refs = {
        kind: source[kind]["name"]
        for source in container["envFrom"]
        for kind in ("configMapRef", "secretRef")
        if kind in source
    }
    assert refs == {
        "configMapRef": _one(manifests, "ConfigMap")["metadata"]["name"],
        "secretRef": _one(manifests, "Secret")["metadata"]["name"],
    }
    known = settings_env_names() | cli_env_names()
    for name in _config(manifests) | _secret(manifests):
        assert name in known, f"{name} is not a STREAM_* setting (stream/settings.py)"
    for env in container.get("env", []):
        if env["name"].startswith("STREAM_"):
            assert env["name"] in settings_env_names(), env["name"]


def test_configmap_and_secret_values_are_valid_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from stream.checkpoint import CheckpointStore
    from stream.settings import load_settings

    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("STREAM_"):
            monkeypatch.delenv(name)
    for name, value in (_config(manifests) | _secret(manifests)).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    config = _config(manifests)
    assert settings.events_topic == config["STREAM_EVENTS_TOPIC"]
    assert settings.sasl_plain_password is not None
    assert settings.checkpoint_key is not None
    assert CheckpointStore.from_settings(settings) is not None  # dir + key: the worker starts


def test_secret_holds_only_marked_placeholders_of_secret_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    from stream.settings import StreamSettings

    secret = _one(manifests, "Secret")
    assert "data" not in secret  # stringData only: nothing base64-hidden
    for name, value in _secret(manifests).items():
        assert value.startswith("CHANGE-ME"), f"{name} must be an obvious placeholder"
        field = name.removeprefix("STREAM_").lower()
        assert field in StreamSettings.model_fields
    secret_fields = {
        f"STREAM_{n.upper()}"
        for n, f in StreamSettings.model_fields.items()
        if "SecretStr" in str(f.annotation)
    }
    assert secret_fields & set(_secret(manifests)) == {
        "STREAM_SASL_PLAIN_PASSWORD",
        "STREAM_CHECKPOINT_KEY",
    }
    assert not secret_fields & set(_config(manifests)), "a secret setting sits in the ConfigMap"


def test_checkpoint_volume_is_mounted_at_the_checkpoint_dir(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = _one(manifests, "Deployment")
    container = _container(deployment)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts[_config(manifests)["STREAM_CHECKPOINT_DIR"]]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[volume_name]


# --------------------------------------------------------------------------- service, scraping


def test_service_selects_the_pods_and_targets_the_metrics_port(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = _one(manifests, "Deployment")
    service = _one(manifests, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = _container(deployment)["ports"]
    assert port["targetPort"] == container_port["name"] == "metrics"
    metrics_port = int(_config(manifests)["STREAM_METRICS_PORT"])
    assert container_port["containerPort"] == port["port"] == metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_servicemonitor_scrapes_the_service_as_job_stream_worker(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    monitor = _one(manifests, "ServiceMonitor")
    service = _one(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    # alerts.yml filters on job="stream-worker": the job label comes from this Service label
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "stream-worker"


def test_prometheusrule_is_generated_from_alerts_yml(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    rule = _one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load_yaml(ALERTS_PATH)["groups"]
    assert (K8S_DIR / "prometheusrule.yaml").read_text(encoding="utf-8") == rule_builder.render(), (
        "stale: run python deploy/k8s/build_prometheusrule.py"
    )
    monitor = _one(manifests, "ServiceMonitor")
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]


# --------------------------------------------------------------------------- autoscaling


def test_scaledobject_scales_the_deployment_on_the_groups_lag(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    scaled = _one(manifests, "ScaledObject")
    config = _config(manifests)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        _one(manifests, "Deployment")["metadata"]["name"],
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == config["STREAM_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["STREAM_GROUP_ID"]
    assert meta["topic"] == config["STREAM_EVENTS_TOPIC"]
    assert int(meta["lagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false"
    assert meta["sasl"] == KEDA_SASL[config["STREAM_SASL_MECHANISM"]]
    assert (meta["tls"] == "enable") == config["STREAM_SECURITY_PROTOCOL"].endswith("SSL")


def test_max_replicas_do_not_exceed_the_partitions(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    spec = _one(manifests, "ScaledObject")["spec"]
    partitions = int(_config(manifests)["STREAM_EVENTS_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    # the compose stack creates the same partition count
    command = compose()["services"]["kafka-init"]["command"][0]
    assert f"--topic events --partitions {partitions}" in command


def test_trigger_authentication_reads_the_secrets_keys(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    scaled = _one(manifests, "ScaledObject")
    auth = _one(manifests, "TriggerAuthentication")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = _one(manifests, "Secret")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]


# --------------------------------------------------------------------------- overlay


def test_shared_checkpoints_overlay_swaps_the_volume_for_a_valid_pvc(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    kustomization = load_yaml(OVERLAY / "kustomization.yaml")
    assert "../.." in kustomization["resources"]
    (pvc,) = load_yaml_all(OVERLAY / "pvc.yaml")
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (patch,) = kustomization["patches"]
    deployment = _one(manifests, "Deployment")
    assert patch["target"]["name"] == deployment["metadata"]["name"]
    patched = _apply_json_patch(deployment, yaml.safe_load(patch["patch"]))
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    volumes = {v["name"]: v for v in patched["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoints"] == {
        "name": "checkpoints",
        "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]},
    }
    assert set(volumes) == {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
