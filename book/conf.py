# Sphinx configuration of the course book (`make book`, d2lib/book.py). The build copies this file next to
# the executed lessons in a staging folder and runs sphinx-build there; nothing is fetched at build or
# read time: the theme is a pip package, MathJax comes from npm (tools/book) and is served by the site.
project = "D²VLM Lab"
author = "D²VLM Lab"
copyright = "D²VLM Lab contributors"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
master_doc = "index"
language = "en"

# The lessons as executed by the pipeline: never run them here.
nb_execution_mode = "off"
# Widgets as their static fallback: drop the live-widget output (it needs a kernel and widget JS from a
# CDN) so the text/html snapshot the explorer adds (or the text) is shown; load no widget JavaScript.
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "application/vnd.jupyter.widget-state+json", None),
]
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]

html_theme = "sphinx_book_theme"
html_title = "D²VLM Lab"
html_static_path = ["_static"]
html_theme_options = {
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
}
html_context = {"default_mode": "light"}  # the theme's light/dark switch starts on light
html_last_updated_fmt = None  # no build time in the pages
html_copy_source = False
html_show_sourcelink = False
# MathJax 3 from npm, copied into _static/mathjax by d2lib/book.py (the default loads it from a CDN).
mathjax_path = "mathjax/tex-chtml-full.js"
