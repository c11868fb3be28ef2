"""The command lines: finetune, chat, gpu-check, diagnose, the notebook runner, recipes, links.
"""
