"""Your own data: the formats people have, read with `datasets`, checked row by row.

Three formats, recognised by their columns (`load_local`, `load_hub`):

    conversation   {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}
                   several turns, an optional system prompt first; the loss covers every
                   assistant turn and nothing else (kit.engine.data.encode_conversation)
    alpaca         {"instruction": ..., "input": ... (optional), "output": ...}
                   -> prompt = instruction (+ a blank line + input), response = output
    prompt/response  two columns you name (prompt_column, response_column)

A row that cannot be used (a turn without a role, an unknown role, a system turn after the
first, an empty content, a conversation that does not end on an assistant turn; an empty or
missing prompt or response) is never dropped silently. `skip_bad_rows`:
    None (default)  a malformed conversation is an error naming the file, row, line and
                    field; rows with an empty prompt or response are skipped with a warning
    False           every row that cannot be used is such an error (python -m kit finetune)
    True            every such row is skipped, with a SkippedRowsWarning that counts them

    files  reading files and hub datasets into splits     rows  each row made an example
"""
from kit.engine.formats.files import JSONL_HINT, load_hub, load_local  # noqa: F401
from kit.engine.formats.rows import (FILE_KINDS, FORMATS, ROLES, SKIP_HINT, SkippedRowsWarning,  # noqa: F401
                                     check_conversation, detect)
