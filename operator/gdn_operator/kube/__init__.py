"""The Kubernetes I/O edge: client construction, verbs, list+watch informers, events.

Everything here speaks plain dicts (the JSON the API server sends), one small generic client for
every resource: core, coordination and custom resources alike, with the errors, retries and
backoff in one place.
"""
