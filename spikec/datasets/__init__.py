"""Small, offline data sets that spikec uses for its default model and its checks."""

from spikec.datasets.digits import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    QUESTION_TYPES,
    REQUIRED_FIELDS,
    SPLITS,
    DigitItem,
    EvalItem,
    digit_pixels_to_uint8,
    all_texts,
    load_digit_images,
    load_eval_folder,
    make_item,
    make_items,
    render_image,
    split_indices,
    write_eval_folder,
)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "QUESTION_TYPES",
    "REQUIRED_FIELDS",
    "SPLITS",
    "DigitItem",
    "EvalItem",
    "digit_pixels_to_uint8",
    "all_texts",
    "load_digit_images",
    "load_eval_folder",
    "make_item",
    "make_items",
    "render_image",
    "split_indices",
    "write_eval_folder",
]
