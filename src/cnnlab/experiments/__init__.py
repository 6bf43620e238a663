"""Reading finished (or failed) run directories and summarising groups of them: sweeps, studies, comparisons.

cnnlab.run.records reads one run dir into a RunRecord and records why a run did not finish; `tables` turns
records into tables (CSV, Markdown) with a mean +- std over seeds. The Hydra multirun callback and
cnnlab-compare build on them.
"""
