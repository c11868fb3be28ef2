"""The from-scratch math the lessons teach, in plain torch and Python: LoRA (lora), quantization
(quant), the statistics of a comparison (stats). Imports nothing of the kit but its catalogue.
"""
