"""/docs without internet: Swagger UI's script and styles served by the service itself, from the
swagger-ui-bundle-v2 package (Swagger UI 5, Apache-2.0; its licence ships in the wheel), instead of
FastAPI's default, which loads them from a CDN and leaves the page blank on a machine with no
internet. ReDoc is not offered: no package ships it, and /docs covers the same API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, PlainTextResponse

PREFIX = "/docs-assets"
# the files /docs loads; nothing else of the bundle is served
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}


MISSING = ("/docs needs Swagger UI's files, from the swagger-ui-bundle-v2 package: pip install 'memtrain[service]' "
           "(the API itself works without them; its schema is at /openapi.json)")


def assets_dir() -> Path | None:
    """Where the package keeps Swagger UI's files; None when it is not installed (an environment
    set up before memtrain needed it): the service still runs and /docs says what to install."""
    try:
        import swagger_ui_bundle  # noqa: PLC0415 - only when the service starts
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


def add_docs(app, title: str) -> None:
    """GET /docs (Swagger UI) and its assets under /docs-assets. The app is built with
    docs_url=None and redoc_url=None; /openapi.json stays FastAPI's own."""
    root = assets_dir()

    @app.get("/docs", include_in_schema=False)
    def docs():
        if root is None:
            return PlainTextResponse(MISSING, status_code=503)
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} - API",
                                   swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{PREFIX}/favicon-32x32.png",
                                   # no validator badge: Swagger UI would fetch it from validator.swagger.io
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get(PREFIX + "/{name}", include_in_schema=False)
    def asset(name: str):
        if root is None or name not in ASSETS:
            raise HTTPException(404, f"{name}: not one of the documentation's files")
        return FileResponse(root / name, media_type=ASSETS[name],
                            headers={"Cache-Control": "public, max-age=86400"})
