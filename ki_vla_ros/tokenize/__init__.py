"""Tokenizers: FAST and naive action tokenizers, text BPE, and the prompt builder."""

from ki_vla_ros.tokenize.fast import FastDecodeError, FastTokenizer
from ki_vla_ros.tokenize.naive import NaiveTokenizer, load_action_tokenizer
from ki_vla_ros.tokenize.prompt import PromptBuilder, collate, discretize_state
from ki_vla_ros.tokenize.text import TextTokenizer

__all__ = [
    "FastDecodeError",
    "FastTokenizer",
    "NaiveTokenizer",
    "PromptBuilder",
    "TextTokenizer",
    "collate",
    "discretize_state",
    "load_action_tokenizer",
]
