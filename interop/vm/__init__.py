"""OpenIKED with a real kernel ESP data plane, in a qemu VM (see docs/iked-vm.md).

``image`` builds the boot files (Debian's kernel, a cached initramfs with busybox,
iked and the XFRM/ESP modules); ``runner`` boots it on a tap device inside a test
namespace; ``case`` is the interop case that ``python -m interop.vm`` and
tests/test_iked_vm.py run: pyike (home) <-> iked (VM) carrying ping6 and TCP 25.
"""
