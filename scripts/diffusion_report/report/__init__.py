"""Report: each stage's section built from its artifacts (CSV, PNG, JSON), LaTeX to HTML, and the
HTML and PDF renderers. Never imports torch or diffusers: the report environment has neither.
"""
