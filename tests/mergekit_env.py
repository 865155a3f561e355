"""Build (once) and locate a second virtual environment holding mergekit, the reference merger.

mergekit 0.1.5 declares loose requirements (torch>=2.0, transformers<6, peft, datasets...). Installing
it into the project venv lets pip move the project's pins, so it lives in `.venv-mergekit` instead:
a plain venv whose only own packages are `mergekit` and `immutables` (installed with `--no-deps`,
pinned), with a `.pth` line that puts the project venv's site-packages after its own. mergekit thus
runs on exactly the torch / transformers / safetensors that our code runs on, and nothing in `.venv`
changes. Run `python tests/mergekit_env.py` to build it by hand; the tests call `ensure_mergekit_venv()`.
"""

from __future__ import annotations
import subprocess, sys, sysconfig, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-mergekit"
PINS = ["mergekit==0.1.5", "immutables==0.21"]
STAMP = VENV / "agent-forge-pins.txt"


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def mergekit_yaml() -> Path:
    "Path of the `mergekit-yaml` console script inside the second venv."
    return VENV / "bin" / "mergekit-yaml"


def ensure_mergekit_venv(timeout: float = 600) -> tuple[Path | None, str]:
    "Return (path to mergekit-yaml, '') when the venv exists or was built now, else (None, why it could not be built)."
    if STAMP.exists() and STAMP.read_text().split() == PINS and mergekit_yaml().exists():
        return mergekit_yaml(), ""
    main_sp = Path(sysconfig.get_paths()["purelib"])
    if not (main_sp / "torch").is_dir():
        return None, f"running interpreter has no torch in {main_sp}"
    base = getattr(sys, "_base_executable", sys.executable)
    t0 = time.time()
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=timeout)
        (_site_packages(VENV) / "_agent_forge_main_venv.pth").write_text(str(main_sp) + "\n")
        r = subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", *PINS],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            return None, "pip install of " + " ".join(PINS) + " failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
        r = subprocess.run(
            [
                str(VENV / "bin" / "python"),
                "-c",
                "import mergekit.merge, torch, transformers; print(torch.__version__, transformers.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            return None, "mergekit does not import: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    except (subprocess.SubprocessError, OSError, StopIteration) as e:
        return None, f"could not build {VENV}: {e}"
    STAMP.write_text("\n".join(PINS) + "\n")
    print(
        f"built {VENV} in {time.time()-t0:.1f}s (torch/transformers from {main_sp}: {r.stdout.strip()})",
        file=sys.stderr,
    )
    return mergekit_yaml(), ""


if __name__ == "__main__":
    exe, why = ensure_mergekit_venv()
    print(exe if exe else f"FAILED: {why}")
    sys.exit(0 if exe else 1)
