"""pciplan: plan the PCI/PCIe topology of a libvirt domain with CP-SAT."""

__version__ = "0.1.0"
