"""What the learner sees: figures (plots), controls (widgets), the lessons rendered from a run
(lessons), the notebooks' helpers (notebook) and exercise checks (check).
"""
