"""The status page: routes, JSON API, metrics and page rendering, served by one WSGI server."""
