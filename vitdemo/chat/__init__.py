"""Chat: conversation -> prompt (the chat template) -> streamed answer; one user's session."""
