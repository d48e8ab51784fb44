"""The report stage: a static HTML page of a run's outputs.

``config`` (inputs and limits) -> ``gather`` (reads the stage folders through
``reading``, ``groups``, ``metadata``; makes images in ``thumbnails`` and
``plots``) -> ``page`` (Jinja2 templates in ``templates/``) -> ``render``
(the entry point, :func:`render_report`).
"""
