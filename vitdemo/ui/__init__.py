"""The Gradio page: one module per tab (`create_<tab>_tab`), wiring only; logic lives in the
capability packages."""
