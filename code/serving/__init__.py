"""The serving image's side of serving: the gateway on port 8080, the model server it fronts, the
handler service each model-server worker runs. The model's own handlers (``inference.py``) travel
in the model artifact instead.

Nothing here imports ``classifier``: the artifact's ``code/`` folder, put first on the workers'
``PYTHONPATH``, carries its own copy of that package.
"""
