"""The ihub engine: configuration, OAuth 2.0 sessions, REST sources, delta, sinks, retry policy.

Nothing here imports Celery, and nothing connects anywhere at import.
"""
