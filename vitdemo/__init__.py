"""vitdemo: chat with images, see where a vision-language model looks, fine-tune it."""

__version__ = "0.1.0"
