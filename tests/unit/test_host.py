"""The host builder's own logic (``tools/host.py``): requirement edits, source verification, where hosts may live.

The full build is proven by the live and browser tiers (``bash tools/dev.sh test`` builds a real WebUI with it); these
tests pin the parts a build from GitHub or a changed tarball would exercise, without the network: a clone is made
from a local repository through ``VPRED_GIT_BASE``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_host():
    spec = importlib.util.spec_from_file_location("vpred_host_tool", REPO / "tools" / "host.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


host = _load_host()

# v1.10.1's requirements_versions.txt starts like this, with CRLF line endings
REQUIREMENTS = (
    "setuptools==69.5.1  # temp fix for compatibility with some old packages\r\n"
    "GitPython==3.1.32\r\n"
    "gradio==3.41.2\r\n"
    "torch\r\n"
    "torchdiffeq==0.2.3\r\n"
    "\r\n"
)


def test_a1111_requirements_change_only_setuptools_and_torch():
    reqs = host.A1111.requirements(REQUIREMENTS)
    assert reqs == [
        "setuptools>=77.0.3,<81",
        "GitPython==3.1.32",
        "gradio==3.41.2",
        "torchdiffeq==0.2.3",
        "torch==2.14.1",
        "torchvision==0.29.1",
    ]


def test_a1111_pins_the_published_commits():
    """The commits A1111 v1.10.1 pins in modules/launch_utils.py (and the v1.10.1 tag commit itself)."""
    commits = {s.name: s.commit for s in (host.A1111.root, *host.A1111.sources)}
    assert commits["a1111-webui"] == "82a973c04367123ae98bd9abdf80d9eda9b910e2"
    assert commits["k-diffusion"] == "ab527a9a6d347f364e3d185ba6d714e22d80cb3c"
    assert commits["stable-diffusion-stability-ai"] == "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf"
    assert commits["generative-models"] == "45c443b316737a4ab6e40413d7794a7f5657c19f"
    assert commits["BLIP"] == "48211a1594f1321b00f14c9f7a5b4813144b2fb9"
    assert commits["stable-diffusion-webui-assets"] == "6f7db241d2f8ba7457bac5ca9753331f0c266917"


def test_a1111_recipe_is_unchanged():
    """The A1111 build stamp written before Forge was added must stay valid (else every A1111 host rebuilds)."""
    recipe = host.recipe(host.A1111)
    assert recipe == {
        "recipe": 1,
        "host": "a1111",
        "sources": {
            "a1111-webui": "82a973c04367123ae98bd9abdf80d9eda9b910e2",
            "stable-diffusion-webui-assets": "6f7db241d2f8ba7457bac5ca9753331f0c266917",
            "stable-diffusion-stability-ai": "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
            "generative-models": "45c443b316737a4ab6e40413d7794a7f5657c19f",
            "k-diffusion": "ab527a9a6d347f364e3d185ba6d714e22d80cb3c",
            "BLIP": "48211a1594f1321b00f14c9f7a5b4813144b2fb9",
            "openai-clip": "d50d76daa670286dd6cacf3bcd80b5e4823fc8e1",
        },
        "edits": [["setuptools", "setuptools>=77.0.3,<81"], ["torch", None]],
        "extra": [],
        "torch": ["torch==2.14.1", "torchvision==0.29.1"],
        "python": recipe["python"],
    }
    assert host.A1111.ready_marks == ("Model loaded in",)
    assert host.A1111.models == "tiny"
    assert not host.A1111.probe


def test_forge_requirements_and_sources():
    """Forge: A1111's two requirement edits plus joblib; only the three repositories its launch_utils clones."""
    reqs = host.FORGE.requirements(REQUIREMENTS)
    assert reqs == [
        "setuptools>=77.0.3,<81",
        "GitPython==3.1.32",
        "gradio==3.41.2",
        "torchdiffeq==0.2.3",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "joblib",
    ]
    commits = {s.name: s.commit for s in (host.FORGE.root, *host.FORGE.sources)}
    assert commits == {
        "forge-webui": "dfdcbab685e57677014f05a3309b48cc87383167",
        "stable-diffusion-webui-assets": "6f7db241d2f8ba7457bac5ca9753331f0c266917",
        "huggingface_guess": "84826248b49bb7ca754c73293299c4d4e23a548d",
        "BLIP": "48211a1594f1321b00f14c9f7a5b4813144b2fb9",
    }
    assert all(s.dest == f"repositories/{s.name}" for s in host.FORGE.sources)  # no pip-installed source (clip)
    recipe = host.recipe(host.FORGE)
    assert recipe["host"] == "forge"
    assert recipe["extra"] == ["joblib"]
    assert recipe["sources"] == commits


