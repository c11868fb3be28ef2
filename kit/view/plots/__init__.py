"""Plots of what the engine returns (matplotlib only): each function takes plain records
(dicts, lists, Ledger/Estimate.as_dict()) and returns a Figure; notebooks save it with
kit.view.notebook.save_figure. Nothing in the engine imports this module.

    training  ledger and losses      lora     ranks and spectra      quant  code books and bits
    choosing  overview and calculator  scaling  memory across GPUs
"""
from kit.view.plots.choosing import (calculator_figure, estimate_vs_measured, overview_figure,  # noqa: F401
                                     seed_table_figure)
from kit.view.plots.lora import (compare_bars, file_sizes, lora_count_at, lora_params_vs_rank,  # noqa: F401
                                 rank_sweep, singular_values, truncation_loss)
from kit.view.plots.quant import (bits_figure, codebooks_on_histogram, grouped_bars,  # noqa: F401
                                  memory_and_quality)
from kit.view.plots.scaling import (SCALING_COLORS, SCALING_PARTS, per_gpu_breakdown,  # noqa: F401
                                    scaling_bars)
from kit.view.plots.training import (LEDGER_COLORS, LEDGER_PARTS, estimate_vs_seed, ledger_bars,  # noqa: F401
                                     loss_curves, train_val_loss)
