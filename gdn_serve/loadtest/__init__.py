"""Load tests for the OpenAI endpoint: Locust users that stream completions and chats and
report per-request token timings, SLO verdicts, a summary table and a plot (docs/loadtest.md).

The deciding parts are pure (`stream` parses and measures one response, `stats` summarises and
judges, `workload` builds requests, `timeline` buckets results over time); `locustfile` (the
Locust users, HTTP), `report` (files) and `main` (`make loadtest`) are the edges.
"""
