"""Path confinement: every path a user or a config supplies is resolved and must lie in its run folder or a
declared input folder; `..`, symlinks and absolute paths outside are refused with a ConfigError that says how."""

import pytest

from agent_forge.foundation.core import ConfigError, IntegrityError
from agent_forge.runs.registry import Registry, confine_path, run_folder
from agent_forge.runs.report import start_phase


@pytest.fixture
def box(tmp_path):
    (tmp_path / "run" / "a").mkdir(parents=True)
    (tmp_path / "run" / "a" / "f.txt").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("s")
    (tmp_path / "run" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "run" / "inner").symlink_to(tmp_path / "run" / "a", target_is_directory=True)
    return tmp_path


def test_confine_accepts_paths_inside(box):
    run = box / "run"
    assert confine_path("a/f.txt", run) == (run / "a" / "f.txt").resolve()
    assert confine_path(run / "a", run) == (run / "a").resolve()
    assert confine_path("a/../a/f.txt", run) == (run / "a" / "f.txt").resolve()  # '..' that stays inside
    assert confine_path("inner/f.txt", run) == (run / "a" / "f.txt").resolve()  # a symlink that stays inside
    assert confine_path(box / "data" / "x.txt", run, box / "data") == (box / "data" / "x.txt").resolve()


@pytest.mark.parametrize(
    "path,msg",
    [
        ("../outside/secret.txt", "climbs out through '..' to"),
        ("a/../../outside", "climbs out through '..' to"),
        ("link/secret.txt", "follows the symlink"),
        ("link", "follows the symlink"),
        ("/etc/passwd", "'/etc/passwd' is an absolute path that is not inside the run folder"),
    ],
)
def test_confine_refuses_escapes(box, path, msg):
    with pytest.raises(ConfigError, match="not inside the run folder") as e:
        confine_path(path, box / "run", what="artifact path", where="the run folder")
    assert msg in str(e.value) and str(e.value).startswith(f"artifact path '{path}' ")


def test_absolute_path_outside_every_declared_folder(box):
    with pytest.raises(ConfigError, match="is an absolute path that is not inside"):
        confine_path(box / "outside" / "secret.txt", box / "run", box / "data", what="input file")


@pytest.mark.parametrize(
    "rel,msg",
    [
        ("../outside", "climbs out through '..'"),
        ("link", "follows the symlink"),
        ("a/../../outside", "climbs out through '..'"),
    ],
)
def test_register_artifact_is_confined(box, rel, msg):
    reg = Registry.open(box / "run")
    reg.ensure_run("run", "tiny", 0)
    with pytest.raises(ConfigError, match="not inside the run folder") as e:
        reg.register_artifact("run", 1, "x", rel)
    assert msg in str(e.value)
    with pytest.raises(ConfigError, match="is an absolute path that is not inside the run folder"):
        reg.register_artifact("run", 1, "x", box / "outside")
    assert reg.conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 0
    reg.close()


def test_recorded_path_escaping_the_run_is_refused(box):
    reg = Registry.open(box / "run")
    reg.ensure_run("run", "tiny", 0)
    aid = reg.register_artifact("run", 1, "a", "a")
    reg.verify_artifact(aid)
    reg.conn.execute("UPDATE artifacts SET path='../outside' WHERE id=?", (aid,))  # a tampered registry
    with pytest.raises(IntegrityError, match="recorded path '../outside' climbs out through '..'"):
        reg.verify_artifact(aid)
    reg.close()


def test_run_folder_and_registry_refuse_escapes(box):
    assert run_folder(box / "run", "run") == (box / "run").resolve()
    with pytest.raises(ConfigError, match="contains '..'"):
        run_folder(box / "outside" / ".." / "run", "run")
    with pytest.raises(ConfigError, match="is a symlink to"):
        run_folder(box / "run" / "link", "link")
    with pytest.raises(ConfigError, match="not a folder named after run_id 'run'"):
        run_folder("/etc", "run")
    with pytest.raises(ConfigError, match="invalid run id"):
        run_folder(box / "run", "../run")
    with pytest.raises(ConfigError, match="is a symlink to"):
        Registry.open(box / "run" / "link")


def test_phase_notebook_run_dir_is_confined(box):
    ns = dict(run_id="run", run_dir=str(box / "run"), preset="tiny", seed=0)
    for bad, msg in [
        (str(box / "outside"), "not a folder named after run_id 'run'"),
        (str(box / "outside" / ".." / "run"), "contains '..'"),
        ("/", "not a folder named after run_id 'run'"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            start_phase(1, {**ns, "run_dir": bad})
    assert not (box / "outside" / "registry.sqlite").exists()
