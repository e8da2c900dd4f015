"""The phantom benchmark's code (the command line: ``benchmarks/phantom_benchmark.py``).

``common``: settings and shared helpers; ``cohorts``: conditions and the synthetic cohorts;
``inputs``: fODFs, fODF noise and a subject's tracker inputs; ``runners``: the trackers (baselines
and GenTract) and the whole run; ``tables``: summary, Markdown tables and figure."""
