"""Kill the real runner with SIGKILL at random points, resume until the run completes, compare with an uninterrupted run.

    .venv/bin/python tests/reliability/kill_resume.py [--kills 20] [--seed 12] [--work DIR]   (or: make reliability)

What it does, at the smoke sizes of `tests/conftest.py` (`smoke_args()`):
1. copies `pipelines/` into a scratch project (so edits to the checkout cannot change the run half-way) in which
   each phase's gate `raise GateError(...)` becomes a printed line: at smoke size the models barely train and
   Phase 1's gate fails by design, which would end the chain before Phases 2-4 could be killed. Nothing else in
   the notebooks changes, and the runner, the registry and the library are the checkout's own.
2. runs `agent-forge run --preset tiny --phases 1-4` once without interruption (the reference) and records each
   phase's wall time and every live artifact's sha256.
3. runs the same request again, and SIGKILLs the runner's whole process tree (the runner, its Jupyter kernel,
   wandb) at kill points drawn from `random.Random(seed)`: `kills` points spread evenly over the phases, each
   at a uniform fraction of that phase's reference wall time after the phase starts (the runner's `start_phase`
   row in the registry). After every kill it checks the registry (`PRAGMA integrity_check`, every live artifact
   verifies), then resumes with `--resume`, until a resume finishes.
4. checks the finished run: the same exit status and phase statuses as the reference, `integrity_check` ok, no
   half-registered artifact (every live artifact verifies; no folder holds a manifest without a live artifact;
   no `*.tmp` left in an artifact), and every artifact's sha256 identical to the reference's.
It prints the figures and exits 1 if any check fails.
"""

import argparse, json, os, random, shlex, shutil, signal, sqlite3, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import SMOKE, smoke_args  # noqa: E402

BIN = Path(sys.executable).parent
PHASES = "1-4"  # the default chain (`--phases`)
GATE_RAISE = "raise GateError("
# Phase 2's fitness has a speed term, the measured latency of each candidate: it differs between two uninterrupted
# runs (recipe.json's fitness 0.767 vs 0.833 in one test), and could change which recipe wins. Off here, so the
# comparison with the reference tests kill and resume, not the clock.
EXTRA = ["--param", "2.w_speed=0"]
GATE_CELL = '''def _recorded_gate(msg):
    "The reliability copy's gate: print the verdict instead of raising GateError."
    print(f"gate failed (recorded by tests/reliability/kill_resume.py, not raised): {msg}")
'''


def scratch_project(dest: Path, phases: str) -> Path:
    "A copy of the checkout's pipelines of `phases` ('N-M') whose gates print instead of raising; return its root."
    (dest / "pipelines").mkdir(parents=True)
    first, last = (int(x) for x in phases.split("-"))
    for src in sorted((ROOT / "pipelines").glob("[0-9][0-9]_*.ipynb")):
        if not first <= int(src.name[:2]) <= last:
            continue
        nb = nbformat.read(src, as_version=4)
        hits = [c for c in nb.cells if c.cell_type == "code" and GATE_RAISE in c.source]
        if len(hits) != 1 or hits[0].source.count(GATE_RAISE) != 1:
            raise SystemExit(f"{src.name}: expected one `{GATE_RAISE}` to record, found {len(hits)} cells")
        hits[0].source = hits[0].source.replace(GATE_RAISE, "_recorded_gate(")
        first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        nb.cells.insert(first + 1, nbformat.v4.new_code_cell(GATE_CELL))
        nbformat.write(nb, dest / "pipelines" / src.name)
    return dest


def env_for(project: Path) -> dict:
    "The runner's environment: the scratch project, the checkout's data, offline wandb, fixed thread count."
    return {
        **os.environ,
        "AGENT_FORGE_HOME": str(project),
        "AGENT_FORGE_DATA": os.environ.get("AGENT_FORGE_DATA", str(ROOT / "data")),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }


def runner_cmd(runs_dir: Path, run_id: str, resume: bool, phases: str) -> list:
    "The `agent-forge run` command line of the smoke chain."
    cmd = [str(BIN / "agent-forge"), "run", "--phases", phases, "--run-id", run_id, "--runs-dir", str(runs_dir)]
    first, last = (int(x) for x in phases.split("-"))
    smoke = {n: v for n, v in SMOKE.items() if first <= n <= last}
    cmd += ["--resume"] if resume else ["--preset", "tiny", *smoke_args(smoke), *(EXTRA if first <= 2 <= last else [])]
    return cmd + ["--no-progress"]


def connect(run_dir: Path) -> sqlite3.Connection | None:
    "A reading connection to the run's registry, or None while it does not exist."
    db = run_dir / "registry.sqlite"
    if not db.exists():
        return None
    c = sqlite3.connect(db, timeout=30)
    c.row_factory = sqlite3.Row
    return c


