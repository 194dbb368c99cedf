"""Every Kubernetes manifest, and the kustomization as rendered, validated against the Kubernetes
OpenAPI schemas (strict: unknown fields fail), with kubernetes-validate from PyPI, whose schemas ship
inside the package (nothing is downloaded at test time). `make deploy-tools` installs it.

Custom resources (KEDA's ScaledObject) have no schema there: test_deploy_manifests checks their fields.
The kustomization is rendered with `kubectl kustomize` (kustomize built into kubectl) when kubectl is
installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deployfiles import K8S

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (make deploy-tools)")

# The oldest Kubernetes release still supported upstream when this was written, and the newest the
# package knows: an API removed or not yet there fails one of them.
VERSIONS = ["1.31.0", kv.latest_version()]
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"), ("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path.read_text()):
            name = doc.get("metadata", {}).get("name", "-")
            out.append((f"{path.name}:{doc['kind']}/{name}", doc))
    return out


def check(doc: dict[str, Any], version: str) -> None:
    if (doc["apiVersion"], doc["kind"]) in CUSTOM:
        return
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"{doc['kind']}/{doc.get('metadata', {}).get('name')} at {path or '(top)'}: {exc.message}"
        )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("where", "doc"), manifests(), ids=[w for w, _ in manifests()])
def test_manifest_is_valid_against_the_kubernetes_schemas(
    where: str, doc: dict[str, Any], version: str
) -> None:
    check(doc, version)


def test_a_wrong_field_is_caught() -> None:
    """The validator really is strict: a typo in a pod spec fails."""
    _, deployment = next((w, d) for w, d in manifests() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomization_renders_and_every_rendered_object_validates(tmp_path: Path) -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = documents(done.stdout)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = sum(len(documents((K8S / name).read_text())) for name in listed)
    assert len(rendered) == expected
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "voxbatch", doc["metadata"]
        check(doc, VERSIONS[-1])
    images = {
        c["image"]
        for doc in rendered
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    assert not {i for i in images if i.startswith("voxbatch-")}, (
        f"images not rewritten by kustomize: {images}"
    )
