"""Safe defaults and what the server refuses to serve: a real app on loopback, raw HTTP and
gradio_client. (Image and archive contents are tested in tests/test_data_*.py.)"""

from __future__ import annotations

from pathlib import Path

from vitdemo.paths import REPO_ROOT
from typing import Iterator

import httpx
import pytest

import relserver as rs
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.errors import InputError
from vitdemo.core.loading import load_model
from webapp import free_port, serve


@pytest.fixture(scope="module")
def engine(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    secret = home / "jobs" / "20260101-000000-abcdef"
    secret.mkdir(parents=True)
    (secret / "job.json").write_text('{"status": "completed", "secret": "JOB-SECRET-42"}')
    return home


@pytest.fixture(scope="module")
def url(engine: Engine, tiny_llava_dir: Path, home: Path) -> Iterator[str]:
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=4, home=home, max_upload_mb=1)
    with serve(settings, engine) as u:
        yield u


@pytest.fixture(scope="module")
def red_png(tmp_path_factory: pytest.TempPathFactory) -> str:
    return rs.scene(tmp_path_factory.mktemp("img") / "red.png", "red")


def test_launch_defaults_are_safe(tmp_path: Path) -> None:
    from vitdemo.ui.app import launch_kwargs

    kw = launch_kwargs(Settings.from_env({}))
    assert kw["server_name"] == "127.0.0.1"
    assert kw["ssr_mode"] is False  # Gradio 6.27-6.32: auth bypass through the Host header with SSR on
    assert kw["auth"] is None and kw["max_file_size"] == "20mb"
    assert "share" not in kw or not kw["share"]
    # A login from a file: one user:password per line, comments skipped.
    users = tmp_path / "users.txt"
    users.write_text("# class of 2026\nann:pw1\nbob:pw:2\n")
    assert launch_kwargs(Settings(auth=str(users)))["auth"] == [("ann", "pw1"), ("bob", "pw:2")]
    users.write_text("ann\n")
    with pytest.raises(InputError, match="line 1"):
        Settings(auth=str(users))


def test_share_link_without_login_is_refused() -> None:
    from vitdemo.ui.app import launch

    class NeverLaunched:
        def launch(self, **kwargs: object) -> None:
            raise AssertionError(f"launched with {kwargs}")

    with pytest.raises(InputError, match="share link needs a login"):
        launch(NeverLaunched(), Settings(), share=True)  # type: ignore[arg-type]


def test_served_page_has_no_ssr_and_no_analytics(url: str) -> None:
    config = httpx.get(url + "config", timeout=30).json()
    assert config.get("analytics_enabled") is False
    assert not config.get("is_ssr") and not config.get("ssr_mode")


@pytest.mark.parametrize("route", [
    "gradio_api/file=/etc/passwd",
    "gradio_api/file=../../../../../../etc/passwd",
    "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "gradio_api/file=%2Fetc%2Fpasswd",
    "gradio_api/file//etc/passwd",
    "gradio_api/file=/proc/self/environ",
    "gradio_api/file=vitdemo/config.py",
    "gradio_api/file={root}/vitdemo/config.py",
    "gradio_api/file={home}/jobs/20260101-000000-abcdef/job.json",
    "gradio_api/file={tmp}/../../etc/passwd",
    "file=/etc/passwd",
    "static/../../../../etc/passwd",
    "assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
])
def test_file_route_refuses_everything_outside_the_app(url: str, home: Path, route: str) -> None:
    root = REPO_ROOT
    import gradio

    tmp = str(Path(gradio.utils.get_upload_folder()))
    r = httpx.get(url + route.format(root=root, home=home, tmp=tmp), timeout=30)
    assert r.status_code in (400, 403, 404), f"{route}: {r.status_code}"
    assert "root:" not in r.text and "JOB-SECRET" not in r.text and "class Settings" not in r.text


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../etc/passwd", "/proc/self/environ",
                                  "{home}/jobs/20260101-000000-abcdef/job.json"])
def test_forged_file_paths_in_api_calls_are_refused(url: str, home: Path, red_png: str, path: str) -> None:
    fn = rs.fn_index(url, "chat")
    msg = rs.call(url, fn, [rs.file_data(path.format(home=home)), "What is in the file?", None])
    err = rs.error_text(msg)
    assert err is not None and "not uploaded by a user" in err
    assert "root:" not in str(msg) and "JOB-SECRET" not in str(msg)
    # Through gradio_client with a bare path string (not handle_file): also refused.
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(url, verbose=False)
    with pytest.raises(AppError) as info:
        client.predict(path.format(home=home), "What is in the file?", None, api_name="/chat")
    assert "root:" not in str(info.value) and "JOB-SECRET" not in str(info.value)
    # The server keeps serving.
    assert client.predict(handle_file(red_png), "What colour?", None, api_name="/chat").strip()


@pytest.mark.parametrize("name, mime, body", [
    ("page.html", "text/html", b"<html><body><script>alert(document.cookie)</script></body></html>"),
    ("pic.svg", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"),
    ("photo.png", "image/png", b"<html><script>alert(1)</script></html>"),
])
def test_uploaded_html_and_svg_are_never_rendered(url: str, name: str, mime: str, body: bytes) -> None:
    payload = rs.upload(url, Path(name), mime, data=body)
    r = httpx.get(url + "gradio_api/file=" + payload["path"], timeout=30)
    # Served (if at all) as a download, never as a page or an image the browser would run.
    if r.status_code == 200:
        ctype = r.headers["content-type"].split(";")[0]
        assert ctype not in ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml")
        # A raster image type is shown as an image (browsers never sniff image/* into HTML);
        # anything else must be a download.
        assert ctype in ("image/png", "image/jpeg") or r.headers["content-disposition"].startswith("attachment")
    # And the model never gets it: a clear message instead.
    msg = rs.call(url, rs.fn_index(url, "chat"), [payload, "What is this?", None])
    err = rs.error_text(msg)
    assert err is not None and "SVG/HTML" in err, err


def test_upload_size_limit(url: str) -> None:
    r = httpx.post(url + "gradio_api/upload", timeout=60,
                   files={"files": ("big.png", b"\x89PNG" + b"\0" * (1024 * 1024 + 10), "image/png")})
    assert r.status_code == 413 and "1048576" in r.text


def test_login_required_when_auth_is_set(engine: Engine, tiny_llava_dir: Path, tmp_path: Path,
                                         red_png: str) -> None:
    from gradio_client import Client, handle_file

    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=3, home=tmp_path,
                        auth="ann:s3cret")
    with serve(settings, engine) as u:
        for forged_host in (None, "localhost", "127.0.0.1:1"):  # the SSR-era bypass forged Host
            headers = {"Host": forged_host} if forged_host else {}
            assert httpx.get(u + "config", headers=headers, timeout=30).status_code == 401
        r = httpx.post(u + "gradio_api/upload", files={"files": ("a.png", Path(red_png).read_bytes())}, timeout=30)
        assert r.status_code == 401
        r = httpx.post(u + "gradio_api/call/chat", json={"data": [None, "hi", None]}, timeout=30)
        assert r.status_code == 401
        with pytest.raises(Exception):
            Client(u, verbose=False, auth=("ann", "wrong"))
        client = Client(u, verbose=False, auth=("ann", "s3cret"))
        assert client.predict(handle_file(red_png), "What colour?", None, api_name="/chat").strip()
