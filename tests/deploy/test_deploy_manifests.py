"""The compose file, the Kubernetes manifests and the Dockerfiles agree with the CLI and the settings."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import pytest
import yaml

from jobs.settings import Settings
from tests.deploy.deployfiles import (
    DOCKERFILES,
    K8S,
    NON_SETTINGS_ENV,
    REDIS_CONF,
    ROOT,
    check_voxbatch_command,
    cli_group,
    compose,
    dockerfile_instructions,
    exec_form,
    k8s_docs,
    k8s_workloads,
    option_value,
    parse_printed,
    run_cli,
)
from workers.vllm_launch import REQUIRED_ENV, REQUIRED_FLAGS, flag_values

SETTINGS = set(Settings.model_fields)
MARGIN_S = 5


def env_names_ok(names: set[str], where: str) -> None:
    for name in names:
        if name.startswith("VOXBATCH_"):
            assert name[len("VOXBATCH_") :].lower() in SETTINGS, f"{where}: {name} is not a setting"
        else:
            assert name in NON_SETTINGS_ENV, (
                f"{where}: {name} is neither a setting nor a documented exception"
            )


def settings_accept(env: dict[str, str]) -> None:
    """Values without compose interpolation must validate as the settings' types."""
    values = {
        k[len("VOXBATCH_") :].lower(): v
        for k, v in env.items()
        if k.startswith("VOXBATCH_") and "${" not in v
    }
    Settings(**values)


def seconds(value: str | int) -> float:
    match = re.fullmatch(r"(\d+)(s|m)?", str(value))
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