def test_forge_launch_and_readiness():
    """Forge loads its model lazily: ready once the API answers; full-size checkpoints; its own default port."""
    assert host.FORGE.ready_marks == ()
    assert host.FORGE.models == "full"
    assert host.FORGE.startup_checkpoint == "sd15-eps.safetensors"
    assert host.FORGE.probe
    assert host.FORGE.port != host.A1111.port
    for arg in ("--skip-prepare-environment", "--always-cpu", "--api", "--no-download-sd-model"):
        assert arg in host.FORGE.launch_args
    assert "--use-cpu" not in host.FORGE.launch_args  # A1111's spelling
    assert host.HOSTS["forge"] is host.FORGE


# reForge 3b56b26's requirements_versions.txt includes pydantic as a wheel from a GitHub release of its own fork
REFORGE_REQUIREMENTS = (
    "setuptools==69.5.1  # temp fix for compatibility with some old packages\r\n"
    "# mediapipe>=0.10.30\r\n"
    "gradio==3.41.2\r\n"
    "torch\r\n"
    "pillow-avif-plugin==1.4.6 \r\n"
    "https://github.com/Panchovix/pydantic-fixreforge/releases/download/main_v1/pydantic-1.10.15-py3-none-any.whl\r\n"
    "diffusers==0.32.2\r\n"
)


def test_reforge_requirements_take_pydantic_from_pypi():
    """reForge: A1111's two edits, and the same pydantic version from PyPI in place of the GitHub wheel."""
    reqs = host.REFORGE.requirements(REFORGE_REQUIREMENTS)
    assert reqs == [
        "setuptools>=77.0.3,<81",
        "# mediapipe>=0.10.30",
        "gradio==3.41.2",
        "pillow-avif-plugin==1.4.6",
        "pydantic==1.10.15",
        "diffusers==0.32.2",
        "torch==2.14.1",
        "torchvision==0.29.1",
    ]
    assert not any("github.com" in r for r in reqs)
    assert host.REFORGE_PYDANTIC_WHEEL.endswith("/pydantic-1.10.15-py3-none-any.whl")


def test_reforge_sources_and_recipe():
    """The five repositories of reForge's launch_utils.py (stablediffusion at the upstream commit A1111 pins, since
    reForge's fork is not available) plus openai CLIP, and A1111's VAE-approx decoder for live previews."""
    commits = {s.name: s.commit for s in (host.REFORGE.root, *host.REFORGE.sources)}
    assert commits == {
        "reforge-webui": "3b56b268ad9158ee8b30900973b6ccda4ec22241",
        "stable-diffusion-webui-assets": "6f7db241d2f8ba7457bac5ca9753331f0c266917",
        "stable-diffusion-stability-ai": "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
        "generative-models": "45c443b316737a4ab6e40413d7794a7f5657c19f",
        "k-diffusion": "ab527a9a6d347f364e3d185ba6d714e22d80cb3c",
        "BLIP": "48211a1594f1321b00f14c9f7a5b4813144b2fb9",
        "openai-clip": "d50d76daa670286dd6cacf3bcd80b5e4823fc8e1",
    }
    assert [s.dest for s in host.REFORGE.sources if s.dest is None] == [None]  # clip: pip-installed
    ((src, path, dest),) = host.REFORGE.files
    assert src is host.A1111.root
    assert path == dest == "models/VAE-approx/model.pt"
    recipe = host.recipe(host.REFORGE)
    assert recipe["host"] == "reforge"
    assert recipe["sources"] == commits
    assert recipe["edits"][-1] == [host.REFORGE_PYDANTIC_WHEEL, "pydantic==1.10.15"]
    assert recipe["files"] == [["a1111-webui", host.A1111.root.commit, path, dest]]
    assert "files" not in host.recipe(host.A1111)
    assert "files" not in host.recipe(host.FORGE)


