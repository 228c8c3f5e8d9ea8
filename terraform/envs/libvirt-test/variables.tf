variable "libvirt_uri" {
  description = "libvirt connection URI of the KVM host."
  type        = string
  default     = "qemu:///system"
}

variable "pool" {
  description = "libvirt storage pool for the images and the machines' volumes (must exist: `virsh pool-list`)."
  type        = string
  default     = "default"
}

variable "name_prefix" {
  description = "Prefix of every libvirt name (network, domains, volumes), so that two clusters can share a host."
  type        = string
  default     = "cz-"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.name_prefix))
    error_message = "name_prefix must be up to 16 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "network_cidr" {
  description = "IPv4 network of the cluster (NAT to the outside; the host is .1, the machines .10 on)."
  type        = string
  default     = "10.77.0.0/24"
}

variable "nats_count" {
  description = "NATS servers (odd; the nats image routes to nats-1 … nats-3)."
  type        = number
  default     = 3
}

variable "consul_count" {
  description = "Consul servers (odd)."
  type        = number
  default     = 3
}

variable "redis_mode" {
  description = "Redis presence: \"single\" (one server), \"sentinel\" (master, two replicas, three Sentinels) or \"cluster\" (Redis Cluster, three masters). See terraform/modules/cluster-plan."
  type        = string
  default     = "single"
}

variable "redis_count" {
  description = "Redis servers: 1 with redis_mode = \"single\", 3 with \"sentinel\" or \"cluster\"."
  type        = number
  default     = 1
}

variable "chat_count" {
  description = "chat-zinx nodes (>= 1)."
  type        = number
  default     = 2
}

variable "lb_count" {
  description = "Load balancers (HAProxy in front of the chat nodes, for the original v1 clients; 0: none)."
  type        = number
  default     = 1
}

variable "memory_mib" {
  description = "Memory per machine of each role, in MiB (floors: 512; chat and nats 768)."
  type = object({
    nats   = number
    consul = number
    redis  = number
    chat   = number
    lb     = optional(number, 512)
  })
  default = {
    nats   = 1024
    consul = 512
    redis  = 512
    chat   = 768
    lb     = 512
  }
}

variable "vcpus" {
  description = "Virtual CPUs per machine of each role (>= 1)."
  type = object({
    nats   = number
    consul = number
    redis  = number
    chat   = number
    lb     = optional(number, 1)
  })
  default = {
    nats   = 1
    consul = 1
    redis  = 1
    chat   = 1
    lb     = 1
  }
}

variable "versions" {
  description = "image: label of the image build (e.g. `git rev-parse --short HEAD`), part of the base volume names; chat_zinx: the daemon's version."
  type = object({
    image     = string
    chat_zinx = string
  })
  default = {
    image     = "dev"
    chat_zinx = "0.1.0"
  }
}

variable "image_dir" {
  description = "Directory holding result-image-<role>/nixos.qcow2 for the five roles (the out-links of `nix build .#image-<role> --out-link result-image-<role>`). null: the repository's root (three levels up from here)."
  type        = string
  default     = null
}

variable "secrets_dir" {
  description = "Directory of the secrets disks made by ./make-secrets (chat.iso, redis.iso). null: ./secrets next to this file. Only their paths reach the Terraform state."
  type        = string
  default     = null
}

variable "disk_size_bytes" {
  description = "Disk size of every machine in bytes (the image grows into it at first boot)."
  type        = number
  default     = 4294967296
}

variable "ssh_authorized_keys" {
  description = "SSH public keys for root on every machine (e.g. [file(\"~/.ssh/id_ed25519.pub\")])."
  type        = list(string)
  default     = []
}