def all_contract_commands() -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for name, service in compose()["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["voxbatch"]:
            out.append((f"compose:{name}", command))
    for name, spec in k8s_workloads():
        for container in spec["containers"]:
            args = container.get("args") or []
            if args[:1] == ["voxbatch"]:
                out.append((f"k8s:{name}", args))
    for image, path in DOCKERFILES.items():
        for instruction, rest in dockerfile_instructions(path):
            if instruction == "CMD" and exec_form(rest)[:1] == ["voxbatch"]:
                out.append((f"docker:{image}", exec_form(rest)))
    return out


def gpu_supervisor_args() -> dict[str, list[str]]:
    """The gpu worker's supervisor argv, from each place it is written."""
    found = {"compose": [str(a) for a in compose()["services"]["gpu-worker"]["command"]]}
    for name, spec in k8s_workloads():
        if name == "gpu-worker":
            found["k8s"] = spec["containers"][0]["args"]
    for instruction, rest in dockerfile_instructions(DOCKERFILES["gpu-worker"]):
        if instruction == "CMD":
            found["docker"] = exec_form(rest)
    return found


# -- every command is a real voxbatch command with real options --------------------------------------


@pytest.mark.parametrize(("where", "argv"), all_contract_commands(), ids=lambda v: str(v)[:40])
def test_every_service_command_is_a_real_voxbatch_command(where: str, argv: list[str]) -> None:
    check_voxbatch_command(argv)


def test_a_command_the_cli_does_not_have_fails_the_check() -> None:
    # A manifest naming a command the CLI lacks is a broken deployment: a failure, never a skip.
    with pytest.raises(AssertionError, match="`voxbatch no-such-command` is not a command of the CLI"):
        check_voxbatch_command(["voxbatch", "no-such-command", "--flag"])
    with pytest.raises(click.UsageError):
        check_voxbatch_command(["voxbatch", "worker", "--no-such-option"])


def test_the_gpu_worker_commands_are_real_voxbatch_commands() -> None:
    for where, argv in gpu_supervisor_args().items():
        for flag in ("--server", "--worker"):
            inner = shlex.split(option_value(argv, flag) or "")
            assert inner[:1] == ["voxbatch"], (where, flag, inner)
            check_voxbatch_command(inner)
    assert "worker" in cli_group().commands


# -- the vLLM command ------------------------------------------------------------------------------


def test_compose_k8s_and_dockerfile_run_the_same_gpu_supervisor_command() -> None:
    found = gpu_supervisor_args()
    assert set(found) == {"compose", "k8s", "docker"}
    assert found["compose"] == found["k8s"] == found["docker"]


def test_their_vllm_command_is_what_voxbatch_vllm_prints_with_every_required_flag() -> None:
    argv = gpu_supervisor_args()["docker"]
    server = shlex.split(option_value(argv, "--server") or "")
    assert server[:2] == ["voxbatch", "vllm"]
    result = run_cli(*server[1:], "--print")
    assert result.returncode == 0, result.stderr
    launch = parse_printed(result.stdout.strip())
    flags = flag_values(launch.argv)
    for flag in REQUIRED_FLAGS:
        assert flag in flags, flag
    for name in REQUIRED_ENV:
        assert name in launch.env, name
    # The supervisor waits on the port vLLM listens on, and the worker calls that port.
    health = urlparse(option_value(argv, "--health-url") or "")
    assert health.port == int(flags["--port"]) and health.path == "/health"
    gpu_env = compose()["services"]["gpu-worker"]["environment"]
    assert urlparse(gpu_env["VOXBATCH_VLLM_URL"]).port == int(flags["--port"])
    # The clients' hints never exceed the caps the server was started with.
    assert float(gpu_env["VOXBATCH_VLLM_MAX_AUDIO_S"]) <= float(
        launch.env["VLLM_MAX_AUDIO_DECODE_DURATION_S"]
    )
    assert float(gpu_env["VOXBATCH_VLLM_MAX_UPLOAD_MB"]) <= float(
        launch.env["VLLM_MAX_AUDIO_CLIP_FILESIZE_MB"]
    )
    # Everyone else reaches that vLLM on the same port.
    assert urlparse(compose()["x-voxbatch-env"]["VOXBATCH_VLLM_URL"]).port == int(flags["--port"])
    assert "8000" in str(compose()["services"]["gpu-worker"]["ports"][0])


# -- grace periods fit the shutdowns -------------------------------------------------------------------


def stop_budget_s(argv: list[str]) -> float:
    return float(option_value(argv, "--worker-stop-timeout") or 0) + float(
        option_value(argv, "--server-stop-timeout") or 0
    )


def test_gpu_grace_periods_cover_the_supervisors_stop_budget() -> None:
    budget = stop_budget_s(gpu_supervisor_args()["docker"])
    assert budget > 0
    assert seconds(compose()["services"]["gpu-worker"]["stop_grace_period"]) >= budget + MARGIN_S
    grace = {name: spec.get("terminationGracePeriodSeconds", 30) for name, spec in k8s_workloads()}
    assert grace["gpu-worker"] >= budget + MARGIN_S


def celery_soft_shutdown_s() -> float:
    from workers.celery_app import app

    return float(app.conf.worker_soft_shutdown_timeout or 0)


def test_grace_periods_fit_celerys_soft_shutdown() -> None:
    soft = celery_soft_shutdown_s()
    assert soft > 0, "worker_soft_shutdown_timeout is 0: SIGTERM would wait for long tasks, then SIGKILL"
    services = compose()["services"]
    grace = {name: spec.get("terminationGracePeriodSeconds", 30) for name, spec in k8s_workloads()}
    assert seconds(services["cpu-worker"]["stop_grace_period"]) >= soft + MARGIN_S
    assert grace["cpu-worker"] >= soft + MARGIN_S
    worker_stop = float(option_value(gpu_supervisor_args()["docker"], "--worker-stop-timeout") or 0)
    assert worker_stop >= soft + MARGIN_S


def test_a_worker_that_exits_is_started_again_everywhere() -> None:
    # A worker whose consumer died exits non-zero (workers.celery_app.VoxbatchWorker.stop, issue 21):
    # only a supervisor that restarts it turns that into a fresh consumer.
    services = compose()["services"]
    for name in ("cpu-worker", "gpu-worker"):
        assert services[name].get("restart") in {"always", "unless-stopped", "on-failure"}, name
    pods = dict(k8s_workloads())
    for name in ("cpu-worker", "gpu-worker"):
        assert pods[name].get("restartPolicy", "Always") == "Always", name
    unit = (ROOT / "infra" / "vllm" / "voxbatch-gpu-worker.service").read_text()
    assert re.search(r"^Restart=(on-failure|always)$", unit, re.M)


# -- compose ------------------------------------------------------------------------------------------


def test_compose_services_volumes_and_dependencies_line_up() -> None:
    doc = compose()
    services = doc["services"]
    assert {
        "redis",
        "postgres",
        "s3",
        "s3-init",
        "gpu-worker",
        "api",
        "cpu-worker",
        "flower",
        "watcher",
    } <= set(services)
    declared = set(doc.get("volumes") or {})
    used: set[str] = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / "infra" / source).resolve().exists(), (name, source)
            else:
                used.add(source)
        for dep, condition in (service.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy; it has no check"
                )
        if "build" in service:
            assert (ROOT / "infra" / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    assert used == declared, "every named volume is declared and used"
    for stateful in ("redis", "postgres", "s3"):
        assert any(v.split(":")[0] in declared for v in services[stateful]["volumes"]), stateful
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["flower"]["environment"]["VOXBATCH_FLOWER_BASIC_AUTH"]


def test_compose_env_vars_are_settings() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        if name in {"redis", "postgres", "s3"}:
            continue
        env = service.get("environment") or {}
        env_names_ok(set(env), f"compose:{name}")
        settings_accept({k: str(v) for k, v in env.items()})


def healthcheck_url(test: list[str] | str) -> str | None:
    text = test if isinstance(test, str) else " ".join(test)
    match = re.search(r"http://127\.0\.0\.1:\d+/\S*", text)
    return match[0] if match else None


def test_compose_health_checks_probe_the_port_the_command_listens_on() -> None:
    services = compose()["services"]
    checked = 0
    for name, service in services.items():
        command = service.get("command")
        url = healthcheck_url(service.get("healthcheck", {}).get("test", []))
        if url and isinstance(command, list) and "--port" in command:
            assert urlparse(url).port == int(option_value(command, "--port") or 0), name
            for mapping in service.get("ports", []):
                assert str(mapping).rsplit(":", 1)[-1] == str(urlparse(url).port), (name, mapping)
            checked += 1
    assert checked >= 2  # api, flower
    assert set(services) - {"s3-init", "watcher"} <= {n for n, s in services.items() if "healthcheck" in s}


def test_redis_config_persists_and_never_evicts_on_a_real_redis_server(tmp_path: Path) -> None:
    import socket

    text = REDIS_CONF.read_text()
    assert re.search(r"^appendonly yes$", text, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", text, re.M)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # /data exists in the containers, not here: the same file with only its directory changed.
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"^dir .*$", f"dir {tmp_path}", text, flags=re.M))
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(
                        f"redis-server refused the config: {proc.stdout.read() if proc.stdout else ''!r}"
                    )
                subprocess.run(["sleep", "0.1"], check=True)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- Kubernetes ----------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == files - {"secrets.example.yaml"}
    image_names = {i["name"] for i in kustomization["images"]}
    for _name, spec in k8s_workloads():
        for container in spec["containers"]:
            image = container["image"]
            assert image in image_names or ":" in image, image


