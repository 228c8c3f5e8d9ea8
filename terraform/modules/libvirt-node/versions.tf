# Written against dmacvicar/libvirt 0.8.3 exactly (the 0.7/0.8 schema: libvirt_volume,
# libvirt_cloudinit_disk, libvirt_domain with disk/network_interface blocks). The provider's
# schema changed inside 0.9.x; do not loosen this pin without rewriting against the new one.
terraform {
  required_version = ">= 1.9.0"
  required_providers {
    libvirt = {
      source  = "dmacvicar/libvirt"
      version = "= 0.8.3"
    }
  }
}
