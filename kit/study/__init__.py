"""The comparison of the three methods: the runs (run), the statistics of the summary (report),
its figures (plots). `python -m kit study`.
"""
