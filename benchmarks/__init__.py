"""rtkit's benchmarks: ``make bench`` runs them and writes ``benchmarks/results/``.

Each benchmark reports ratios against baselines measured in the same run (see ``README.md`` in
this directory): ``codec``, ``hub`` (in-process fan-out), ``e2e`` (uvicorn over loopback, with a
separate load-client process) and ``redis`` (two server processes sharing Redis).
"""
