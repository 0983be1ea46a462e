"""The cluster definitions in cluster/: the Ray cluster-launcher YAML against the JSON schema shipped inside the ray
package, the KubeRay manifests' structure and their pod templates against Kubernetes' own schemas (shipped inside
kubernetes-validate), and the two promises of cluster/README.md: no public dashboard, no secret in a file.
Everything runs offline: a guard makes any network connection fail the test."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from polyalign_ray.cli import build_parser
from polyalign_ray.job_spec import config_paths, polyalign_commands

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "cluster" / "aws-gpu.yaml"
RAYCLUSTER = ROOT / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
PVC = ROOT / "cluster" / "kuberay" / "shared-pvc.yaml"
KUBERNETES_VERSION = "1.30"
IMAGE_CHECKOUT = "/home/ray/polyalign-ray/"
"""Where cluster/Dockerfile puts the checkout inside the image."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> None:
    """Schema validation must not fetch anything: a connection attempt fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during a cluster-config test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def pinned_ray_version() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert match, "pyproject.toml pins ray exactly"
    return match.group(1)


# Ray cluster launcher


def ray_launcher_schema() -> dict:
    """ray/autoscaler/ray-schema.json from the installed ray package (found without importing ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_launcher_yaml_validates_against_rays_schema() -> None:
    jsonschema.validate(load(LAUNCHER), ray_launcher_schema())


def test_launcher_schema_check_catches_a_typo() -> None:
    broken = {**load(LAUNCHER), "max_wrokers": 4}
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        jsonschema.validate(broken, ray_launcher_schema())


def test_launcher_has_a_cpu_head_and_a_gpu_worker_type() -> None:
    config = load(LAUNCHER)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)


def test_launcher_installs_the_synced_checkout() -> None:
    config = load(LAUNCHER)
    remote = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert f"pip install --no-cache-dir -e {remote}" in config["setup_commands"]
    assert {".git", ".venv", "runs"} <= set(config["rsync_exclude"])
    assert config["docker"]["image"].startswith(f"rayproject/ray:{pinned_ray_version()}-")


def test_launcher_keeps_the_dashboard_on_loopback() -> None:
    config = load(LAUNCHER)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in LAUNCHER.read_text(encoding="utf-8")
    assert "security_group" not in config["provider"]  # Ray's default group opens SSH only


# KubeRay


def manifests() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in (RAYCLUSTER, RAYJOB, PVC) for doc in yaml.safe_load_all(path.read_text())]


def cluster_spec_of(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def pod_templates(cluster_spec: dict) -> list[tuple[str, dict]]:
    head = ("head", cluster_spec["headGroupSpec"]["template"])
    return [head, *((g["groupName"], g["template"]) for g in cluster_spec["workerGroupSpecs"])]


@pytest.mark.parametrize(
    ("path", "kind"), [(RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")], ids=lambda v: str(v)[-20:]
)
def test_kuberay_manifests_have_their_kind_and_required_fields(path: Path, kind: str) -> None:
    manifest = load(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert manifest["metadata"]["name"]
    spec = cluster_spec_of(manifest)
    assert spec["rayVersion"] == pinned_ray_version()
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"]
    gpus = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for g in spec["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
    ]
    assert any(int(n or 0) >= 1 for n in gpus)


def test_rayjob_runs_a_job_spec_of_the_checkout_and_cleans_up() -> None:
    spec = load(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    commands = polyalign_commands(spec["entrypoint"])
    assert commands
    for arguments in commands:
        build_parser().parse_args(arguments)
        for path in config_paths(arguments):
            assert path.startswith(IMAGE_CHECKOUT)
            assert (ROOT / path.removeprefix(IMAGE_CHECKOUT)).is_file(), path


def test_rayjob_cluster_is_the_raycluster() -> None:
    assert load(RAYJOB)["spec"]["rayClusterSpec"] == load(RAYCLUSTER)["spec"]


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_pod_templates_validate_against_the_kubernetes_schema(path: Path) -> None:
    for name, template in pod_templates(cluster_spec_of(load(path))):
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": name},
            "template": template,
        }
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_the_pod_template_check_catches_a_typo() -> None:
    _, template = pod_templates(load(RAYCLUSTER)["spec"])[0]
    broken = {**template, "spec": {**template["spec"], "tolerashuns": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": broken},
            KUBERNETES_VERSION,
            strict=True,
        )


def test_shared_volume_claim_validates_and_is_read_write_many() -> None:
    claim = load(PVC)
    kubernetes_validate.validate(claim, KUBERNETES_VERSION, strict=True)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mounted = {
        volume["persistentVolumeClaim"]["claimName"]
        for _, template in pod_templates(load(RAYCLUSTER)["spec"])
        for volume in template["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert mounted == {claim["metadata"]["name"]}


def exposures(node: Any) -> list[str]:
    """Every setting in a manifest that would publish a port beyond the cluster: an ingress, a NodePort or a load
    balancer."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if "ingress" in str(key).lower() and value:
                found.append(f"{key}: {value}")
            found += exposures(value)
    elif isinstance(node, list):
        for item in node:
            found += exposures(item)
    elif node in ("NodePort", "LoadBalancer"):
        found.append(str(node))
    return found


def test_the_dashboard_is_not_exposed() -> None:
    for path, manifest in manifests():
        assert manifest["kind"] not in ("Ingress", "Service", "Route"), path
        assert exposures(manifest) == [], path
        if manifest["kind"] in ("RayCluster", "RayJob"):
            assert cluster_spec_of(manifest)["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert exposures({"spec": {"headGroupSpec": {"enableIngress": True, "serviceType": "NodePort"}}}) == [
        "enableIngress: True",
        "NodePort",
    ]


# Secrets

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY", re.IGNORECASE)
SECRET_VALUE = re.compile(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{20,}")


def test_secret_variables_come_from_kubernetes_secrets() -> None:
    for path, manifest in manifests():
        if manifest["kind"] not in ("RayCluster", "RayJob"):
            continue
        for name, template in pod_templates(cluster_spec_of(manifest)):
            for container in template["spec"]["containers"]:
                for variable in container.get("env", []):
                    if SECRET_NAME.search(variable["name"]):
                        assert "value" not in variable, (path.name, name, variable["name"])
                        assert "secretKeyRef" in variable["valueFrom"], (path.name, name, variable["name"])


def test_no_file_in_cluster_or_jobs_holds_a_secret() -> None:
    files = [p for folder in ("cluster", "jobs") for p in (ROOT / folder).rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert not SECRET_VALUE.search(path.read_text(encoding="utf-8", errors="replace")), path


def test_dockerfile_copies_what_exists_and_names_the_pinned_ray() -> None:
    text = (ROOT / "cluster" / "Dockerfile").read_text(encoding="utf-8")
    assert f"rayproject/ray:{pinned_ray_version()}-" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[2:-1]:
                assert (ROOT / source).exists(), source
