"""Other backends behind the Machine API (real QEMU)."""
