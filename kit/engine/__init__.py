"""Training and what it needs: tasks and batches (data), your own files (formats), the loop
(train), evaluation (evaluate), checkpoints, adapters, answers side by side (compare).
Returns plain records; draws nothing.
"""
