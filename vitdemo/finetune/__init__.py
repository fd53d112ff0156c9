"""LoRA / QLoRA fine-tuning: data (archives, formats, records), config, trainer, evaluation,
jobs and their runner process, the Fine-tune page's service, the `finetune` / `eval` commands."""
