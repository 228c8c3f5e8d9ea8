variable "nats_count" {
  description = "Number of NATS JetStream servers (nats-1 … nats-N). Odd, for a JetStream quorum; 3 gives the chat nodes nats.replicas = 3, 1 gives replicas = 1."
  type        = number
  default     = 3

  validation {
    condition     = var.nats_count >= 1 && floor(var.nats_count) == var.nats_count
    error_message = "nats_count must be a whole number >= 1."
  }
  validation {
    condition     = var.nats_count % 2 == 1
    error_message = "nats_count must be odd (1, 3, 5, …): an even number of JetStream servers tolerates no more failures than one fewer and can split its vote."
  }
}

variable "consul_count" {
  description = "Number of Consul servers (consul-1 … consul-N), all in bootstrap_expect = N and retry_join of each other. Odd, for a Raft quorum."
  type        = number
  default     = 3

  validation {
    condition     = var.consul_count >= 1 && floor(var.consul_count) == var.consul_count
    error_message = "consul_count must be a whole number >= 1."
  }
  validation {
    condition     = var.consul_count % 2 == 1
    error_message = "consul_count must be odd (1, 3, 5, …): an even number of Raft servers tolerates no more failures than one fewer."
  }
}

variable "redis_mode" {
  description = "Which Redis presence runs on the redis machines: \"single\" (one server, redis_count = 1), \"sentinel\" (redis-1 the first master, redis-2 and redis-3 its replicas, a Sentinel on each, quorum 2; redis_count = 3) or \"cluster\" (a Redis Cluster of three masters without replicas, created by redis-1 at its first boot; redis_count = 3; capacity, not availability: with one server down the chat nodes' client loses the whole cluster). The chat nodes' redis.url follows it."
  type        = string
  default     = "single"

  validation {
    condition     = contains(["single", "sentinel", "cluster"], var.redis_mode)
    error_message = "redis_mode must be \"single\", \"sentinel\" or \"cluster\"."
  }
}

variable "redis_count" {
  description = "Number of Redis servers: 1 with redis_mode = \"single\", 3 with \"sentinel\" or \"cluster\"."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_count == (var.redis_mode == "single" ? 1 : 3)
    error_message = "redis_count must be 1 with redis_mode = \"single\" and 3 with \"sentinel\" or \"cluster\" (see the redis image)."
  }
}

variable "chat_count" {
  description = "Number of chat-zinx nodes (chat-1 … chat-N)."
  type        = number
  default     = 2

  validation {
    condition     = var.chat_count >= 1 && floor(var.chat_count) == var.chat_count
    error_message = "chat_count must be a whole number >= 1."
  }
}

variable "lb_count" {
  description = "Number of load balancers (lb-1 … lb-N): HAProxy in front of the chat nodes for clients that connect to one address (the original v1 clients). 0: none."
  type        = number
  default     = 1

  validation {
    condition     = var.lb_count >= 0 && floor(var.lb_count) == var.lb_count
    error_message = "lb_count must be a whole number >= 0."
  }
}

variable "network_cidr" {
  description = "IPv4 network of the cluster. The host (gateway) is .1, the machines get fixed addresses from host number 10 on, in the order NATS, Consul, Redis, chat, load balancer; the network must hold them all (and its broadcast address)."
  type        = string
  default     = "10.77.0.0/24"

  validation {
    condition     = can(cidrhost(var.network_cidr, 0)) && can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+/[0-9]+$", var.network_cidr))
    error_message = "network_cidr must be an IPv4 CIDR such as 10.77.0.0/24."
  }
  validation {
    condition = (
      !can(cidrhost(var.network_cidr, 0)) ||
      pow(2, 32 - tonumber(split("/", var.network_cidr)[1])) >= 10 + var.nats_count + var.consul_count + var.redis_count + var.chat_count + var.lb_count + 1
    )
    error_message = "network_cidr is too small: it needs 10 reserved addresses, one per machine (nats_count + consul_count + redis_count + chat_count + lb_count) and a broadcast address."
  }
}

variable "memory_mib" {
  description = "Memory of each machine of a role, in MiB. Floors: 512 for every role (a NixOS guest), 768 for chat (Argon2id hashes, auth.hash_concurrency × ~19 MiB) and NATS (JetStream). lb may be left out (512)."
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

  validation {
    condition     = alltrue([for role, mib in var.memory_mib : mib >= 512])
    error_message = "memory_mib: every role needs at least 512 MiB."
  }
  validation {
    condition     = var.memory_mib.chat >= 768 && var.memory_mib.nats >= 768
    error_message = "memory_mib: chat and nats need at least 768 MiB."
  }
}

variable "vcpus" {
  description = "Virtual CPUs of each machine of a role (>= 1). lb may be left out (1)."
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

  validation {
    condition     = alltrue([for role, n in var.vcpus : n >= 1 && floor(n) == n])
    error_message = "vcpus: every role needs a whole number >= 1."
  }
}

variable "versions" {
  description = "Version labels of what the machines run: image (the build of the flake's images, e.g. the git revision they were built from; part of the base volume names, so a new build makes new volumes instead of overwriting the disks the VMs boot from) and chat_zinx (the daemon's version, shown in outputs)."
  type = object({
    image     = string
    chat_zinx = string
  })
  default = {
    image     = "dev"
    chat_zinx = "0.1.0"
  }

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$", var.versions.image))
    error_message = "versions.image must be 1-40 letters, digits, '.', '_' or '-' (it goes into volume names)."
  }
}

variable "ssh_authorized_keys" {
  description = "SSH public keys allowed to log in as root on every machine (cloud-init). Public keys only: nothing secret."
  type        = list(string)
  default     = []
}
