"""`make ui`'s reports server: the drop pages over real HTTP on 127.0.0.1, at the port the
settings name, and the link the `drop_page` asset gives them (issue 20, item 1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestration.resources import build_resources
from orchestration.settings import REPO_ROOT, Settings
from orchestration.ui import serve_reports
from resources.reports import ReportsResource
from tests.ui.dagster_ui import free_port


def test_the_reports_port_comes_from_the_environment_and_names_the_link():
    assert Settings.from_env({}).reports_url == "http://127.0.0.1:3001"
    settings = Settings.from_env({"IMAGE_PIPELINE_REPORTS_PORT": "3999"})
    assert settings.reports_url == "http://127.0.0.1:3999"
    reports = build_resources(settings)["reports"]
    page = Path("/srv/data/reports/my drop/index.html")
    assert reports.link(page, Path("/srv/data/reports")) == (
        "http://127.0.0.1:3999/my%20drop/index.html"
    )
    assert ReportsResource().link(page, Path("/srv/data/reports")) == page.as_uri()


def test_the_reports_server_serves_the_folder_on_localhost_only(tmp_path: Path):
    reports = tmp_path / "reports"
    (reports / "d1").mkdir(parents=True)
    (reports / "d1" / "index.html").write_text("<title>Drop d1</title>")
    (tmp_path / "secret.txt").write_text("outside the reports folder")
    port = free_port()
    server = serve_reports(reports, port)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/d1/index.html", timeout=10) as response:
            assert response.read() == b"<title>Drop d1</title>"
        with pytest.raises(urllib.error.HTTPError):  # `..` never leaves the folder
            urllib.request.urlopen(f"{url}/../secret.txt", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_make_ui_says_which_setting_to_change_when_the_reports_port_is_taken(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "orchestration.ui", "--port", str(free_port())],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "IMAGE_PIPELINE_REPORTS_PORT": str(port),
                "IMAGE_PIPELINE_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 1
    assert "set IMAGE_PIPELINE_REPORTS_PORT to a free port" in done.stderr
