"""The REST API (SPEC §11): a FastAPI app that `im daemon` mounts under ``/api/v1``.

Like the CLI, each route parses, calls one library function and renders; every request
carries a bearer token (im.security.tokens) and acts as the token's principal.
"""
