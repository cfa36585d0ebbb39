"""Running target code on this machine as closely to the device as it allows (qemu-user for ARM)."""
