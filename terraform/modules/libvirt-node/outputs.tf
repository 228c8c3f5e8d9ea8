output "id" {
  description = "libvirt ID (UUID) of the domain."
  value       = libvirt_domain.vm.id
}

output "domain_name" {
  description = "Name of the libvirt domain (virsh console/shutdown/… take it)."
  value       = libvirt_domain.vm.name
}

output "address" {
  description = "The machine's IPv4 address."
  value       = var.address
}