def test_k8s_secrets_are_templates_only() -> None:
    for path, doc in k8s_docs():
        if doc["kind"] == "Secret":
            assert path.name == "secrets.example.yaml"
            for key, value in doc.get("stringData", {}).items():
                assert value == "" or "CHANGE-ME" in value, f"{key} holds something that looks real"
            assert "data" not in doc


def test_k8s_env_vars_are_settings() -> None:
    for path, doc in k8s_docs():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "voxbatch-config":
            env_names_ok(set(doc["data"]), path.name)
            settings_accept(doc["data"])
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == "voxbatch-secrets":
            env_names_ok(set(doc["stringData"]), path.name)
    for name, spec in k8s_workloads():
        if name in {"redis", "postgres"}:
            continue  # third-party images with their own variables
        for container in spec["containers"]:
            env_names_ok({e["name"] for e in container.get("env", [])}, f"k8s:{name}")


def probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]


def test_k8s_workloads_run_as_non_root_with_probes_on_their_ports() -> None:
    for name, spec in k8s_workloads():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for container in spec["containers"]:
            if name not in {"watcher", "s3-init"}:
                assert probes(container), f"{name} has no probe"
            args = container.get("args") or container.get("command") or []
            ports = {p["containerPort"] for p in container.get("ports", [])}
            for probe in probes(container):
                if "httpGet" in probe:
                    assert probe["httpGet"]["port"] in ports, name
            listen = option_value(args, "--port") or option_value(
                shlex.split(option_value(args, "--server") or ""), "--port"
            )
            if listen:
                assert int(listen) in ports, name


