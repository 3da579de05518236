"""docker/Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from splitnn.orchestrator.config import load_config
from tests.netns import command_words, load_compose, parse_volume

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
WORKERS = ("alice", "bob", "claire")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _console_scripts() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


def _exec_words(args: str) -> list[str]:
    args = args.strip()
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def test_base_image_pinned_by_tag():
    froms = [args for op, args in _instructions() if op == "FROM"]
    assert froms, "no FROM"
    for args in froms:
        image = args.split()[0]
        name, _, tag = image.partition(":")
        assert name.endswith("python"), image
        assert tag and tag != "latest", f"{image}: pin the base image by tag"
        assert re.match(r"3\.11\.\d+-slim", tag), f"{image}: a full python 3.11.x slim tag"


def test_every_copied_path_exists():
    copies = [args for op, args in _instructions() if op in ("COPY", "ADD")]
    assert copies
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert "--from" not in args, args
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the build context"
            assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"
    # what `pip install .` needs is copied
    copied = {w.rstrip("/") for args in copies for w in shlex.split(args)[:-1]}
    assert {"pyproject.toml", "README.md", "splitnn", "services", "orchestrator"} <= copied
    # the config docker-compose.yml's orchestrator runs by default is in the image
    assert "examples" in copied


def test_commands_name_the_console_scripts():
    scripts = _console_scripts()
    assert scripts == {"splitnn", "splitnn-worker"}
    ops = dict(_instructions())
    cmd = _exec_words(ops["CMD"])
    assert cmd[0] == "splitnn-worker", "the default command runs a worker"
    assert "--listen" in cmd and cmd[cmd.index("--listen") + 1].endswith(":50051")
    assert "ENTRYPOINT" not in ops or _exec_words(ops["ENTRYPOINT"])[0] in scripts
    health = ops["HEALTHCHECK"]
    probe = _exec_words(health.split(" CMD ", 1)[1])
    assert probe[:3] == ["splitnn", "health", "127.0.0.1:50051"], probe


def test_torch_variant_and_user():
    instructions = _instructions()
    args = [a for op, a in instructions if op == "ARG"]
    assert "TORCH_VARIANT=cpu" in args
    runs = " ".join(a for op, a in instructions if op == "RUN")
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in runs
    assert "pip install ." in runs
    assert runs.index("download.pytorch.org") < runs.index("pip install ."), "torch first"
    users = [a for op, a in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "run as a non-root user"


def test_dockerignore():
    lines = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"} <= lines


@pytest.fixture(scope="module")
def compose():
    pytest.importorskip("yaml")
    return load_compose({})


def test_compose_services(compose):
    services = compose["services"]
    assert set(services) == {*WORKERS, "orchestrator"}
    scripts = _console_scripts()
    for name in WORKERS:
        words = command_words(services[name]["command"])
        assert words[0] == "splitnn-worker" and words[0] in scripts
        assert words[words.index("--name") + 1] == name
        assert words[words.index("--listen") + 1] == "0.0.0.0:50051"
        assert "--insecure" in words, f"{name}: plaintext on compose's network, said explicitly"
        assert services[name]["healthcheck"]["test"][1:4] == [
            "splitnn",
            "health",
            "127.0.0.1:50051",
        ]


def test_each_worker_mounts_only_its_own_data(compose):
    services = compose["services"]
    for name in WORKERS:
        volumes = [parse_volume(v) for v in services[name].get("volumes", [])]
        assert volumes == [(f"./data/{name}", "/data", True)], f"{name}: {volumes}"
        others = [o for o in WORKERS if o != name]
        assert not any(o in str(services[name]) for o in others), f"{name} mentions another owner"


def test_orchestrator_waits_for_healthy_workers(compose):
    orchestrator = compose["services"]["orchestrator"]
    depends = orchestrator["depends_on"]
    assert {n: depends[n]["condition"] for n in depends} == dict.fromkeys(
        WORKERS, "service_healthy"
    )
    words = command_words(orchestrator["command"])
    assert words[:2] == ["splitnn", "train"]
    assert words[words.index("--out") + 1] == "/results"
    assert ("./results", "/results", False) in [parse_volume(v) for v in orchestrator["volumes"]]
    config = load_config(ROOT / words[2])
    assert words[2] == "examples/compose_seed.toml"
    assert {h: w.address for h, w in config.workers.items()} == {n: f"{n}:50051" for n in WORKERS}


def test_config_variable_picks_the_job():
    pytest.importorskip("yaml")
    env = {"SPLITNN_CONFIG": "examples/fashion_mnist_cnn_compose.toml"}
    words = command_words(load_compose(env)["services"]["orchestrator"]["command"])
    assert words[2] == env["SPLITNN_CONFIG"]


@pytest.mark.parametrize("name", ["compose_seed.toml", "three_machines.toml"])
def test_example_is_the_seed_job_elsewhere(name):
    seed = tomllib.loads((ROOT / "examples" / "seed.toml").read_text())
    other = tomllib.loads((ROOT / "examples" / name).read_text())
    assert {k: v for k, v in other.items() if k != "workers"} == {
        k: v for k, v in seed.items() if k != "workers"
    }
    addresses = {h: w.address for h, w in load_config(ROOT / "examples" / name).workers.items()}
    assert set(addresses) == set(WORKERS)
    assert not any(a.startswith(("127.", "localhost")) for a in addresses.values())


def test_compose_validates_with_docker_compose():
    """A real compose implementation reads the file (no engine needed for `config`)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    result = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings either


@pytest.mark.parametrize(
    "name", ["compose_seed.toml", "fashion_mnist_cnn_compose.toml", "splitfed_compose.toml"]
)
def test_compose_configs_address_the_services(name):
    path = ROOT / "examples" / name
    if not path.exists():
        pytest.skip(f"{name} not written yet")
    compose_text = (ROOT / "docker-compose.yml").read_text()
    assert f"examples/{name}" in compose_text, "docker-compose.yml tells how to run it"
    config = load_config(path)
    assert {h: w.address for h, w in config.workers.items()} == {n: f"{n}:50051" for n in WORKERS}
    # the datasets it trains on are the ones the compose comment has the workers serve
    served = set(re.findall(r"--data (\w+)=/data/", compose_text)) | {"toy"}
    assert {config.dataset, config.test_dataset} - {None} <= served
