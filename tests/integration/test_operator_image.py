"""The operator image: one definition behind both builds, and the local build's root filesystem.

deploy/Dockerfile and cluster/image.sh (localhost/celery-operator/operator:dev) must run the same
steps (images/operator/install.sh) and declare the same runtime (images/operator/config.json).
The local build is then unpacked and run the way the Deployment runs it: as 10001:10001 on a
read-only root filesystem with an empty /tmp, where it must hold exactly deploy/requirements.txt.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "operator"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
REQUIREMENTS = ROOT / "deploy" / "requirements.txt"
CONFIG = json.loads((RECIPE / "config.json").read_text())
IMAGE_SH = ROOT / "cluster" / "image.sh"
BUILD_TIMEOUT_S = 420  # a cold build (debootstrap + pip) measured 73 s here
RUN_TIMEOUT_S = 60
USER = "10001:10001"
INSTALL_STEPS = ("user", "deps", "package")
# Installed in the venv beside the lock: Debian's pip (python3 -m venv), and the operator itself.
NOT_IN_THE_LOCK = {"pip", "celery-operator"}
# The interpreter's view of the image, for the lock's environment markers and for the checks.
PROBE = """
import importlib.metadata, json, os, sys
from packaging.markers import default_environment
print(json.dumps({
    "dists": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()},
    "marker_env": default_environment(),
    "ids": [os.getuid(), os.getgid(), os.getgroups()],
    "executable": sys.executable,
    "home": os.environ.get("HOME"),
}))
"""


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in joined.splitlines())
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def dockerfile(instruction: str) -> list[str]:
    return [args for name, args in dockerfile_instructions() if name == instruction]


def copied_to(source: str) -> str:
    """Where the Dockerfile's COPY puts the repository's ``source``, as an absolute path."""
    for args in dockerfile("COPY"):
        *sources, dest = args.split()
        if source in sources:
            return dest + Path(source).name if dest.endswith("/") else dest
    raise AssertionError(f"deploy/Dockerfile copies no {source}")


def test_the_dockerfile_runs_every_install_step_of_the_shared_script() -> None:
    script = copied_to("images/operator/install.sh")
    commands = [
        shlex.split(command)
        for run in dockerfile("RUN")
        for command in re.split(r"&&|;", run)
        if command.strip()
    ]
    steps = [command[1] for command in commands if command[0] == script]
    assert steps == list(INSTALL_STEPS), f"deploy/Dockerfile must RUN {script} {INSTALL_STEPS}"
    deps = next(command for command in commands if command[:2] == [script, "deps"])
    assert deps[2] == copied_to("deploy/requirements.txt")


def test_the_local_build_runs_every_install_step_of_the_shared_script() -> None:
    local = (RECIPE / "base.sh").read_text() + IMAGE_SH.read_text()
    for step in INSTALL_STEPS:
        assert re.search(rf"/install\.sh {step}\b", local), f"no install.sh {step} in the build"
    assert "deploy/requirements.txt" in (RECIPE / "base.sh").read_text()


def test_both_builds_install_the_same_debian_packages() -> None:
    (base,) = dockerfile("FROM")
    assert base.startswith("debian:bookworm")
    assert re.search(r"debootstrap .*\bbookworm\b", (RECIPE / "base.sh").read_text())
    packages = copied_to("images/operator/packages.txt")
    assert any(packages in run and "apt-get install" in run for run in dockerfile("RUN"))


def test_the_dockerfile_declares_the_local_images_runtime() -> None:
    (env,) = dockerfile("ENV")
    assert shlex.split(env) == CONFIG["Env"]
    assert dockerfile("USER") == [CONFIG["User"]] == [USER]
    assert dockerfile("WORKDIR")[-1] == CONFIG["WorkingDir"]
    assert [json.loads(args) for args in dockerfile("ENTRYPOINT")] == [CONFIG["Entrypoint"]]
    assert [json.loads(args) for args in dockerfile("CMD")] == [CONFIG["Cmd"]]
    exposed = {f"{port}/tcp" for args in dockerfile("EXPOSE") for port in args.split()}
    assert exposed == set(CONFIG["ExposedPorts"])


def test_the_entrypoint_needs_no_shell() -> None:
    program, *_ = CONFIG["Entrypoint"]
    assert program == "/opt/venv/bin/python"  # exec form with an absolute path: no PATH lookup
    assert "PYTHONDONTWRITEBYTECODE=1" in CONFIG["Env"]


@pytest.fixture(scope="module")
def image_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local build's layers (built when missing) unpacked in order into one directory,
    removed afterwards (350 MB, which pytest would keep for three runs)."""
    built = subprocess.run(
        [str(IMAGE_SH), "layers", "operator"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    config, *layers = built.stdout.split()
    assert Path(config) == RECIPE / "config.json"
    rootfs = tmp_path_factory.mktemp("operator-image") / "rootfs"
    rootfs.mkdir(mode=0o755)
    rootfs.chmod(0o755)  # the layers have no entry for / itself; mkdir honours the umask
    for layer in layers:
        with tarfile.open(layer) as tar:
            tar.extractall(rootfs, filter="fully_trusted")  # our own layers, as root: owners kept
    yield rootfs
    shutil.rmtree(rootfs)


def run_in_image(rootfs: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` inside the image as the Deployment runs it: the image's user and env, the
    root read-only (a bind mount in a private mount namespace) and /tmp an empty tmpfs."""
    root = shlex.quote(str(rootfs))
    mounts = (
        f"mount --bind {root} {root} && mount -o remount,bind,ro {root} "
        f"&& mount -t tmpfs -o size=64m,mode=1777 tmpfs {root}/tmp"
    )
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{mounts} && exec chroot --userspec={USER} --groups= {root} "$@"',
            "sh",
            *command,
        ],
        env=dict(entry.split("=", 1) for entry in CONFIG["Env"]),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def locked_pins(marker_env: dict[str, str]) -> dict[str, str]:
    """deploy/requirements.txt's ``name==version`` whose markers hold in ``marker_env``."""
    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", line)
        if match:
            name, version, marker = match.groups()
            if marker is None or Marker(marker).evaluate(marker_env):
                pins[str(canonicalize_name(name))] = version
    return pins


def test_the_image_runs_the_operator_as_10001_on_a_read_only_root(image_rootfs: Path) -> None:
    result = run_in_image(image_rootfs, *CONFIG["Entrypoint"], "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: celery-operator"), result.stdout
    assert result.stderr == ""


def test_the_image_holds_exactly_the_locked_dependencies(image_rootfs: Path) -> None:
    python = CONFIG["Entrypoint"][0]
    result = run_in_image(image_rootfs, python, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    assert seen["ids"] == [10001, 10001, []]
    assert seen["executable"] == "/opt/venv/bin/python"
    assert seen["home"] == "/tmp"
    installed = {str(canonicalize_name(name)): str(v) for name, v in seen["dists"].items()}
    extra = {name: installed.pop(name, None) for name in NOT_IN_THE_LOCK}
    assert installed == locked_pins(seen["marker_env"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extra["celery-operator"] == project["version"]
    assert extra["pip"] is not None


def test_the_user_can_write_nothing_in_the_image(image_rootfs: Path) -> None:
    """Safe even without readOnlyRootFilesystem: 10001 owns nothing, and no file or directory is
    world-writable but the sticky temporary directories (/tmp, /var/tmp, /run/lock)."""
    writable = []
    for directory, dirs, files in os.walk(image_rootfs):
        for name in dirs + files:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                continue  # links have no mode of their own; /dev's nodes are meant for all
            sticky_dir = stat.S_ISDIR(mode) and mode & stat.S_ISVTX
            if path.lstat().st_uid == 10001 or (mode & stat.S_IWOTH and not sticky_dir):
                writable.append(str(path.relative_to(image_rootfs)))
    assert writable == []


def test_the_byte_code_is_valid_without_source_times(image_rootfs: Path) -> None:
    """Every .pyc of the venv and the standard library is hash-based and unchecked: the layers'
    mtimes are clamped to 0, so a timestamp .pyc would be stale and recompiled at every start
    (in memory only: the root is read-only)."""
    stale = []
    for tree in ("opt/venv", "usr/lib/python3.11"):
        for pyc in (image_rootfs / tree).rglob("*.pyc"):
            with pyc.open("rb") as f:
                flags = int.from_bytes(f.read(8)[4:8], "little")
            if flags != 0b01:  # hash-based (bit 0), check_source off (bit 1)
                stale.append(str(pyc.relative_to(image_rootfs)))
    assert stale == [], f"{len(stale)} checked .pyc files, first {stale[:5]}"