def phase_rows(run_dir: Path, run_id: str) -> dict:
    "phase -> (status, started as UTC datetime) from the registry ({} before it exists)."
    c = connect(run_dir)
    if c is None:
        return {}
    try:
        rows = c.execute("SELECT phase, status, started FROM phases WHERE run_id=?", (run_id,)).fetchall()
    except sqlite3.OperationalError:  # the runner is creating the schema
        return {}
    finally:
        c.close()
    return {r["phase"]: (r["status"], datetime.fromisoformat(r["started"]) if r["started"] else None) for r in rows}


def descendants(pid: int) -> list:
    "`pid` and every process below it (by parent pid), read from /proc."
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def kill_tree(proc: subprocess.Popen):
    "SIGSTOP the runner's process tree until no new process appears, then SIGKILL all of it (a crash)."
    seen = set()
    while True:
        tree = set(descendants(proc.pid))
        for p in tree - seen:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        if tree <= seen:
            break
        seen |= tree
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner's own process group (it was started in a new session)
    except ProcessLookupError:
        pass
    for p in seen:  # the Jupyter kernel runs in a session of its own
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def registry_checks(run_dir: Path, run_id: str, final: bool) -> list:
    "Problems with the registry and the artifacts on disk ([] if none); `final`: also look for leftovers."
    from agent_forge.foundation.core import IntegrityError
    from agent_forge.runs.registry import MANIFEST, Registry

    bad = []
    c = connect(run_dir)
    if c is None:
        return []
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    c.close()
    if ok != "ok":
        bad.append(f"PRAGMA integrity_check: {ok}")
    with Registry.open(run_dir, create=False) as reg:
        live = reg.list_artifacts(run_id)
        for a in live:
            try:
                reg._check_artifact(a)
            except IntegrityError as e:
                bad.append(f"half-registered: {e}")
        if final:
            paths = {a["path"] for a in live}
            for man in run_dir.rglob(MANIFEST):
                rel = man.parent.relative_to(run_dir).as_posix()
                if rel not in paths:
                    bad.append(f"{rel} holds a {MANIFEST} but no live artifact is registered there")
            for a in live:
                bad += [f"leftover {t}" for t in Path(a["abspath"]).rglob("*.tmp")]
    return bad


def artifact_hashes(run_dir: Path, run_id: str) -> dict:
    "'phase/name' -> (sha256 of the artifact, {file: sha256}) for every live artifact."
    from agent_forge.runs.registry import Registry

    with Registry.open(run_dir, create=False) as reg:
        return {f"{a['phase']}/{a['name']}": (a["sha256"], a["files"]) for a in reg.list_artifacts(run_id)}


def safetensors_parts(path: Path) -> tuple:
    "(header as a dict, data bytes) of a safetensors file."
    b = path.read_bytes()
    n = int.from_bytes(b[:8], "little")
    return json.loads(b[8 : 8 + n]), b[8 + n :]


def same_content(a: Path, b: Path) -> bool:
    "Whether two safetensors files hold the same tensors and metadata, their header keys perhaps in another order."
    if a.suffix != ".safetensors" or not (a.is_file() and b.is_file()):
        return False
    return safetensors_parts(a) == safetensors_parts(b)


def hashes_path(run_dir: Path, run_id: str, key: str) -> str:
    "The folder (relative to the run folder) of live artifact 'phase/name'."
    from agent_forge.runs.registry import Registry

    ph, name = key.split("/")
    with Registry.open(run_dir, create=False) as reg:
        return reg.find_artifact(run_id, int(ph), name)["path"]


