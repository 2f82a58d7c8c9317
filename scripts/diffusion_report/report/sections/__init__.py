"""One module per report section, each with ``report_context(files, config) -> dict``: the numbers
and claims a section template shows, read from that stage's artifacts.
"""
