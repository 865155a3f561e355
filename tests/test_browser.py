"""The dashboard, the docs site and JupyterLab as a person sees them: Debian's headless Chromium driven by Selenium.

Every page is visited and screenshotted into the test's output folder (and into $AGENT_FORGE_SCREENSHOTS when set,
e.g. docs/screenshots). A browser that cannot start skips these tests on a workstation and fails them under CI
(CI=true), where `.ci/run` installs chromium and chromium-driver."""

import hashlib, json, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMINGS = {}  # what the closing note reports: seconds from `agent-forge dashboard` to the first page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc, timeout: float = 120) -> float:
    "Seconds until `url` answers 200 (fails if `proc` exits first)."
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"server exited with status {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s")


def _stop(proc):
    "End a server this test started (its own process group)."
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    "save(driver, name): a small PNG of the window in the test's output folder, copied to $AGENT_FORGE_SCREENSHOTS."
    out = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("AGENT_FORGE_SCREENSHOTS")

    def save(drv, name):
        from PIL import Image

        p = out / f"{name}.png"
        h = drv.execute_script(
            "const m = document.querySelector('[data-testid=\"stMain\"]');"
            "return m ? m.scrollHeight : document.documentElement.scrollHeight"
        )
        drv.set_window_size(1280, min(max(int(h) + 40, 1000), 2600))  # the whole page, up to a limit
        time.sleep(0.5)
        drv.save_screenshot(str(p))
        drv.set_window_size(1280, 1000)
        Image.open(p).convert("RGB").quantize(colors=64).save(p, optimize=True)  # small PNGs for the repository
        assert p.stat().st_size > 5000, f"{p} is nearly empty"
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, Path(extra) / p.name)
        return p

    save.folder = out
    return save


@pytest.fixture(scope="module")
def browser():
    "Headless Chromium through chromium-driver."
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        exe, drv_exe = shutil.which("chromium"), shutil.which("chromedriver")
        if not exe or not drv_exe:
            raise RuntimeError("chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver)")
        opts = webdriver.ChromeOptions()
        opts.binary_location = exe
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
            opts.add_argument(a)
        drv = webdriver.Chrome(service=Service(drv_exe), options=opts)
    except Exception as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser cannot start under CI: {type(e).__name__}: {e}")
        pytest.skip(f"no browser here: {type(e).__name__}: {e}")
    drv.set_page_load_timeout(180)
    yield drv
    drv.quit()


def _body(drv) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.TAG_NAME, "body").text


def _wait_for(drv, *texts, timeout=120):
    "Wait until every text is in the page's visible text; return that text."
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(drv, timeout, poll_frequency=0.25).until(lambda d: all(t in _body(d) for t in texts))
    except Exception:
        missing = [t for t in texts if t not in _body(drv)]
        pytest.fail(f"{drv.current_url}: never showed {missing}; page text starts {_body(drv)[:600]!r}")
    return _body(drv)


def _wait_idle(drv, timeout=60):
    "Wait until Streamlit has finished running the page script (no 'Running...' status)."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.5)
    WebDriverWait(drv, timeout, poll_frequency=0.25).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
    )


# ---------------------------------------------------------------- dashboard