def test_k8s_services_target_ports_their_pods_open() -> None:
    pods = {}
    for _path, doc in k8s_docs():
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            ports = {
                p["containerPort"]
                for c in doc["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            pods[labels["app"]] = ports
    for _path, doc in k8s_docs():
        if doc["kind"] == "Service":
            app = doc["spec"]["selector"]["app"]
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in pods[app], (doc["metadata"]["name"], port)


def test_gpu_worker_lands_on_gpu_nodes_and_scaling_watches_the_celery_queues() -> None:
    spec = dict(k8s_workloads())["gpu-worker"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    deployments = {doc["metadata"]["name"] for _p, doc in k8s_docs() if doc["kind"] == "Deployment"}
    scaled = {}
    for _path, doc in k8s_docs():
        if doc["kind"] == "ScaledObject":
            target = doc["spec"]["scaleTargetRef"]["name"]
            assert target in deployments
            scaled[target] = doc["spec"]
    assert set(scaled) == {"cpu-worker", "gpu-worker"}
    # cpu workers: the Redis list of their queue.
    (trigger,) = scaled["cpu-worker"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "cpu"
    assert urlparse("redis://" + trigger["metadata"]["address"]).hostname.startswith("redis.")
    # gpu workers: the backlog in GPU seconds the API exports, down to zero when nothing waits.
    gpu = scaled["gpu-worker"]
    assert gpu["minReplicaCount"] == 0 and gpu["maxReplicaCount"] >= 1
    exported = (ROOT / "api" / "metrics.py").read_text()
    queries = []
    for trigger in gpu["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) == 0
        assert urlparse(meta["serverAddress"]).scheme == "http"
        names = re.findall(r"\b(voxbatch_[a-z_]+)", meta["query"])
        assert names and all(f'"{n}"' in exported for n in names), names
        assert meta["query"].rstrip().endswith("or vector(0)")  # an empty backlog reads as 0, not as no data
        queries.append(meta["query"])
    assert re.search(r'voxbatch_gpu_backlog_seconds\{queue="gpu"\}', queries[0])
    assert any("voxbatch_jobs_waiting_reduce" in q for q in queries)


def test_k8s_redis_config_is_the_same_text_as_compose() -> None:
    for _path, doc in k8s_docs():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "redis-conf":
            assert doc["data"]["redis.conf"] == REDIS_CONF.read_text()
            return
    pytest.fail("no redis-conf ConfigMap")


# -- Dockerfiles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfiles_run_as_non_root_with_a_health_check_and_a_real_install(image: str) -> None:
    steps = dockerfile_instructions(DOCKERFILES[image])
    users = [rest for instruction, rest in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, image
    assert any(instruction == "HEALTHCHECK" for instruction, _ in steps), image
    runs = " ".join(rest for instruction, rest in steps if instruction == "RUN")
    assert re.search(r"pip (install|wheel)", runs)
    assert not re.search(r"install[^&]*\s(-e|--editable)\s", runs), "the package is installed editable"
    for instruction, rest in steps:
        if instruction == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
        if instruction == "ENV":
            names = set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest))
            env_names_ok(names, f"{image} ENV")


def test_dockerfile_health_checks_probe_their_commands_port() -> None:
    steps = dict(dockerfile_instructions(DOCKERFILES["api"]))
    cmd = exec_form(steps["CMD"])
    url = healthcheck_url(steps["HEALTHCHECK"])
    assert url and urlparse(url).port == int(option_value(cmd, "--port") or 0)


def test_cpu_image_has_ffmpeg_and_the_gpu_image_is_vllm_with_audio() -> None:
    cpu = " ".join(rest for i, rest in dockerfile_instructions(DOCKERFILES["cpu-worker"]) if i == "RUN")
    assert "ffmpeg" in cpu
    gpu_text = DOCKERFILES["gpu-worker"].read_text()
    image_tag = re.search(r"ARG VLLM_IMAGE=vllm/vllm-openai:v([\d.]+)", gpu_text)
    version = re.search(r"ARG VLLM_VERSION=([\d.]+)", gpu_text)
    assert image_tag and version and image_tag[1] == version[1], "image tag and vllm[audio] pin differ"
    assert '"vllm[audio]==${VLLM_VERSION}"' in gpu_text
