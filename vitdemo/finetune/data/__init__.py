"""Fine-tune data in, checked: safe zip extraction, annotation formats, validated records."""
