output "addresses" {
  description = "IPv4 addresses per role: { nats = [...], consul = [...], redis = [...], chat = [...], lb = [...] }."
  value       = module.plan.addresses
}

output "machines" {
  description = "Every machine: its libvirt domain name and address (`virsh console <domain>`, `ssh root@<address>`)."
  value       = { for name, node in module.node : name => { domain = node.domain_name, address = node.address } }
}

output "nats_urls" {
  description = "Client URLs of the NATS servers (host names resolve inside the cluster network)."
  value       = module.plan.nats_urls
}

output "redis_address" {
  description = "host:port of Redis (password: secrets/redis_password on the KVM host)."
  value       = module.plan.redis_address
}

output "redis_url" {
  description = "The chat nodes' redis.url without the password (redis_mode)."
  value       = module.plan.redis_url
}

output "chat_endpoints" {
  description = "address:port of each chat node's chat listener."
  value       = module.plan.chat_endpoints
}

output "lb_endpoints" {
  description = "address:port of each load balancer: the one address for clients that cannot follow Consul or redirects (the original v1 clients)."
  value       = module.plan.lb_endpoints
}

output "consul_ui_url" {
  description = "Consul web UI (first Consul server): the chat nodes are the healthy instances of service chat-zinx."
  value       = module.plan.consul_ui_url
}

output "client_command" {
  description = "Ready to paste on the KVM host: the chat client on the least-loaded healthy chat node, found through Consul."
  value       = module.plan.client_command
}

output "client_command_direct" {
  description = "Ready to paste on the KVM host: the chat client on chat-1 directly."
  value       = "chat-zinx client ${module.plan.chat_endpoints[0]}"
}

output "client_command_v1" {
  description = "Ready to paste on the KVM host: the chat client as the original v1 client (--v1), through the first load balancer (null without one)."
  value       = length(module.plan.lb_endpoints) > 0 ? "chat-zinx client --v1 ${module.plan.lb_endpoints[0]}" : null
}
