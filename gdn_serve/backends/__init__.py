"""GDN decode backends: pure resolution rules (`rules`) and the runtime registry (`registry`).

Kept empty on purpose: `rules` must import without torch, triton or vLLM (the operator uses it),
so nothing heavy may be imported when this package is.
"""
