"""OAuth 2.0 for sources and REST sinks: one token per credential, shared by every worker.

``manager.TokenManager`` decides when to refresh; ``requests_auth.OAuth2Auth`` attaches the
token and replays once on a 401; ``grants`` talks to the token endpoint; ``crypto`` encrypts.
"""
