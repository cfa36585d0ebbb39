"""Word-level instruction tokenizer shared by training (dev side) and the robot (runtime side).

The vocabulary is part of the policy's contract: token ids are baked into the trained embedding, so it is
defined once, here, and recorded in a bundle's manifest.
"""

from __future__ import annotations

import numpy as np

VOCABULARY = ("<pad>", "reach", "the", "red", "yellow", "ball")
INSTRUCTION_LENGTH = 4  # tokens per instruction, padded with <pad>


def encode_instruction(text: str) -> np.ndarray:
    """Turn an instruction into INSTRUCTION_LENGTH int64 token ids; unknown words are an error."""
    words = text.lower().split()
    if len(words) > INSTRUCTION_LENGTH:
        raise ValueError(f"instruction has {len(words)} words, at most {INSTRUCTION_LENGTH} fit: {text!r}")
    ids = []
    for word in words:
        if word not in VOCABULARY:
            raise ValueError(f"unknown word {word!r} in instruction {text!r}; the vocabulary is {VOCABULARY}")
        ids.append(VOCABULARY.index(word))
    ids += [0] * (INSTRUCTION_LENGTH - len(ids))
    return np.asarray(ids, dtype=np.int64)
