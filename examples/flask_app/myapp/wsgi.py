"""The WSGI entry point: ``gunicorn ... myapp.wsgi:app``."""

from myapp import create_app

app = create_app()
