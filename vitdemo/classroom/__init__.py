"""The classroom model: generated scenes of coloured shapes, its tokenizer and parts, the staged
build recipe, its evaluation, and the `build-classroom` / `eval-classroom` commands."""
