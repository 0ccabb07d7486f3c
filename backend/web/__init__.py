"""The household dashboard: server-rendered pages (Jinja2, SVG charts), sign-in and sessions.

Mounted on the API app by ``create_app`` (:func:`meterchain.backend.web.app.mount_web`).
"""
