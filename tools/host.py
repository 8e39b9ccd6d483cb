#!/usr/bin/env python3
"""Build, start and stop a real WebUI host for the live and browser test tiers (standard library only).

    python3 tools/host.py build a1111     # idempotent: a second run checks the build and returns
    python3 tools/host.py start a1111     # prints the base URL; waits until the model is loaded
    python3 tools/host.py stop a1111
    python3 tools/host.py status a1111
    python3 tools/host.py path a1111      # the host's folder
    python3 tools/host.py log a1111       # the running host's log file

Hosts: ``a1111`` (AUTOMATIC1111 v1.10.1, tiny checkpoints), ``forge`` (Forge dfdcbab, full-size random SD1.5
checkpoints from ``tests/webui/full_models.py``, since Forge recognises models by tensor shapes; ready once its API
answers, because Forge loads the checkpoint at the first generation) and ``reforge`` (reForge 3b56b26, the same
full-size checkpoints; ready once its startup model load is logged). ``start forge`` and ``start reforge`` also install
the test-only probe extension (``tests/webui/probe``) beside this one; ``--no-probe`` / ``--probe`` override the host's
default.

Environment: ``VPRED_<HOST>_PORT`` (``VPRED_A1111_PORT``, default 7860; ``VPRED_FORGE_PORT``, default 7861;
``VPRED_REFORGE_PORT``, default 7863) to run a second instance beside the first; ``VPRED_MODELS_DIR`` for the tiny
checkpoints (default ``<host>/tiny-models``); ``VPRED_FULL_MODELS_DIR`` for the full-size ones (default ``<hosts>/full-models``, shared by the hosts that use them).

A host is a real, unmodified WebUI at a pinned commit, with the repositories it pins, its own venv (the pinned torch
2.14.1 / torchvision 0.29.1 pair and the WebUI's ``requirements_versions.txt`` with only the changes listed in
``Host.requirements``), and the tiny test checkpoints from ``tests/webui/tiny_models.py``. Each start gets a fresh
``--data-dir`` (``instances/<port>``: config, outputs, extensions) and this checkout copied into its
``extensions/sd-webui-vpred`` (tracked and untracked-not-ignored files, as a clone has them).
Checkpoints are generated once (again when their generator script changes), with the host's own venv.

Sources, in this order:
1. ``VPRED_HOST_SOURCES``: a folder of source tarballs (the layout of ``../shared/hosts``: ``<name>-<commit[:10]>.tar.gz``);
2. ``../shared/hosts`` beside this repository, when it exists;
3. otherwise GitHub: ``git clone`` of the same repositories, checked out at the same commits (``VPRED_GIT_BASE``
   replaces ``https://github.com``, e.g. for a mirror).
Every tarball's sha256 and every clone's commit is verified against the table below before anything is built.

Where: ``VPRED_HOSTS_DIR`` (default ``~/sd-webui-vpred-hosts``), one folder per host. It must lie outside this
repository (the WebUI runs ``git describe`` for its version; inside a checkout it would see this repository's git),
and no folder on its path may start with a dot: gradio refuses to serve any file below a dot-folder (HTTP 403), so a
WebUI under ``~/.cache`` loads no JavaScript or CSS at all.
The WebUI runs offline on CPU, bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_SOURCES = REPO.parent / "shared" / "hosts"
TINY_MODELS = REPO / "tests" / "webui" / "tiny_models.py"
FULL_MODELS = REPO / "tests" / "webui" / "full_models.py"
PROBE = REPO / "tests" / "webui" / "probe"
#: Bump when the build recipe changes in a way that needs a rebuild of existing hosts.
RECIPE_VERSION = 1

TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "PYTHONUNBUFFERED": "1",
    "COMMANDLINE_ARGS": "",
}


@dataclass(frozen=True)
class Source:
    """One pinned source tree: its tarball name in the sources folder, its GitHub repository and commit."""

    name: str
    github: str
    commit: str
    sha256_prefix: str
    #: where it goes, relative to the host root ("" for the root itself); None: installed with pip from its folder
    dest: str | None

    @property
    def tarball(self) -> str:
        return f"{self.name}-{self.commit[:10]}.tar.gz"


ASSETS = Source(
    "stable-diffusion-webui-assets",
    "AUTOMATIC1111/stable-diffusion-webui-assets",
    "6f7db241d2f8ba7457bac5ca9753331f0c266917",
    "69bb0c123841f27f",
    "repositories/stable-diffusion-webui-assets",
)
BLIP = Source(
    "BLIP",
    "salesforce/BLIP",
    "48211a1594f1321b00f14c9f7a5b4813144b2fb9",
    "4e879587d88fae35",
    "repositories/BLIP",
)
A1111_REPOSITORIES = (
    ASSETS,
    Source(
        "stable-diffusion-stability-ai",
        "Stability-AI/stablediffusion",
        "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
        "d8eea58c87d2d648",
        "repositories/stable-diffusion-stability-ai",
    ),
    Source(
        "generative-models",
        "Stability-AI/generative-models",
        "45c443b316737a4ab6e40413d7794a7f5657c19f",
        "8e897929ffc29887",
        "repositories/generative-models",
    ),
    Source(
        "k-diffusion",
        "crowsonkb/k-diffusion",
        "ab527a9a6d347f364e3d185ba6d714e22d80cb3c",
        "9976be20dba3129a",
        "repositories/k-diffusion",
    ),
    BLIP,
)
#: the repositories Forge's ``prepare_environment`` clones (``modules/launch_utils.py``: assets, huggingface_guess and
#: BLIP; stablediffusion, generative-models and k-diffusion are commented out there, k_diffusion is vendored)
FORGE_REPOSITORIES = (
    ASSETS,
    Source(
        "huggingface_guess",
        "lllyasviel/huggingface_guess",
        "84826248b49bb7ca754c73293299c4d4e23a548d",
        "c1be16a255e38e10",
        "repositories/huggingface_guess",
    ),
    BLIP,
)
#: openai CLIP at the commit A1111's prepare_environment installs (k_diffusion/evaluation.py imports ``clip``)
OPENAI_CLIP = Source(
    "openai-clip", "openai/CLIP", "d50d76daa670286dd6cacf3bcd80b5e4823fc8e1", "60da9e04a801e76b", None
)


@dataclass(frozen=True)
class Host:
    """A WebUI flavour: its sources, its requirement changes and how it is launched."""

    key: str
    title: str
    root: Source
    sources: tuple[Source, ...]
    port: int
    launch_args: tuple[str, ...]
    #: (pattern, replacement-or-None) applied line by line to requirements_versions.txt: None drops the line
    requirement_edits: tuple[tuple[str, str | None], ...] = ()
    extra_requirements: tuple[str, ...] = ()
    #: log lines that mean the host is ready / failed to load its model; no ready mark: ready once the API answers
    #: (a host that loads its model lazily, at the first generation)
    ready_marks: tuple[str, ...] = ("Model loaded in",)
    failure_marks: tuple[str, ...] = ("Stable diffusion model failed to load",)
    #: which test checkpoints it runs: "tiny" (``tiny_models.py``) or "full" (full-size SD1.5, ``full_models.py``)
    models: str = "tiny"
    startup_checkpoint: str = "tiny-eps.safetensors"
    #: gradio 4 serves only files below its allowed paths, which default to the data dir alone: with ``--data-dir``
    #: elsewhere the host's own script.js and javascript/ would answer 403. The flag that adds the host root, or None.
    allow_root_flag: str | None = None
    #: install the test-only probe extension (``tests/webui/probe``) beside this one by default
    probe: bool = False
    env: dict[str, str] = field(default_factory=dict)
    #: single files taken from another pinned source: (source, path inside it, destination below the host root)
    files: tuple[tuple[Source, str, str], ...] = ()

    def requirements(self, text: str) -> list[str]:
        """The host's ``requirements_versions.txt`` with this project's changes (CRLF-safe), plus the torch pins."""
        out: list[str] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            name = line.split("#", 1)[0].strip()
            for pattern, replacement in self.requirement_edits:
                if name == pattern or name.startswith(pattern + "=="):
                    line = replacement
                    break
            if line:
                out.append(line)
        return [*out, *TORCH_PINS, *self.extra_requirements]


A1111 = Host(
    key="a1111",
    title="AUTOMATIC1111 WebUI v1.10.1",
    root=Source(
        "a1111-webui",
        "kklouzal/stable-diffusion-webui",
        "82a973c04367123ae98bd9abdf80d9eda9b910e2",
        "73b37644f70f7063",
        "",
    ),
    sources=(*A1111_REPOSITORIES, OPENAI_CLIP),
    port=7860,
    launch_args=(
        "--skip-prepare-environment",
        "--skip-install",
        "--no-download-sd-model",
        "--do-not-download-clip",
        "--use-cpu",
        "all",
        "--no-half",
        "--precision",
        "full",
        "--api",
        "--skip-torch-cuda-test",
        "--skip-version-check",
    ),
    requirement_edits=(
        # torch 2.14 declares setuptools>=77.0.3; with the old pin pip backtracks through every older torch.
        # <81 keeps pkg_resources (lightning_fabric and openai clip import it).
        ("setuptools", "setuptools>=77.0.3,<81"),
        # unpinned in the WebUI; pinned below to the pair this project tests with
        ("torch", None),
    ),
)

#: Forge and reForge start the same way: CPU only, offline, with the HTTP API.
PATCHER_LAUNCH_ARGS = (
    "--skip-prepare-environment",
    "--skip-install",
    "--always-cpu",
    "--api",
    "--skip-version-check",
    "--no-download-sd-model",
)

FORGE = Host(
    key="forge",
    title="Stable Diffusion WebUI Forge (dfdcbab)",
    root=Source(
        "forge-webui",
        "lllyasviel/stable-diffusion-webui-forge",
        "dfdcbab685e57677014f05a3309b48cc87383167",
        "31c5cba9e208e10e",
        "",
    ),
    sources=FORGE_REPOSITORIES,
    port=7861,
    launch_args=PATCHER_LAUNCH_ARGS,
    requirement_edits=A1111.requirement_edits,
    # the built-in soft-inpainting script imports joblib (else "Error loading script: soft_inpainting.py")
    extra_requirements=("joblib",),
    # Forge loads the checkpoint at the first generation, not at startup
    ready_marks=(),
    failure_marks=(),
    # Forge recognises checkpoints by tensor shapes (huggingface_guess): shrunken models fail to load
    models="full",
    startup_checkpoint="sd15-eps.safetensors",
    allow_root_flag="--gradio-allowed-path",
    probe=True,
)

#: reForge's ``requirements_versions.txt`` installs pydantic 1.10.15 as a wheel from a GitHub release of its own fork
REFORGE_PYDANTIC_WHEEL = (
    "https://github.com/Panchovix/pydantic-fixreforge/releases/download/main_v1/pydantic-1.10.15-py3-none-any.whl"
)

REFORGE = Host(
    key="reforge",
    title="Stable Diffusion WebUI reForge (3b56b26)",
    root=Source(
        "reforge-webui",
        "Panchovix/stable-diffusion-webui-reForge",
        "3b56b268ad9158ee8b30900973b6ccda4ec22241",
        "a8db6a9a6232a822",
        "",
    ),
    # the five repositories of reForge's launch_utils.py. It pins a stablediffusion fork (joypaul162, f16630a9); the
    # Stability-AI commit A1111 pins is its upstream and works for SD1.5. openai CLIP is required: reForge's default
    # sampling imports k_diff.k_diffusion, which imports ``clip``.
    sources=(*A1111_REPOSITORIES, OPENAI_CLIP),
    port=7863,
    launch_args=PATCHER_LAUNCH_ARGS,
    requirement_edits=(
        *A1111.requirement_edits,
        # the same version from PyPI (the machines that build hosts reach PyPI, not GitHub)
        (REFORGE_PYDANTIC_WHEEL, "pydantic==1.10.15"),
    ),
    # reForge loads --ckpt at startup: "Model sd15-eps.safetensors [b146b6f363] loaded in 11.5s (...)." (its
    # "Loading model sd15-eps.safetensors [b146b6f363] (1 of 1)" comes before the load)
    ready_marks=("] loaded in ",),
    failure_marks=("Stable diffusion model failed to load", "Error: Model failed to load"),
    # reForge recognises checkpoints by tensor shapes (ldm_patched model detection): shrunken models fail to load
    models="full",
    startup_checkpoint="sd15-eps.safetensors",
    probe=True,
    # live previews (on by default) need the SD1 "Approx NN" decoder, which reForge's tree lacks and would download
    # at the first generation (offline: HTTP 500); A1111 v1.10.1 ships the same file
    files=((A1111.root, "models/VAE-approx/model.pt", "models/VAE-approx/model.pt"),),
)

HOSTS = {h.key: h for h in (A1111, FORGE, REFORGE)}


def log(msg: str) -> None:
    print(f"[host] {msg}", file=sys.stderr, flush=True)


class HostError(RuntimeError):
    """A host could not be built or started; the message says what to do."""


def hosts_dir() -> Path:
    base = os.environ.get("VPRED_HOSTS_DIR")
    path = (Path(base).expanduser() if base else Path.home() / "sd-webui-vpred-hosts").resolve()
    if path == REPO or REPO in path.parents:
        raise HostError(f"VPRED_HOSTS_DIR={path} is inside this repository; put the hosts outside it")
    if any(part.startswith(".") for part in path.parts):
        raise HostError(
            f"hosts folder {path} has a dot-folder on its path: gradio would refuse to serve the WebUI's files (403); "
            "set VPRED_HOSTS_DIR to a path without one"
        )
    return path


def host_dir(host: Host) -> Path:
    return hosts_dir() / host.key


def sources_dir() -> Path | None:
    """The folder of source tarballs to build from, or None for GitHub."""
    given = os.environ.get("VPRED_HOST_SOURCES")
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise HostError(f"VPRED_HOST_SOURCES={given} is not a folder")
        return path
    return SHARED_SOURCES if SHARED_SOURCES.is_dir() else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def unpack(src: Source, folder: Path, dest: Path) -> None:
    """Unpack a verified tarball (one top-level folder) into ``dest``."""
    tarball = folder / src.tarball
    if not tarball.is_file():
        raise HostError(f"{tarball} is missing (expected {src.github}@{src.commit})")
    digest = sha256(tarball)
    if not digest.startswith(src.sha256_prefix):
        raise HostError(f"{tarball}: sha256 {digest[:16]} is not the expected {src.sha256_prefix} ({src.github})")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
        (top,) = list(Path(tmp).iterdir())
        if dest.exists():
            # the root folder may already hold what was placed before (venv): merge into it
            for item in top.iterdir():
                target = dest / item.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
                shutil.move(str(item), target)
        else:
            shutil.move(str(top), dest)


def clone(src: Source, dest: Path) -> None:
    """Clone ``src`` from GitHub at its pinned commit and verify it."""
    url = f"{os.environ.get('VPRED_GIT_BASE', 'https://github.com').rstrip('/')}/{src.github}.git"
    tmp = dest.with_name(dest.name + ".clone")
    shutil.rmtree(tmp, ignore_errors=True)
    run(["git", "clone", "-q", "--filter=blob:none", "--no-checkout", url, str(tmp)])
    run(["git", "-C", str(tmp), "checkout", "-q", src.commit])
    head = subprocess.run(
        ["git", "-C", str(tmp), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if head != src.commit:
        raise HostError(f"{url}: checked out {head}, expected {src.commit}")
    if dest.exists():
        for item in tmp.iterdir():
            target = dest / item.name
            if not target.exists():
                shutil.move(str(item), target)
        shutil.rmtree(tmp)
    else:
        tmp.rename(dest)


def extract_file(src: Source, path: str, folder: Path, dest: Path) -> None:
    """Copy one file out of a verified tarball (``<top>/<path>``) to ``dest``."""
    tarball = folder / src.tarball
    if not tarball.is_file():
        raise HostError(f"{tarball} is missing (expected {src.github}@{src.commit}, for its {path})")
    digest = sha256(tarball)
    if not digest.startswith(src.sha256_prefix):
        raise HostError(f"{tarball}: sha256 {digest[:16]} is not the expected {src.sha256_prefix} ({src.github})")
    with tarfile.open(tarball) as tar:
        for member in tar:
            if member.isfile() and member.name.split("/", 1)[-1] == path:
                data = tar.extractfile(member).read()
                break
        else:
            raise HostError(f"{tarball} has no {path}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def git_file(src: Source, path: str, dest: Path) -> None:
    """Copy one file of ``src`` at its pinned commit from GitHub (a blobless clone fetches only that file's blob)."""
    url = f"{os.environ.get('VPRED_GIT_BASE', 'https://github.com').rstrip('/')}/{src.github}.git"
    with tempfile.TemporaryDirectory() as tmp:
        run(["git", "clone", "-q", "--filter=blob:none", "--no-checkout", url, tmp])
        data = subprocess.run(
            ["git", "-C", tmp, "show", f"{src.commit}:{path}"], check=True, capture_output=True
        ).stdout
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def fetch_file(src: Source, path: str, folder: Path | None, dest: Path) -> None:
    if folder is not None:
        extract_file(src, path, folder, dest)
    else:
        git_file(src, path, dest)


def fetch_source(src: Source, folder: Path | None, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if folder is not None:
        unpack(src, folder, dest)
    else:
        clone(src, dest)


def recipe(host: Host) -> dict:
    """What a finished build was made from; a build whose stamp differs is rebuilt."""
    stamp = {
        "recipe": RECIPE_VERSION,
        "host": host.key,
        "sources": {s.name: s.commit for s in (host.root, *host.sources)},
        "edits": [list(e) for e in host.requirement_edits],
        "extra": list(host.extra_requirements),
        "torch": list(TORCH_PINS),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    if host.files:  # only where there are any: the stamps of hosts without them stay as they were
        stamp["files"] = [[src.name, src.commit, path, dest] for src, path, dest in host.files]
    return stamp


def stamp_path(host: Host) -> Path:
    return host_dir(host) / ".vpred-host.json"


def is_built(host: Host) -> bool:
    stamp = stamp_path(host)
    if not stamp.is_file():
        return False
    try:
        data = json.loads(stamp.read_text())
    except ValueError:
        return False
    if data != recipe(host):
        return False
    py = host_dir(host) / "venv" / "bin" / "python"
    if not py.is_file():
        return False
    check = subprocess.run([str(py), "-c", "import torch, gradio, safetensors"], capture_output=True)
    return check.returncode == 0


def pip(py: Path, *args: str) -> None:
    """``pip install`` into the host's venv; drops only the notices some machines print for absent local indexes."""
    cmd = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        if "is ignored: it is neither a file nor a directory" not in line:
            print(line, file=sys.stderr)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, cmd)


def build(host: Host) -> Path:
    root = host_dir(host)
    if is_built(host):
        log(f"{host.title} is built at {root}")
        return root
    folder = sources_dir()
    log(f"building {host.title} at {root} from {folder or 'GitHub'}")
    if root.exists():
        log(f"removing the incomplete or outdated build at {root}")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fetch_source(host.root, folder, root)
    piped: list[Path] = []
    for src in host.sources:
        dest = root / src.dest if src.dest is not None else root / "vpred-build" / src.name
        fetch_source(src, folder, dest)
        if src.dest is None:
            piped.append(dest)
    for src, path, dest_path in host.files:
        fetch_file(src, path, folder, root / dest_path)
    py_exe = shutil.which("python3.11") or sys.executable
    run([py_exe, "-m", "venv", str(root / "venv")])
    py = root / "venv" / "bin" / "python"
    reqs = host.requirements((root / "requirements_versions.txt").read_text(encoding="utf-8"))
    req_file = root / "vpred-build" / "requirements.txt"
    req_file.parent.mkdir(parents=True, exist_ok=True)
    req_file.write_text("\n".join(reqs) + "\n")
    pip(py, *TORCH_PINS)
    pip(py, "-r", str(req_file))
    for folder_path in piped:
        # setup.py-only packages: build with the venv's own setuptools
        pip(py, "--no-build-isolation", "--no-deps", str(folder_path))
    run([str(py), "-m", "pip", "check"])
    stamp_path(host).write_text(json.dumps(recipe(host), indent=2) + "\n")
    log(f"built {host.title} in {time.monotonic() - started:.0f} s")
    return root


# --- tiny checkpoints --------------------------------------------------------------------------------------------


def models_dir(host: Host) -> Path:
    given = os.environ.get("VPRED_MODELS_DIR")
    return Path(given).expanduser().resolve() if given else host_dir(host) / "tiny-models"


def full_models_dir() -> Path:
    """Where the full-size SD1.5 checkpoints go: one folder shared by every host that needs them (2 GB each)."""
    given = os.environ.get("VPRED_FULL_MODELS_DIR")
    return Path(given).expanduser().resolve() if given else hosts_dir() / "full-models"


def ensure_models(host: Host) -> Path:
    """Generate the host's test checkpoints with its own venv (again whenever the generator script changes)."""
    if host.models == "full":
        return ensure_full_models(host)
    out = models_dir(host)
    want = sha256(TINY_MODELS)
    stamp = out / ".tiny_models.sha256"
    if stamp.is_file() and stamp.read_text().strip() == want:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    py = host_dir(host) / "venv" / "bin" / "python"
    run([str(py), str(TINY_MODELS), str(out), "--webui", str(host_dir(host))])
    stamp.write_text(want + "\n")
    return out


def ensure_full_models(host: Host) -> Path:
    """The full-size random-weight SD1.5 checkpoints (``full_models.py``), generated once into the shared folder."""
    out = full_models_dir()
    want = sha256(FULL_MODELS)
    stamp = out / ".full_models.sha256"
    if stamp.is_file() and stamp.read_text().strip() == want:
        return out
    # no rmtree: the folder may be shared (or given); the generator replaces its own files atomically
    stamp.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    py = host_dir(host) / "venv" / "bin" / "python"
    run([str(py), str(FULL_MODELS), str(out)])
    stamp.write_text(want + "\n")
    return out


# --- start / stop ------------------------------------------------------------------------------------------------


def pid_file(host: Host) -> Path:
    return host_dir(host) / f"vpred-live-{port(host)}.pid"


def log_file(host: Host) -> Path:
    """The running host's log (one per port, so that two instances of one host can run side by side)."""
    return host_dir(host) / f"vpred-live-{port(host)}.log"


def url(host: Host) -> str:
    return f"http://127.0.0.1:{port(host)}"


def port(host: Host) -> int:
    return int(os.environ.get(f"VPRED_{host.key.upper()}_PORT", host.port))


def running_pid(host: Host) -> int | None:
    try:
        pid = int(pid_file(host).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def extension_files() -> list[Path]:
    """This checkout's files as a user's clone would have them: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:  # not a git checkout (an unpacked archive): everything but caches and environments
        skip = {".git", ".venv", "out", "__pycache__", ".pytest_cache", ".ruff_cache"}
        names = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)
        ]
    return [Path(n) for n in names if (REPO / n).is_file()]


def instance_dir(host: Host) -> Path:
    """This instance's ``--data-dir`` (extensions, config.json, ui-config.json, outputs), new at every start: each run
    starts from the WebUI's defaults, and two instances on two ports share nothing but the read-only install."""
    return host_dir(host) / "instances" / str(port(host))


def install_extension(host: Host, enabled: bool, probe: bool = False) -> None:
    """Install this checkout into the instance's ``extensions/sd-webui-vpred`` as a copy, like a user's clone (a
    symlink out of the WebUI folder would make gradio refuse to serve the extension's JavaScript and CSS); with
    ``probe``, the test-only probe extension (``tests/webui/probe``) into ``extensions/vpred-probe`` beside it."""
    data = instance_dir(host)
    shutil.rmtree(data, ignore_errors=True)
    dest = data / "extensions" / "sd-webui-vpred"
    dest.parent.mkdir(parents=True)
    if probe:
        shutil.copytree(PROBE, data / "extensions" / "vpred-probe", ignore=shutil.ignore_patterns("__pycache__"))
    if not enabled:
        return
    for name in extension_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def answers(address: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    host: Host,
    *,
    extension: bool = True,
    probe: bool | None = None,
    timeout: float = 600.0,
    extra_args: tuple[str, ...] = (),
) -> str:
    """Start the host in the background (its own process group), wait until it is ready (its model loaded, for a host
    that loads it at startup), return the URL. ``probe``: install the probe extension (default: ``host.probe``)."""
    if not is_built(host):
        raise HostError(f"{host.title} is not built: run `python3 tools/host.py build {host.key}`")
    if running_pid(host) is not None:
        raise HostError(
            f"{host.title} already runs (pid {running_pid(host)}): `python3 tools/host.py stop {host.key}`"
        )
    base = url(host)
    if answers(base + "/", timeout=2):
        raise HostError(f"something already listens on {base}")
    models = ensure_models(host)
    install_extension(host, extension, host.probe if probe is None else probe)
    root = host_dir(host)
    logpath = log_file(host)
    env = {**os.environ, **OFFLINE_ENV, **host.env}
    # The WebUI asks git for its version: never let it find a repository above the host folder.
    env["GIT_CEILING_DIRECTORIES"] = str(root.parent)
    cmd = [
        str(root / "venv" / "bin" / "python"),
        "launch.py",
        *host.launch_args,
        "--port",
        str(port(host)),
        "--ckpt-dir",
        str(models),
        "--ckpt",
        str(models / host.startup_checkpoint),
        "--data-dir",
        str(instance_dir(host)),
        # the WebUI's own models folder (VAE-approx for live previews ships there), not one inside the data dir
        "--models-dir",
        str(root / "models"),
        *((host.allow_root_flag, str(root)) if host.allow_root_flag else ()),
        *extra_args,
    ]
    log(f"starting {host.title}: {' '.join(cmd)}")
    with logpath.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file(host).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout

    def fail(why: str) -> None:
        stop(host)
        raise HostError(f"{host.title}: {why}\n--- last lines of {logpath} ---\n{tail(logpath)}")

    def wait(condition, what: str) -> None:
        while not condition():
            text = logpath.read_text(errors="replace")
            if any(mark in text for mark in host.failure_marks):
                fail("the model failed to load")
            if proc.poll() is not None:
                fail(f"exited with code {proc.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                fail(f"no {what} after {timeout:.0f} s")
            time.sleep(1)

    # The first HTTP request must wait for startup to finish: a request in the first seconds can kill it
    # ("Cannot add middleware after an application has started").
    wait(lambda: "Startup time" in logpath.read_text(errors="replace"), "'Startup time' in the log")
    wait(lambda: answers(base + "/sdapi/v1/sd-models"), "answer from /sdapi/v1/sd-models")
    if host.ready_marks:
        wait(lambda: any(m in logpath.read_text(errors="replace") for m in host.ready_marks), "model loaded")
    log(f"{host.title} ready at {base} (pid {proc.pid}, log {logpath})")
    return base


def peak_rss(pid: int) -> str:
    """The process's peak resident set size (``VmHWM``), for the README's memory figures; "?" where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return f"{int(line.split()[1]) / 2**20:.2f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def wait_for_exit(pid: int, seconds: float) -> bool:
    """Wait until ``pid`` is gone (reaping it when it is our own child); True when it is."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.25)
    return False


def stop(host: Host) -> None:
    pid = running_pid(host)
    if pid is None:
        pid_file(host).unlink(missing_ok=True)
        return
    log(f"stopping {host.title} (pid {pid}; peak RSS {peak_rss(pid)})")
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        if wait_for_exit(pid, grace):
            break
    pid_file(host).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "start", "stop", "status", "path", "log"))
    parser.add_argument("host", choices=sorted(HOSTS))
    parser.add_argument("--no-extension", action="store_true", help="start without this extension (a baseline)")
    probe = parser.add_mutually_exclusive_group()
    probe.add_argument("--probe", dest="probe", action="store_true", default=None, help="install the probe extension")
    probe.add_argument("--no-probe", dest="probe", action="store_false", help="start without the probe extension")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for startup")
    args = parser.parse_args(argv)
    host = HOSTS[args.host]
    try:
        if args.command == "build":
            build(host)
            ensure_models(host)
        elif args.command == "start":
            print(start(host, extension=not args.no_extension, probe=args.probe, timeout=args.timeout))
        elif args.command == "stop":
            stop(host)
        elif args.command == "status":
            pid = running_pid(host)
            print(f"built: {is_built(host)}; running: {pid or 'no'}; {host_dir(host)}")
        elif args.command == "log":
            print(log_file(host))
        else:
            print(host_dir(host))
    except (HostError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