def test_reforge_launch_and_readiness():
    """reForge loads --ckpt at startup ("Model sd15-eps.safetensors [hash] loaded in ..."), runs the full-size
    checkpoints shared with Forge, on its own port, with the probe."""
    r = host.REFORGE
    assert r.ready_marks == ("] loaded in ",)
    assert "Stable diffusion model failed to load" in r.failure_marks
    assert r.models == "full"
    assert r.startup_checkpoint == "sd15-eps.safetensors"
    assert r.probe
    assert r.allow_root_flag is None  # gradio 3.41, like A1111
    assert len({h.port for h in host.HOSTS.values()}) == len(host.HOSTS)
    assert r.port == 7863
    for arg in ("--skip-prepare-environment", "--skip-install", "--always-cpu", "--api", "--no-download-sd-model"):
        assert arg in r.launch_args
    assert "--use-cpu" not in r.launch_args  # parsed but unused by reForge
    assert host.HOSTS["reforge"] is r
    log = "Loading model sd15-eps.safetensors [b146b6f363] (1 of 1)\nLoading weights [b146b6f363] from x.safetensors\n"
    assert not any(m in log for m in r.ready_marks)  # both come before the load
    log += "Model sd15-eps.safetensors [b146b6f363] loaded in 11.5s (load weights from disk: 0.1s).\n"
    assert any(m in log for m in r.ready_marks)


