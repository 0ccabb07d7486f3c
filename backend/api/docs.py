"""The API's own documentation page, offline: Swagger UI from the swagger-ui-py package (which ships
its dist files, Apache-2.0), served by this backend, so /docs works without internet; and a favicon."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Swagger UI's dist files as the package installs them (swagger-ui-bundle.js, swagger-ui.css, ...).
SWAGGER_DIST = Path(swagger_ui.__file__).parent / "static"
FAVICON = Path(__file__).parent / "static" / "favicon.svg"
ASSETS = "/docs-assets"


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI from local assets), /docs-assets/*, /favicon.svg and /favicon.ico.

    The app must be built with ``docs_url=None`` so FastAPI's CDN-loading page is not installed."""
    if not (SWAGGER_DIST / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"swagger-ui-py is installed without its dist files ({SWAGGER_DIST}); "
                           "reinstall it: pip install --force-reinstall swagger-ui-py")
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_DIST), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} – API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url="/favicon.svg")

    @app.get("/favicon.svg", include_in_schema=False)
    async def favicon_svg() -> FileResponse:
        return FileResponse(FAVICON, media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon_ico() -> FileResponse:
        # Browsers ask for /favicon.ico by name and render the SVG served under it.
        return FileResponse(FAVICON, media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})
