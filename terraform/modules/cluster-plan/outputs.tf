output "nodes" {
  description = "Every machine by name (nats-1, consul-1, redis-1, chat-1, lb-1, …): role, index in its role, IPv4 address, MAC address, memory_mib, vcpus and image (the flake package image-<role> it boots)."
  value       = local.nodes
}

output "names" {
  description = "Machine names per role: { nats = [...], consul = [...], redis = [...], chat = [...], lb = [...] }."
  value       = local.names_of
}

output "addresses" {
  description = "IPv4 addresses per role, in the order of names."
  value       = local.addresses_of
}

output "network" {
  description = "The network: cidr, gateway (the KVM host, .1), netmask and prefix_length."
  value = {
    cidr          = var.network_cidr
    gateway       = local.gateway
    netmask       = local.netmask
    prefix_length = local.prefix_length
  }
}

output "dns_hosts" {
  description = "Host names and addresses the network's DNS must answer: every machine, plus the aliases consul and redis (the first server of each)."
  value       = local.dns_hosts
}

output "nats_urls" {
  description = "Client URLs of the NATS servers (nats://nats-N:4222)."
  value       = local.nats_urls
}

output "nats_routes" {
  description = "Cluster routes of each NATS server: every other server, nats://nats-N:6222."
  value       = local.nats_routes
}

output "nats_replicas" {
  description = "JetStream replicas of the chat nodes' stream and buckets: 3 with at least three servers, else 1."
  value       = local.nats_replicas
}

output "consul_retry_join" {
  description = "retry_join of each Consul server: the addresses of the other servers."
  value       = local.consul_retry_join
}

output "consul_bootstrap_expect" {
  description = "bootstrap_expect of every Consul server: the number of servers."
  value       = var.consul_count
}

output "consul_ui_url" {
  description = "URL of the Consul web UI on the first Consul server."
  value       = "http://${local.addresses_of.consul[0]}:${local.consul_port}/ui/"
}

output "consul_http_addr" {
  description = "HTTP address of the first Consul server, by IP (for clients on the KVM host)."
  value       = "http://${local.addresses_of.consul[0]}:${local.consul_port}"
}

output "redis_address" {
  description = "host:port of the Redis server (its password is on the machines only)."
  value       = local.redis_address
}

output "redis_url" {
  description = "The chat nodes' redis.url without the password (redis_mode: redis://, redis-sentinel:// or redis-cluster://)."
  value       = local.redis_url
}

output "chat_configs" {
  description = "Each chat node's configuration, { section = { key = value } } with the keys of docs/configuration.md (redis.url without the password, which the machine adds)."
  value       = local.chat_configs
}

output "chat_configs_toml" {
  description = "Each chat node's configuration as a TOML file, as `chat-zinx config --check FILE` takes it."
  value       = local.chat_configs_toml
}

output "chat_env" {
  description = "Each chat node's CHAT_ZINX_* variables that cloud-init writes to /etc/chat-zinx/env (non-secret part: the machine appends CHAT_ZINX_REDIS__URL with the password)."
  value       = local.chat_env
}

output "lb_endpoints" {
  description = "address:port of every load balancer (HAProxy, role lb): where clients that connect to one address (the original v1 clients) connect."
  value       = local.lb_endpoints
}

output "chat_endpoints" {
  description = "address:port of every chat node's chat listener (its server.advertise_addr)."
  value       = [for name, config in local.chat_configs : config.server.advertise_addr]
}

output "nixos_settings" {
  description = "Per machine, the NixOS option paths and values that make it this machine of the cluster (host name, NATS routes, Consul retry_join and bootstrap_expect, chat settings): what cloud-init applies to the generic role images."
  value       = local.nixos_settings
}

output "user_data" {
  description = "Per machine, its cloud-init user data (#cloud-config): host name, SSH keys and a bootcmd script that installs the per-machine files. Contains no secret."
  value       = local.user_data
}

output "meta_data" {
  description = "Per machine, its cloud-init NoCloud meta data (instance-id, local-hostname)."
  value       = local.meta_data
}

output "client_command" {
  description = "A ready-to-paste command that starts the chat client on the least-loaded healthy chat node (found through Consul)."
  value       = "chat-zinx client --consul http://${local.addresses_of.consul[0]}:${local.consul_port}"
}

output "versions" {
  description = "The version labels the plan was made with (image build, chat-zinx)."
  value       = var.versions
}
