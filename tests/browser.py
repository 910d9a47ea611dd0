"""Headless Chromium for the tests (Debian's ``chromium`` + ``chromium-driver``, driven by selenium).

Browsers cannot be downloaded by the tests: :func:`need_browser` skips a test with a clear message when
none is installed. :func:`offline_driver` cuts the network (DevTools offline emulation plus a host
resolver that resolves nothing) and records every request the page makes, so a test can assert that a
page drew with no network and asked for nothing outside itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

INSTALL = "apt-get install chromium chromium-driver"


def find_browser() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def need_browser() -> tuple[str, str]:
    found = find_browser()
    if found is None:
        pytest.skip(f"no headless browser: Chromium and chromedriver are not installed (Debian: {INSTALL}); "
                    "browser checks skipped")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    return found


@contextlib.contextmanager
def driver(size=(1280, 720), offline: bool = True, allow_hosts: tuple[str, ...] = ()):
    """A headless Chromium session; ``offline``: no network except ``allow_hosts`` (e.g. 127.0.0.1)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = need_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={size[0]},{size[1]}", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        opts.add_argument(a)
    if offline:
        rules = "MAP * ~NOTFOUND" + "".join(f", EXCLUDE {h}" for h in allow_hosts)
        opts.add_argument(f"--host-resolver-rules={rules}")
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        d.execute_cdp_cmd("Network.enable", {})
        if offline and not allow_hosts:
            d.execute_cdp_cmd("Network.emulateNetworkConditions",
                              {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        yield d
    finally:
        d.quit()


def requested_urls(d) -> list[str]:
    """URLs of every request the page made so far (from the DevTools performance log)."""
    urls = []
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def wait_for(d, script: str, timeout: float = 30.0, poll: float = 0.2):
    """Poll ``script`` (JavaScript returning a value) until it is truthy; returns the value."""
    end = time.monotonic() + timeout
    while True:
        value = d.execute_script(script)
        if value or time.monotonic() > end:
            return value
        time.sleep(poll)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(directory: Path):
    """``python -m http.server -d directory`` on a free local port; yields the base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "-b", "127.0.0.1", "-d", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_http(url: str, proc, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@contextlib.contextmanager
def jupyterlab(workdir: Path, size=(1280, 720)):
    """JupyterLab serving ``workdir`` (its own settings, default layout) and a headless Chromium session
    on it with the network cut except for the server; yields ``(driver, open)`` where ``open(name)`` opens
    a notebook of ``workdir`` and waits for its first cell."""
    port, token = free_port(), "d2lib-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(workdir / ".cfg"), "JUPYTER_DATA_DIR": str(workdir / ".data"),
           "JUPYTERLAB_SETTINGS_DIR": str(workdir / ".settings"), "JUPYTERLAB_WORKSPACES_DIR": str(workdir / ".ws")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}", "--LabApp.news_url=None",
           "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(workdir / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api?token={token}", proc, timeout=90)
        with driver(size, offline=True, allow_hosts=("127.0.0.1",)) as d:
            def open_notebook(name: str) -> None:
                d.get(f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}")
                if not wait_for(d, "return window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')", 90):
                    raise AssertionError(f"JupyterLab did not open {name} (see {workdir / 'jupyterlab.log'})")
            yield d, open_notebook
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
