"""Serving a class: how long a request would wait when the queue is full, the address
students join (printed at launch, shown on the page with a QR code), and the warm-up
answer before the first students ask, and keeping the started server's own objects out of
full garbage collections. Gradio-free."""
