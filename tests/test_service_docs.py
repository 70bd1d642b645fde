"""/docs works on a machine with no internet: Swagger UI comes from the service itself
(memtrain/service/apidocs.py), checked in the HTML and in a real headless Chromium whose
network beyond 127.0.0.1 is closed."""

import re
import urllib.request

import pytest
from service_helpers import ThreadServer
from test_service_page import CHROMIUM, chromium

# every host but loopback: a dead proxy, and no name resolves
OFFLINE = ("--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(tmp_path_factory.mktemp("state")) as s:
        yield s


def test_docs_reference_nothing_outside_the_service(server):
    status, page = server.request("GET", "/docs")
    assert status == 200 and "SwaggerUIBundle" in page
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page) + re.findall(r"url: '([^']+)'", page)
    assert len(urls) >= 4, page  # the script, the styles, the icon, the OpenAPI document
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # same origin: nothing from a CDN
        with urllib.request.urlopen(server.url + url, timeout=30) as resp:
            assert resp.status == 200 and resp.read(), url
    assert "validatorUrl" in page and "null" in page  # no badge fetched from validator.swagger.io
    assert server.request("GET", "/docs-assets/index.html")[0] == 404  # only the files /docs loads
    assert server.request("GET", "/redoc")[0] == 404  # ReDoc is not offered (no package ships it)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_docs_render_in_chromium_with_the_network_closed(server, tmp_path):
    # the control: with these flags a page that needs a CDN gets nothing from it
    cdn = tmp_path / "cdn.html"
    cdn.write_text("<html><body><script src='https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js'>"
                   "</script><script>document.body.id = typeof SwaggerUIBundle</script></body></html>")
    control = chromium(*OFFLINE, "--virtual-time-budget=5000", "--dump-dom", cdn.as_uri())
    assert control.returncode == 0 and 'id="undefined"' in control.stdout, control.stdout[-500:]
    r = chromium(*OFFLINE, "--virtual-time-budget=10000", "--dump-dom", server.url + "/docs")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    # Swagger UI ran and drew the API from /openapi.json: its title, version and operations
    assert 'class="swagger-ui' in dom and "memtrain serve" in dom
    for path in ("/jobs/{job_id}/page", "/jobs/{job_id}/log", "/healthz"):
        assert path in dom, path


def test_without_the_swagger_package_docs_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", None)  # import fails as if not installed
    with ThreadServer(tmp_path / "state") as s:
        status, text = s.request("GET", "/docs")
        assert status == 503 and "pip install 'memtrain[service]'" in text
        assert s.request("GET", "/healthz")[0] == 200  # the service runs
