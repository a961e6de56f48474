"""Dashboards, alert rules and scrape relabelling as code (tools/generate_monitoring.py writes
them into the chart). Nothing at run time imports this package."""
