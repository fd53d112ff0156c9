"""Serving a class: how long a request would wait when the queue is full, and the address
students join (printed at launch, shown on the page with a QR code). Gradio-free."""
