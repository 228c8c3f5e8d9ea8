# dmacvicar/libvirt pinned to 0.8.3 exactly, as in modules/libvirt-node (the schema changed
# inside 0.9.x). `terraform init` here needs the provider registry (or a mirror).
terraform {
  required_version = ">= 1.9.0"
  required_providers {
    libvirt = {
      source  = "dmacvicar/libvirt"
      version = "= 0.8.3"
    }
  }
}

provider "libvirt" {
  uri = var.libvirt_uri
}