def _tree_digest(d: Path) -> str:
    "sha256 over every file of a run folder (paths and bytes): the dashboard must leave it as it was."
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        if f.name.endswith("-shm") or (f.name.endswith("-wal") and f.stat().st_size == 0):
            continue  # SQLite's shared-memory index and an empty log, which any reader may create: no data
        h.update(f.relative_to(d).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    "The dashboard started with `agent-forge dashboard` on a demo run built by the test: (url, run folder, registry)."
    from agent_forge.runs.dashboard import build_demo_run, open_readonly

    runs = tmp_path_factory.mktemp("dash") / "runs"
    demo = build_demo_run(runs)
    before = _tree_digest(demo["run_dir"])
    port = _free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "agent-forge"), "dashboard", "--runs", str(runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "AGENT_FORGE_HOME": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    TIMINGS["dashboard_http_s"] = _wait_http(f"{url}/_stcore/health", proc)
    reg = open_readonly(demo["run_dir"])
    yield dict(url=url, t0=t0, demo=demo, reg=reg, runs=runs, before=before)
    reg.close()
    _stop(proc)


def test_dashboard_runs_page(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    browser.get(dashboard["url"] + "/")
    txt = _wait_for(browser, "Run demo", "Phase 2 gate failed: demo margin 0.01", "compress")
    TIMINGS["dashboard_first_page_s"] = time.monotonic() - dashboard["t0"]
    from agent_forge.foundation.config import PHASES

    for p in PHASES:  # every phase appears, run or not
        assert p.name in txt
    assert "stale" in txt and "new artifact #4" in txt  # phase 3's reason, from the registry
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")]
    assert any(h and h.endswith("/notebook?run=demo&phase=1") for h in hrefs)
    _wait_idle(browser)
    shots(browser, "dashboard_runs")
    (shots.folder / "timings.json").write_text(json.dumps(TIMINGS))
    print(f"\nagent-forge dashboard: health answered after {TIMINGS['dashboard_http_s']:.1f} s, "
          f"first page shown after {TIMINGS['dashboard_first_page_s']:.1f} s")


def test_dashboard_phase_page(browser, dashboard, shots):
    browser.get(dashboard["url"] + "/phase?run=demo&phase=1")
    txt = _wait_for(browser, "Phase 1: cognate", "heldout_loss", "Training curves", "wandb: phase1-trunk", "held-out")
    assert "2.5" in txt
    _wait_idle(browser)
    shots(browser, "dashboard_phase")


def test_dashboard_models_page(browser, dashboard, shots):
    browser.get(dashboard["url"] + "/models?run=demo")
    txt = _wait_for(browser, "Lineage", "Compare two artifacts", "file config.json changed")
    for a in dashboard["reg"].list_artifacts("demo", states=("live", "superseded")):
        assert a["sha256"] in txt, f"artifact {a['id']} hash missing"
    assert "IntegrityError" in txt and "Traceback" not in txt  # the tampered artifact is reported, not raised
    _wait_idle(browser)
    shots(browser, "dashboard_models")


def test_dashboard_system_page(browser, dashboard, shots):
    browser.get(dashboard["url"] + "/system")
    _wait_for(browser, "CPU cores", "Memory", "Disk used by runs", "Largest artifacts", "merged")
    _wait_idle(browser)
    shots(browser, "dashboard_system")


def _type(el, text):
    from selenium.webdriver.common.keys import Keys

    el.click()
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.DELETE)
    el.send_keys(text)


def test_dashboard_config_editor(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    browser.get(dashboard["url"] + "/config?run=demo")
    _wait_for(browser, "Presets", "Resolved parameters of run demo", "trunk_steps", "New preset override")
    _wait_idle(browser)
    name = browser.find_element(By.CSS_SELECTOR, '[data-testid="stTextInput"] input')
    area = browser.find_element(By.CSS_SELECTOR, '[data-testid="stTextArea"] textarea')
    save = next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Save preset")
    _type(name, "browser_fast")
    _type(area, '{"1": {"trunk_steps": "many"}}')
    save.click()
    _wait_for(browser, "invalid preset: CognatePhaseConfig.trunk_steps must be int, got 'many' (str)")
    saved = dashboard["runs"] / "_presets" / "browser_fast.json"
    assert not saved.exists()
    _wait_idle(browser)
    shots(browser, "dashboard_config_refused")
    area = browser.find_element(By.CSS_SELECTOR, '[data-testid="stTextArea"] textarea')
    _type(area, '{"1": {"trunk_steps": 7}}')
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Save preset").click()
    _wait_for(browser, "agent-forge run --preset tiny --param 1.trunk_steps=7")
    assert json.loads(saved.read_text())["overrides"] == {"1": {"trunk_steps": 7}}


def test_dashboard_notebook_link(browser, dashboard, shots):
    from selenium.webdriver.common.by import By

    browser.get(dashboard["url"] + "/notebook?run=demo&phase=1")
    _wait_for(browser, "Notebook: run demo, phase 1 (cognate)")
    _wait_idle(browser)
    frame = browser.find_element(By.TAG_NAME, "iframe")
    browser.switch_to.frame(frame)
    try:
        _wait_for(browser, "Phase 1 demo report")
        imgs = browser.find_elements(By.TAG_NAME, "img")
        assert imgs and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
    finally:
        browser.switch_to.default_content()
    shots(browser, "dashboard_notebook")


def test_dashboard_left_the_run_folder_alone(dashboard):
    "Read-only toward the registry: after every page, the run folder's bytes are the same."
    assert _tree_digest(dashboard["demo"]["run_dir"]) == dashboard["before"]


# ---------------------------------------------------------------- docs site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The docs site as `agent-forge docs --static` builds it, with a demo run's reports, served over HTTP."
    from agent_forge.runs.dashboard import build_demo_run
    from agent_forge.runs.docs import build_docs

    base = tmp_path_factory.mktemp("docs")
    demo = build_demo_run(base / "runs", wandb_log=False)
    out = base / "site"
    # one library notebook keeps the test within its time (the site build is `make docs`); AGENT_FORGE_DOCS_GLOB=all
    # builds every notebook, and a glob such as '00_*.ipynb' the first of every folder
    glob = os.environ.get("AGENT_FORGE_DOCS_GLOB", "00_core.ipynb")
    glob = "" if glob == "all" else glob
    t0 = time.monotonic()
    build_docs(ROOT, out, use_quarto=False, file_glob=glob, reports=demo["run_dir"], methods=True, log=lambda *a: None)
    TIMINGS["docs_build_s"] = time.monotonic() - t0
    print(f"\ndocs site ({glob or 'every notebook'}, methods, demo reports) built in {TIMINGS['docs_build_s']:.1f} s")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/index.html", proc)
    yield dict(url=url, out=out, glob=glob)
    _stop(proc)


def _links(drv, base: str) -> list:
    "Internal links of the open page, resolved, without their #fragments."
    from selenium.webdriver.common.by import By

    hrefs = [a.get_attribute("href") or "" for a in drv.find_elements(By.TAG_NAME, "a")]
    return sorted({h.split("#")[0] for h in hrefs if h.startswith(base)} - {""})


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_docs_site_pages_links_and_images(browser, site, shots):
    base = site["url"]
    browser.get(base + "/index.html")
    txt = _wait_for(browser, "Methods", "Phase 1 report: cognate (run demo)", "Phase 2 report: evomerge (run demo)")
    pages = [u for u in _links(browser, base) if u.endswith(".html")]
    want = {p.relative_to(site["out"]).as_posix() for p in site["out"].rglob("*.html")} - {"index.html"}
    assert {u[len(base) + 1 :] for u in pages} - {"index.html"} == want, "the index does not link every page"
    if not site["glob"]:  # a full build: every library notebook has its page
        nbs = [p for p in (ROOT / "nbs").rglob("*.ipynb") if p.name != "index.ipynb" and ".ipynb_checkpoints" not in str(p)]
        assert len([p for p in want if not p.startswith(("reports/", "methods"))]) == len(nbs)
    shots(browser, "docs_index")
    broken, missing_img = [], []
    for u in pages:
        browser.get(u)
        for link in _links(browser, base):
            if _status(link) != 200:
                broken.append(f"{u} -> {link}")
        bad = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))"
        )
        missing_img += [f"{u}: {b}" for b in bad]
        if u.endswith("reports/demo/01_cognate.html"):
            assert "Status done, gate passed" in _body(browser)
            assert browser.execute_script("return document.images.length") >= 1  # the phase's plot
            shots(browser, "docs_phase_report")
        if u.endswith("/methods.html"):
            assert "merge method" in _body(browser)
    assert broken == [], f"broken internal links: {broken[:10]}"
    assert missing_img == [], f"missing images: {missing_img[:10]}"


