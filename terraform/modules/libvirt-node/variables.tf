variable "name" {
  description = "Machine name (also its host name and the prefix of its volumes), e.g. chat-1."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.name))
    error_message = "name must be a host name: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "name_prefix" {
  description = "Prefix of the libvirt domain and volume names, so that several clusters can share a host (e.g. cz- gives domain cz-chat-1)."
  type        = string
  default     = "cz-"
}

variable "pool" {
  description = "libvirt storage pool of the machine's volumes."
  type        = string
  default     = "default"
}

variable "base_volume_id" {
  description = "ID of the base volume: the role's qcow2 image built by the flake (packages.x86_64-linux.image-<role>), uploaded once per role by the root module. The machine's disk is a copy-on-write overlay of it."
  type        = string
}

variable "disk_size_bytes" {
  description = "Size of the machine's disk in bytes (>= the image's size; the image grows its file system to fill it at first boot). null keeps the image's size."
  type        = number
  default     = 4294967296

  validation {
    condition     = var.disk_size_bytes == null || try(var.disk_size_bytes >= 1073741824, false)
    error_message = "disk_size_bytes must be at least 1 GiB (1073741824) or null."
  }
}

variable "memory_mib" {
  description = "Memory of the machine, in MiB (>= 512: a NixOS guest)."
  type        = number

  validation {
    condition     = var.memory_mib >= 512
    error_message = "memory_mib must be at least 512."
  }
}

variable "vcpus" {
  description = "Virtual CPUs of the machine (>= 1)."
  type        = number
  default     = 1

  validation {
    condition     = var.vcpus >= 1
    error_message = "vcpus must be at least 1."
  }
}

variable "network_id" {
  description = "ID of the libvirt network the machine's one interface is on."
  type        = string
}

variable "address" {
  description = "The machine's fixed IPv4 address on that network (a DHCP reservation of its MAC address)."
  type        = string
}

variable "mac" {
  description = "The interface's MAC address (fixed, so that the DHCP reservation and the address stay the machine's)."
  type        = string

  validation {
    condition     = can(regex("^([0-9a-f]{2}:){5}[0-9a-f]{2}$", var.mac))
    error_message = "mac must be six lower-case hex bytes separated by ':'."
  }
}

variable "user_data" {
  description = "cloud-init user data (#cloud-config) of the machine, from the cluster-plan module. Must contain no secret: it is kept in the Terraform state."
  type        = string
}

variable "meta_data" {
  description = "cloud-init NoCloud meta data (instance-id, local-hostname)."
  type        = string
}

variable "secrets_iso" {
  description = "Path on the KVM host of the role's secrets disk (an ISO 9660 image labelled CZSECRETS, made by envs/libvirt-test/make-secrets), attached read-only as a second disk; null for a role without secrets. Only the path and size land in the Terraform state, not the content."
  type        = string
  default     = null
}
