"""The model side every capability shares: loading (quantization, device, dtype), the Engine
(model, processor, adapters, lock), the generation thread, the fallback model, image opening."""