def test_single_files_come_from_a_verified_tarball(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    digest = _tarball(sources, "web", "c" * 40, {"models/VAE-approx/model.pt": b"weights", "README": b"x"})
    src = host.Source("web", "someone/web", "c" * 40, digest[:16], "")
    dest = tmp_path / "host" / "models" / "VAE-approx" / "model.pt"
    host.fetch_file(src, "models/VAE-approx/model.pt", sources, dest)
    assert dest.read_bytes() == b"weights"
    with pytest.raises(host.HostError, match="has no"):
        host.extract_file(src, "models/other.pt", sources, tmp_path / "other")
    bad = host.Source("web", "someone/web", "c" * 40, "0" * 16, "")
    with pytest.raises(host.HostError, match="sha256"):
        host.extract_file(bad, "README", sources, tmp_path / "other")


def test_port_and_model_folders_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VPRED_HOSTS_DIR", str(tmp_path / "hosts"))
    monkeypatch.delenv("VPRED_FORGE_PORT", raising=False)
    monkeypatch.delenv("VPRED_FULL_MODELS_DIR", raising=False)
    assert host.port(host.FORGE) == 7861
    monkeypatch.setenv("VPRED_FORGE_PORT", "7999")
    assert host.port(host.FORGE) == 7999
    assert host.url(host.FORGE) == "http://127.0.0.1:7999"
    assert host.full_models_dir() == (tmp_path / "hosts" / "full-models").resolve()
    monkeypatch.setenv("VPRED_FULL_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert host.full_models_dir() == (tmp_path / "elsewhere").resolve()


def test_probe_is_installed_beside_the_extension(tmp_path, monkeypatch):
    monkeypatch.setenv("VPRED_HOSTS_DIR", str(tmp_path / "hosts"))
    host.install_extension(host.FORGE, enabled=False, probe=True)
    extensions = host.instance_dir(host.FORGE) / "extensions"
    assert (extensions / "vpred-probe" / "scripts" / "vpred_probe.py").is_file()
    assert not (extensions / "sd-webui-vpred").exists()
    host.install_extension(host.FORGE, enabled=False, probe=False)
    assert not (extensions / "vpred-probe").exists()


def test_shared_sources_list_matches_the_builder_when_present():
    """``../shared/hosts/SOURCES.txt`` (where present) names the same repositories, commits and sha256 prefixes."""
    listing = REPO.parent / "shared" / "hosts" / "SOURCES.txt"
    if not listing.is_file():
        pytest.skip("no ../shared/hosts here")
    rows = {}
    for line in listing.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, github, commit, prefix = line.split()
            rows[name] = (github, commit, prefix)
    for h in host.HOSTS.values():
        for src in (h.root, *h.sources):
            assert rows[src.name] == (src.github, src.commit, src.sha256_prefix), (h.key, src.name)


def _tarball(folder: Path, name: str, commit: str, files: dict[str, bytes]) -> str:
    path = folder / f"{name}-{commit[:10]}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unpack_verifies_the_sha256(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    digest = _tarball(sources, "thing", "a" * 40, {"README": b"hello"})
    good = host.Source("thing", "someone/thing", "a" * 40, digest[:16], "repositories/thing")
    dest = tmp_path / "host" / "repositories" / "thing"
    dest.parent.mkdir(parents=True)
    host.unpack(good, sources, dest)
    assert (dest / "README").read_bytes() == b"hello"

    bad = host.Source("thing", "someone/thing", "a" * 40, "0" * 16, "repositories/thing")
    with pytest.raises(host.HostError, match="sha256"):
        host.unpack(bad, sources, tmp_path / "host" / "repositories" / "other")
    missing = host.Source("nothing", "someone/nothing", "b" * 40, "0" * 16, "x")
    with pytest.raises(host.HostError, match="missing"):
        host.unpack(missing, sources, tmp_path / "host" / "x")


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_clone_checks_out_and_verifies_the_pinned_commit(tmp_path, monkeypatch):
    upstream = tmp_path / "base" / "someone" / "thing"
    upstream.mkdir(parents=True)
    _git("init", "-q", cwd=upstream)
    _git("config", "user.email", "t@example.invalid", cwd=upstream)
    _git("config", "user.name", "t", cwd=upstream)
    (upstream / "f").write_text("first")
    _git("add", "f", cwd=upstream)
    _git("commit", "-qm", "first", cwd=upstream)
    first = _git("rev-parse", "HEAD", cwd=upstream)
    (upstream / "f").write_text("second")
    _git("commit", "-qam", "second", cwd=upstream)
    bare = tmp_path / "base" / "someone" / "thing.git"
    _git("clone", "-q", "--bare", str(upstream), str(bare), cwd=tmp_path)
    monkeypatch.setenv("VPRED_GIT_BASE", str(tmp_path / "base"))

    dest = tmp_path / "host" / "repositories" / "thing"
    dest.parent.mkdir(parents=True)
    host.clone(host.Source("thing", "someone/thing", first, "", "repositories/thing"), dest)
    assert (dest / "f").read_text() == "first"  # the pinned commit, not the branch head

    with pytest.raises(subprocess.CalledProcessError):
        host.clone(host.Source("thing", "someone/thing", "f" * 40, "", "x"), tmp_path / "host" / "other")


def test_hosts_folder_must_be_outside_the_repo_and_free_of_dot_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("VPRED_HOSTS_DIR", str(tmp_path / "hosts"))
    assert host.hosts_dir() == (tmp_path / "hosts").resolve()
    monkeypatch.setenv("VPRED_HOSTS_DIR", str(tmp_path / ".cache" / "hosts"))
    with pytest.raises(host.HostError, match="dot-folder"):
        host.hosts_dir()
    monkeypatch.setenv("VPRED_HOSTS_DIR", str(REPO / "hosts"))
    with pytest.raises(host.HostError, match="inside this repository"):
        host.hosts_dir()


def test_recipe_change_means_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("VPRED_HOSTS_DIR", str(tmp_path / "hosts"))
    assert not host.is_built(host.A1111)  # nothing there
    root = host.host_dir(host.A1111)
    root.mkdir(parents=True)
    stamp = dict(host.recipe(host.A1111), recipe=-1)
    host.stamp_path(host.A1111).write_text(json.dumps(stamp))
    assert not host.is_built(host.A1111)  # an outdated stamp


def test_extension_copy_is_what_a_clone_has():
    names = {str(p) for p in host.extension_files()}
    for required in (
        "install.py",
        "scripts/vpred.py",
        "lib_vpred/params.py",
        "javascript/vpred-hints.js",
        "style.css",
    ):
        assert required in names
    assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)