def final_state(run_dir: Path, run_id: str) -> dict:
    "phase -> status at the end of a run."
    return {p: s for p, (s, _) in phase_rows(run_dir, run_id).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs in all, spread evenly over the phases")
    ap.add_argument("--seed", type=int, default=12, help="seed of the kill points")
    ap.add_argument("--phases", default=PHASES, help=f"the chain, N-M (default {PHASES})")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder, removed at the end)")
    ap.add_argument(
        "--header-order-ok",
        action="store_true",
        help="accept safetensors files whose bytes differ only in the order of their header's metadata keys",
    )
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="kill_resume-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env, rid, t_start = env_for(scratch_project(work / "project", a.phases)), "R", time.perf_counter()
    print(f"kill_resume: work {work}, kills {a.kills}, seed {a.seed}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")

    ref_dir = work / "reference"
    t0 = time.perf_counter()
    ref = subprocess.run(runner_cmd(ref_dir, rid, False, a.phases), env=env, cwd=ROOT, capture_output=True, text=True)
    t_ref = time.perf_counter() - t0
    ref_status = final_state(ref_dir / rid, rid)
    first, last = (int(x) for x in a.phases.split("-"))
    if ref.returncode != 0 or set(ref_status) != set(range(first, last + 1)):
        print(ref.stdout[-3000:], ref.stderr[-3000:])
        print(f"FAILED: the uninterrupted reference run did not complete (exit {ref.returncode}, {ref_status})")
        return 1
    c = connect(ref_dir / rid)
    walls = {r["phase"]: r["wall_s"] for r in c.execute("SELECT phase, wall_s FROM phases WHERE run_id=?", (rid,))}
    c.close()
    print(f"reference: exit {ref.returncode} in {t_ref:.0f} s, phases {ref_status}, wall s {walls}")
    ref_hashes = artifact_hashes(ref_dir / rid, rid)

    rng = random.Random(a.seed)
    phases = sorted(walls)
    # the last phase's kills land in its first half: one after it has finished leaves nothing for the next to kill
    plan = [phases[i * len(phases) // a.kills] for i in range(a.kills)]
    plan = [(ph, rng.uniform(0.02, 0.5 if ph == phases[-1] else 0.98)) for ph in plan]
    kill_dir, problems, kills, outcomes = work / "killed" / rid, [], [], []
    while True:
        t_launch = datetime.now(timezone.utc)
        with open(work / f"attempt{len(outcomes) + 1:02d}.log", "w") as log:
            proc = subprocess.Popen(
                runner_cmd(kill_dir.parent, rid, bool(outcomes), a.phases),
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            killed = False
            while proc.poll() is None and len(kills) < len(plan):
                time.sleep(0.1)
                ph, frac = plan[len(kills)]
                rows = {p: r for p, r in phase_rows(kill_dir, rid).items() if r[1] is not None and r[1] >= t_launch}
                if ph in rows and rows[ph][0] == "running" and not any(p > ph for p in rows):
                    if (datetime.now(timezone.utc) - rows[ph][1]).total_seconds() < frac * walls[ph]:
                        continue
                elif not any(p >= ph for p in rows):  # phase `ph` has not started in this attempt yet
                    continue
                # due, or phase `ph` ended sooner than planned in this attempt: kill now
                kill_tree(proc)
                if proc.returncode != -signal.SIGKILL:  # it had just finished on its own
                    break
                killed = True
                where = [p for p, (s, _) in phase_rows(kill_dir, rid).items() if s == "running"]
                kills.append(dict(planned=ph, frac=round(frac, 3), phase=where[0] if where else None))
                after = registry_checks(kill_dir, rid, final=False)
                problems += [f"after kill {len(kills)}: {b}" for b in after]
                print(
                    f"kill {len(kills):2d}: planned in phase {ph} at {frac:.2f} of {walls[ph]:.0f} s, "
                    f"landed in phase {kills[-1]['phase']}; registry {'ok' if not after else after}",
                    flush=True,
                )
            proc.wait()
        outcomes.append("killed" if killed else f"exit {proc.returncode}")
        if not killed:
            break
    t_all = time.perf_counter() - t_start
    status = final_state(kill_dir, rid)
    problems += [f"final: {b}" for b in registry_checks(kill_dir, rid, final=True)]
    if proc.returncode != ref.returncode:
        problems.append(f"the last resume exited {proc.returncode}, the reference {ref.returncode}")
    if status != ref_status:
        problems.append(f"phase statuses {status} differ from the reference's {ref_status}")
    hashes = artifact_hashes(kill_dir, rid)
    same = sorted(k for k in ref_hashes if hashes.get(k, (None,))[0] == ref_hashes[k][0])
    header_order = []  # files whose bytes differ only in the order of the safetensors header's keys
    for k in sorted(set(ref_hashes) | set(hashes)):
        if k in same:
            continue
        if k not in hashes or k not in ref_hashes:
            problems.append(f"artifact {k}: only in {'the reference' if k in ref_hashes else 'the killed run'}")
            continue
        files = sorted(set(ref_hashes[k][1]) | set(hashes[k][1]))
        files = [f for f in files if ref_hashes[k][1].get(f) != hashes[k][1].get(f)]
        where = {d: d / rid / hashes_path(d / rid, rid, k) for d in (ref_dir, kill_dir.parent)}
        order = [f for f in files if same_content(where[ref_dir] / f, where[kill_dir.parent] / f)]
        header_order += [f"{k}/{f}" for f in order]
        if order != files or not a.header_order_ok:
            problems.append(f"artifact {k}: sha256 differs from the reference (files {files})")
    if len(kills) < a.kills:
        problems.append(f"only {len(kills)} of the {a.kills} planned kills happened: the run finished first")
    by_phase = {p: sum(k["phase"] == p for k in kills) for p in phases}
    print(f"kills: {len(kills)} (by the phase running when killed: {by_phase}, "
          f"between phases: {sum(k['phase'] is None for k in kills)})")
    resumes = outcomes[1:]
    done = [o for o in resumes if o != "killed"]
    print(f"resumes: {len(resumes)} started, {len(resumes) - len(done)} killed again, {len(done)} completed "
          f"({', '.join(done)}); final phases {status}")
    print(f"identical final artifact hashes: {len(same)}/{len(ref_hashes)}")
    if header_order:
        print(
            f"  the others hold the same tensors and metadata; only the order of the safetensors header's metadata "
            f"keys differs (the writer's hash-map order changes from process to process): {header_order}"
        )
    print(f"wall: reference {t_ref:.0f} s, everything {t_all:.0f} s")
    for p in problems:
        print("PROBLEM:", p)
    print("kill_resume:", "FAILED" if problems else "passed")
    if not a.work and not problems:
        shutil.rmtree(work)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
