"""Reports for people: PNG figures (matplotlib) and one self-contained HTML file (Jinja2).

``model.py`` holds what a report shows (read from the database by the CLI); ``figures.py`` draws it;
``html.py`` renders the page with every figure inlined, so it opens without a network.
"""
