# A test cluster on one KVM host: one NAT network, NATS ×3, Consul ×3, Redis ×1 (×3 with
# redis_mode = "sentinel" or "cluster"), chat ×2 and a load balancer ×1 (by default), booted from the flake's role images with cloud-init. See
# terraform/README.md.

locals {
  repo_root   = abspath("${path.module}/../../..")
  image_dir   = var.image_dir == null ? local.repo_root : var.image_dir
  secrets_dir = var.secrets_dir == null ? abspath("${path.module}/secrets") : var.secrets_dir
  roles       = ["nats", "consul", "redis", "chat", "lb"]
  # Which role gets which secrets disk (see make-secrets): chat (token secret and Redis
  # password) and redis (its password); the load balancer has no secret.
  secrets_iso = {
    nats   = null
    consul = null
    redis  = "${local.secrets_dir}/redis.iso"
    chat   = "${local.secrets_dir}/chat.iso"
    lb     = null
  }
}

module "plan" {
  source = "../../modules/cluster-plan"

  nats_count          = var.nats_count
  consul_count        = var.consul_count
  redis_mode          = var.redis_mode
  redis_count         = var.redis_count
  chat_count          = var.chat_count
  lb_count            = var.lb_count
  network_cidr        = var.network_cidr
  memory_mib          = var.memory_mib
  vcpus               = var.vcpus
  versions            = var.versions
  ssh_authorized_keys = var.ssh_authorized_keys
}

resource "libvirt_network" "cluster" {
  name      = "${var.name_prefix}net"
  mode      = "nat"
  domain    = "cz.test"
  addresses = [var.network_cidr]
  autostart = true

  dhcp {
    enabled = true
  }

  dns {
    enabled    = true
    local_only = true

    dynamic "hosts" {
      for_each = module.plan.dns_hosts
      content {
        hostname = hosts.value.hostname
        ip       = hosts.value.ip
      }
    }
  }
}

# The role images, uploaded once per role and build label; every machine's disk is a
# copy-on-write overlay of its role's image.
resource "libvirt_volume" "image" {
  for_each = toset(local.roles)

  name   = "${var.name_prefix}image-${each.key}-${var.versions.image}.qcow2"
  pool   = var.pool
  source = "${local.image_dir}/result-image-${each.key}/nixos.qcow2"
  format = "qcow2"
}

module "node" {
  source   = "../../modules/libvirt-node"
  for_each = module.plan.nodes

  name            = each.key
  name_prefix     = var.name_prefix
  pool            = var.pool
  base_volume_id  = libvirt_volume.image[each.value.role].id
  disk_size_bytes = var.disk_size_bytes
  memory_mib      = each.value.memory_mib
  vcpus           = each.value.vcpus
  network_id      = libvirt_network.cluster.id
  address         = each.value.address
  mac             = each.value.mac
  user_data       = module.plan.user_data[each.key]
  meta_data       = module.plan.meta_data[each.key]
  secrets_iso     = local.secrets_iso[each.value.role]
}
