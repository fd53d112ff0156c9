"""Where the model looks: image-token layouts, capture during generation, maps and rollout,
rendering, the Attention tab's view logic, the pointing game, the `attend` command."""
