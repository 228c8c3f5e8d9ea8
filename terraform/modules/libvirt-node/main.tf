# One VM of the cluster: a copy-on-write disk over the role's image, a cloud-init (NoCloud)
# seed with the machine's user data, an optional read-only secrets disk, and one interface on
# the cluster network with a fixed MAC and address.

resource "libvirt_volume" "disk" {
  name           = "${var.name_prefix}${var.name}.qcow2"
  pool           = var.pool
  base_volume_id = var.base_volume_id
  format         = "qcow2"
  size           = var.disk_size_bytes
}

resource "libvirt_cloudinit_disk" "seed" {
  name      = "${var.name_prefix}${var.name}-seed.iso"
  pool      = var.pool
  user_data = var.user_data
  meta_data = var.meta_data
}

# The secrets disk: the content is uploaded from the file, the state keeps its path.
resource "libvirt_volume" "secrets" {
  count  = var.secrets_iso == null ? 0 : 1
  name   = "${var.name_prefix}${var.name}-secrets.iso"
  pool   = var.pool
  source = var.secrets_iso
  format = "raw"
}

resource "libvirt_domain" "vm" {
  name      = "${var.name_prefix}${var.name}"
  memory    = var.memory_mib
  vcpu      = var.vcpus
  autostart = false
  cloudinit = libvirt_cloudinit_disk.seed.id

  cpu {
    mode = "host-passthrough"
  }

  disk {
    volume_id = libvirt_volume.disk.id
  }

  dynamic "disk" {
    for_each = libvirt_volume.secrets
    content {
      volume_id = disk.value.id
    }
  }

  network_interface {
    network_id     = var.network_id
    hostname       = var.name
    mac            = var.mac
    addresses      = [var.address]
    wait_for_lease = false
  }

  # The images log to the serial console (console=ttyS0): `virsh console <domain>`.
  console {
    type        = "pty"
    target_type = "serial"
    target_port = "0"
  }

  graphics {
    type        = "vnc"
    listen_type = "address"
  }
}