# ---------------------------------------------------------------- JupyterLab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab as `make lab` starts it (as root, the agent-forge kernel), on copies of a library and a phase notebook."
    root = tmp_path_factory.mktemp("lab")
    (root / "nbs" / "00_foundation").mkdir(parents=True)
    shutil.copy(ROOT / "nbs" / "00_foundation" / "00_core.ipynb", root / "nbs" / "00_foundation")
    (root / "pipelines").mkdir()
    shutil.copy(ROOT / "pipelines" / "01_cognate.ipynb", root / "pipelines")
    port, token = _free_port(), "agent-forge-test"
    proc = subprocess.Popen(
        [str(BIN / "jupyter"), "lab", "--allow-root", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--MultiKernelManager.default_kernel_name=agent-forge", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "AGENT_FORGE_HOME": str(ROOT), "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config")},
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/api/status?token={token}", proc, timeout=180)
    yield dict(url=url, token=token, root=root)
    _stop(proc)


def test_lab_opens_a_library_notebook(browser, lab, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{lab['url']}/lab/tree/nbs/00_foundation/00_core.ipynb?token={lab['token']}")
    _wait_for(browser, "AgentForgeError", timeout=180)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))
    shots(browser, "lab_library_notebook")


def test_lab_runs_a_phase_notebook_in_the_kernel(browser, lab, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{lab['url']}/lab/tree/pipelines/01_cognate.ipynb?token={lab['token']}")
    _wait_for(browser, "Phase 1: Cognate", timeout=180)
    browser.set_script_timeout(300)
    kernel = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        (async () => {
          const app = window.jupyterapp;
          let nb = app.shell.currentWidget;
          for (let i = 0; i < 600 && !(nb && nb.sessionContext); i++) {
            await new Promise(r => setTimeout(r, 100));
            nb = app.shell.currentWidget;
          }
          await nb.sessionContext.ready;
          const name = nb.sessionContext.session.kernel.name;
          nb.content.activeCellIndex = 0;
          for (let i = 0; i < 4; i++) await app.commands.execute('notebook:run-cell-and-select-next');
          await app.commands.execute('notebook:insert-cell-above');
          nb.content.activeCell.model.sharedModel.setSource(
            'import agent_forge\\nprint("kernel check:", preset, trunk_steps, agent_forge.__version__)');
          await app.commands.execute('notebook:run-cell');
          done(name);
        })().catch(e => done('error: ' + e));"""
    )
    assert kernel == "agent-forge", kernel
    WebDriverWait(browser, 240, poll_frequency=0.5).until(
        lambda d: any("kernel check:" in e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))
    )
    out = next(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if "kernel check:" in e.text)
    import agent_forge
    from agent_forge.foundation.config import phase_params

    assert out.strip() == f"kernel check: tiny {phase_params('tiny', 1)['trunk_steps']} {agent_forge.__version__}"
    prompts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-InputPrompt")]
    assert {"[1]:", "[2]:", "[3]:"} <= set(prompts), prompts  # the parameters and the two import cells ran
    shots(browser, "lab_phase_notebook")
