"""Sphinx extension for the book build (listed in _config.yml): headless execution and library-aware caching.

- Sets DIFFGEN_HEADLESS=1 before myst-nb starts kernels, so chapters show their static figures instead of
  instantiating ipywidgets (which stalls headless nbclient intermittently: jupyter/nbclient#312, nteract/papermill#723).
- Serves MathJax from the local `jupyter-server-mathjax` package (copied into _static/mathjax), so math renders in
  the built HTML without a network; the default configuration loads it from a CDN.
- jupyter-cache keys a notebook by its own code cells only, and Sphinx re-reads only documents whose files changed.
  When diffgen's source hash differs from the one stamped in the execution cache, this wipes the cache and marks
  every notebook outdated, so a library change re-executes every chapter.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.util import logging

from . import __version__, source_hash

STAMP_NAME = "diffgen-source-hash"


def _cache_dir(app) -> Path | None:
    config = getattr(app.env, "mystnb_config", None)
    path = getattr(config, "execution_cache_path", None)
    return Path(path) if path else None


def refresh_execution_cache(cache_dir: Path, current: str) -> bool:
    """Delete `cache_dir` unless it is stamped with `current`; leave it stamped. Returns True when it was stale."""
    stamp = cache_dir / STAMP_NAME
    stale = not stamp.is_file() or stamp.read_text().strip() != current
    if stale:
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(current + "\n")
    return stale


def _on_builder_inited(app) -> None:
    cache_dir = _cache_dir(app)
    app.env.diffgen_stale = bool(cache_dir) and refresh_execution_cache(cache_dir, source_hash())
    if app.env.diffgen_stale:
        logging.getLogger(__name__).info(f"diffgen {__version__} source {source_hash()}: re-executing all notebooks")


def _on_env_get_outdated(app, env, added, changed, removed) -> list[str]:
    if not getattr(env, "diffgen_stale", False):
        return []
    return [doc for doc in env.found_docs if env.doc2path(doc).endswith(".ipynb") and doc not in added]


def _local_mathjax() -> Path | None:
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    return Path(jupyter_server_mathjax.__file__).resolve().parent / "static"


def _on_config_inited(app, config) -> None:
    if _local_mathjax():
        config.mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"  # the config the package ships
        config.mathjax2_config = {
            # MathJax 2 spelling of what myst sets for MathJax 3: typeset math inside sections marked as ignored
            "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area",
                        "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
            # the package ships the STIX-Web fonts only (as Jupyter's own notebook configured it)
            "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "preferredFont": None, "imageFont": None},
        }


def _on_build_finished(app, exception) -> None:
    source = _local_mathjax()
    if exception is None and source and app.builder.format == "html":
        shutil.copytree(source, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app):
    os.environ["DIFFGEN_HEADLESS"] = "1"
    app.connect("builder-inited", _on_builder_inited, priority=900)  # after myst-nb has resolved the cache path
    app.connect("env-get-outdated", _on_env_get_outdated)
    app.connect("config-inited", _on_config_inited)
    app.connect("build-finished", _on_build_finished)
    return {"version": __version__, "parallel_read_safe": True, "parallel_write_safe": True}
