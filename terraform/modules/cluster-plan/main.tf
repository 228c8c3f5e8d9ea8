# The cluster's plan: names, addresses, MACs, NATS routes, Consul retry_join, the Redis
# address, the load balancer's endpoint, each chat node's configuration (docs/configuration.md keys) and each machine's
# cloud-init user data, which is how the flake's generic images (nix/images) take what differs
# between two machines of a role. No secret is computed or stored here: cloud-init copies the
# secrets from a read-only disk labelled CZSECRETS (see terraform/README.md).

locals {
  roles = ["nats", "consul", "redis", "chat", "lb"]
  count_of = {
    nats   = var.nats_count
    consul = var.consul_count
    redis  = var.redis_count
    chat   = var.chat_count
    lb     = var.lb_count
  }
  # First host number of each role: 10, then one after the previous role's last machine.
  first_host = {
    nats   = 10
    consul = 10 + var.nats_count
    redis  = 10 + var.nats_count + var.consul_count
    chat   = 10 + var.nats_count + var.consul_count + var.redis_count
    lb     = 10 + var.nats_count + var.consul_count + var.redis_count + var.chat_count
  }

  prefix_length = tonumber(split("/", var.network_cidr)[1])
  network       = cidrhost(var.network_cidr, 0)
  gateway       = cidrhost(var.network_cidr, 1)
  netmask       = cidrnetmask(var.network_cidr)

  node_list = flatten([
    for role_index, role in local.roles : [
      for i in range(local.count_of[role]) : {
        name       = "${role}-${i + 1}"
        role       = role
        index      = i + 1
        address    = cidrhost(var.network_cidr, local.first_host[role] + i)
        mac        = format("52:54:00:%02x:%02x:%02x", parseint(split(".", local.network)[2], 10), role_index + 1, i + 1)
        memory_mib = var.memory_mib[role]
        vcpus      = var.vcpus[role]
        image      = "image-${role}"
      }
    ]
  ])
  nodes = { for n in local.node_list : n.name => n }

  names_of     = { for role in local.roles : role => [for n in local.node_list : n.name if n.role == role] }
  addresses_of = { for role in local.roles : role => [for n in local.node_list : n.address if n.role == role] }

  # --- NATS: client URLs by host name (resolvable through the network's DNS), full-mesh
  # routes (each server to every other one; the image's nats-server takes its host name as
  # its JetStream server name).
  nats_port         = 4222
  nats_cluster_port = 6222
  nats_urls         = [for name in local.names_of.nats : "nats://${name}:${local.nats_port}"]
  nats_routes = {
    for name in local.names_of.nats : name => [
      for peer in local.names_of.nats : "nats://${peer}:${local.nats_cluster_port}" if peer != name
    ]
  }
  nats_replicas = var.nats_count >= 3 ? 3 : 1

  # --- Consul: every server expects all of them and retry-joins the others by address.
  consul_port = 8500
  consul_retry_join = {
    for n in local.node_list : n.name => [
      for peer in local.node_list : peer.address if peer.role == "consul" && peer.name != n.name
    ] if n.role == "consul"
  }

  # --- Redis (redis_mode): one server, a Sentinel set or a Redis Cluster; the password is
  # added on the machines (never here). Sentinel and Cluster name their servers by address:
  # Sentinel monitors redis-1 by IP, the cluster's nodes announce their IPs.
  redis_port          = 6379
  redis_sentinel_port = 26379
  redis_master_name   = "cz"
  redis_address       = "${local.names_of.redis[0]}:${local.redis_port}"
  redis_url = {
    single = "redis://${local.redis_address}/0"
    sentinel = join("", concat(
      ["redis-sentinel://${local.names_of.redis[0]}:${local.redis_sentinel_port}?sentinelServiceName=${local.redis_master_name}"],
      [for name in slice(local.names_of.redis, 1, length(local.names_of.redis)) : "&node=${name}:${local.redis_sentinel_port}"],
    ))
    cluster = join("", concat(
      ["redis-cluster://${local.redis_address}"],
      [for i, name in slice(local.names_of.redis, 1, length(local.names_of.redis)) : "${i == 0 ? "?" : "&"}node=${name}:${local.redis_port}"],
    ))
  }[var.redis_mode]
  # The same URL with the password the machine reads: a printf format (`%s`).
  redis_url_format = replace(local.redis_url, "://", "://:%s@")
  redis_ips        = local.addresses_of.redis
  # Lines cloud-init writes to /etc/redis/cz-mode.conf, which the redis image's redis.conf
  # includes (with `masterauth <password>` for Sentinel and Cluster, added on the machine);
  # with a single server no file is written (the image includes an empty one). A Cluster has
  # no replicas: `cluster-require-full-coverage no` keeps the other masters serving their
  # slots while one is down.
  redis_mode_conf = {
    for n in local.node_list : n.name => (
      var.redis_mode == "sentinel" ? (n.index == 1 ? "" : "replicaof ${local.redis_ips[0]} ${local.redis_port}\n") :
      var.redis_mode == "cluster" ? "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 5000\ncluster-require-full-coverage no\n" :
      ""
    ) if n.role == "redis"
  }
  # Sentinel's first configuration (it rewrites its own copy afterwards); the passwords
  # (requirepass, sentinel-pass, auth-pass: the chat nodes send the Redis password to the
  # Sentinels too) are added on the machine.
  redis_sentinel_conf = join("\n", [
    "port ${local.redis_sentinel_port}",
    "bind 0.0.0.0",
    "daemonize no",
    "dir /var/lib/redis-sentinel",
    "sentinel monitor ${local.redis_master_name} ${local.redis_ips[0]} ${local.redis_port} 2",
    "sentinel down-after-milliseconds ${local.redis_master_name} 5000",
    "sentinel failover-timeout ${local.redis_master_name} 60000",
    "sentinel parallel-syncs ${local.redis_master_name} 1",
    "",
  ])

  # --- load balancer (role lb): HAProxy on port 9000 of each lb machine, in front of the chat
  # nodes, which it finds in the DNS of the Consul server named consul (port 8600; the image's
  # default). The chat nodes advertise their IP addresses (below): HAProxy takes them from
  # Consul's SRV records and cannot resolve a host name there.
  lb_port      = 9000
  lb_addresses = [for n in local.node_list : n.address if n.role == "lb"]
  lb_endpoints = [for a in local.lb_addresses : "${a}:${local.lb_port}"]

  # --- chat nodes: the configuration contract's keys. server.listen and server.http_listen
  # are those the chat image's socket units hold (nix/settings.toml defaults); each node
  # advertises its address so that clients on the KVM host (no cluster DNS there) can follow
  # redirects; each node talks to one Consul server (round robin), as there is no local agent.
  chat_listen      = "0.0.0.0:9000"
  chat_http_listen = "127.0.0.1:9100"
  chat_configs = {
    for n in local.node_list : n.name => {
      server = {
        listen         = local.chat_listen
        http_listen    = local.chat_http_listen
        node_id        = n.name
        advertise_addr = "${n.address}:9000"
        # The load balancers send the PROXY protocol (send-proxy-v2): the nodes trust them, and
        # see each client's address instead of the balancer's. Empty without a balancer.
        proxy_protocol_from = local.lb_addresses
      }
      nats = {
        url      = join(",", local.nats_urls)
        replicas = local.nats_replicas
      }
      redis = {
        url = local.redis_url
      }
      consul = {
        addr = "http://${local.names_of.consul[(n.index - 1) % var.consul_count]}:${local.consul_port}"
      }
    } if n.role == "chat"
  }

  # The same configuration as a TOML file (for `chat-zinx config --check`) …
  chat_configs_toml = {
    for name, config in local.chat_configs : name => join("\n", [
      for section in ["server", "nats", "redis", "consul"] : join("\n", concat(
        ["[${section}]"],
        [for key, value in config[section] : "${key} = ${jsonencode(value)}"],
        [""],
      ))
    ])
  }

  # … and as the CHAT_ZINX_* variables cloud-init writes to /etc/chat-zinx/env (they override
  # the image's file). The listen addresses stay the image's (its socket units hold them), and
  # CHAT_ZINX_REDIS__URL is written on the machine, with the password from the secrets disk.
  chat_env = {
    for name, config in local.chat_configs : name => join("", flatten([
      for section in ["server", "nats", "consul"] : [
        for key, value in config[section] :
        # A list (server.proxy_protocol_from) as one string of comma-separated entries.
        "CHAT_ZINX_${upper(section)}__${upper(key)}=${try(join(",", value), value)}\n"
        if !contains(["listen", "http_listen"], key)
      ]
    ]))
  }

  # --- per-machine NixOS settings: what a machine's own NixOS configuration would set, were it
  # built per machine instead of from the generic role image.
  nixos_settings = merge(
    {
      for n in local.node_list : n.name => {
        "networking.hostName"                   = n.name
        "services.nats.serverName"              = n.name
        "services.nats.settings.cluster.routes" = local.nats_routes[n.name]
      } if n.role == "nats"
    },
    {
      for n in local.node_list : n.name => {
        "networking.hostName"                          = n.name
        "services.consul.extraConfig.bootstrap_expect" = var.consul_count
        "services.consul.extraConfig.retry_join"       = local.consul_retry_join[n.name]
        "services.consul.extraConfig.advertise_addr"   = n.address
      } if n.role == "consul"
    },
    {
      for n in local.node_list : n.name => {
        "networking.hostName"                         = n.name
        "services.redis.servers.\"\".requirePassFile" = "/etc/redis/password"
      } if n.role == "redis"
    },
    {
      for n in local.node_list : n.name => {
        "networking.hostName"         = n.name
        "services.chat-zinx.settings" = local.chat_configs[n.name]
      } if n.role == "chat"
    },
    {
      for n in local.node_list : n.name => {
        "networking.hostName" = n.name
      } if n.role == "lb"
    },
  )

  # --- cloud-init user data. Per role, a bootcmd script (cloud-init's first stage, before the
  # services that are ordered after cloud-init.service) puts the per-machine files in place.
  mount_secrets = <<-EOT
    set -eu
    umask 077
    mkdir -p /run/cz-secrets
    mountpoint -q /run/cz-secrets || mount -o ro /dev/disk/by-label/CZSECRETS /run/cz-secrets
  EOT

  bootcmd = {
    for n in local.node_list : n.name => (
      n.role == "chat" ? join("", [local.mount_secrets, <<-EOT
        mkdir -p /etc/chat-zinx
        install -m 0600 /run/cz-secrets/token_secret /etc/chat-zinx/token_secret
        {
        cat <<'ENV'
        ${trimspace(local.chat_env[n.name])}
        ENV
        printf 'CHAT_ZINX_REDIS__URL=${local.redis_url_format}\n' "$(cat /run/cz-secrets/redis_password)"
        } > /etc/chat-zinx/env.new
        mv /etc/chat-zinx/env.new /etc/chat-zinx/env
        umount /run/cz-secrets
      EOT
      ]) :
      n.role == "redis" ? join("", [local.mount_secrets, <<-EOT
        mkdir -p /etc/redis
        install -m 0600 /run/cz-secrets/redis_password /etc/redis/password
        umount /run/cz-secrets
      EOT
        , var.redis_mode == "single" ? "" : <<-EOT
        # The image's units read the files below as the redis user (umask 077 made the
        # directory root's only); the password file stays root's.
        chown root:redis /etc/redis
        chmod 0750 /etc/redis
        {
        printf '%s' '${local.redis_mode_conf[n.name]}'
        printf 'masterauth %s\n' "$(cat /etc/redis/password)"
        } > /etc/redis/cz-mode.conf.new
        chown redis:redis /etc/redis/cz-mode.conf.new
        mv /etc/redis/cz-mode.conf.new /etc/redis/cz-mode.conf
      EOT
        , var.redis_mode != "sentinel" ? "" : <<-EOT
        if [ ! -e /etc/redis/sentinel.conf ]; then
        {
        cat <<'CONF'
        ${trimspace(local.redis_sentinel_conf)}
        CONF
        p="$(cat /etc/redis/password)"
        printf 'requirepass %s\nsentinel sentinel-pass %s\nsentinel auth-pass ${local.redis_master_name} %s\n' "$p" "$p" "$p"
        } > /etc/redis/sentinel.conf.new
        chown redis:redis /etc/redis/sentinel.conf.new
        mv /etc/redis/sentinel.conf.new /etc/redis/sentinel.conf
        fi
      EOT
      ]) :
      n.role == "consul" ? <<-EOT
        set -eu
        mkdir -p /etc/consul.d /run/systemd/system/consul.service.d
        cat > /etc/consul.d/50-cluster.json <<'JSON'
        ${jsonencode({ bootstrap_expect = var.consul_count, retry_join = local.consul_retry_join[n.name], advertise_addr = n.address, bind_addr = n.address })}
        JSON
        # The image's /etc/consul.json (bootstrap_expect = 1) must not win: load it first and
        # /etc/consul.d after it, and wait for this script.
        cat > /run/systemd/system/consul.service.d/50-cluster.conf <<'UNIT'
        [Unit]
        After=cloud-init.service
        [Service]
        ExecStart=
        ExecStart=/run/current-system/sw/bin/consul agent -config-file /etc/consul.json -config-dir /etc/consul.d
        UNIT
        systemctl daemon-reload
        if [ ! -e /var/lib/consul/.cz-cluster ]; then
          # A start before this script would have bootstrapped a one-server cluster: forget it.
          systemctl stop consul || true
          rm -rf /var/lib/consul/raft /var/lib/consul/serf /var/lib/consul/server_metadata.json
          mkdir -p /var/lib/consul && touch /var/lib/consul/.cz-cluster
        fi
        systemctl restart --no-block consul
      EOT
      : ""
    )
  }

  # --- cloud-init runcmd (once per instance, at the end of the first boot): redis-1 of a
  # Redis Cluster waits until the three servers answer and assigns the slots, unless a cluster
  # exists already.
  redis_cli = "/run/current-system/sw/bin/redis-cli"
  runcmd = var.redis_mode != "cluster" ? {} : {
    (local.names_of.redis[0]) = <<-EOT
      set -eu
      REDISCLI_AUTH="$(cat /etc/redis/password)"
      export REDISCLI_AUTH
      for i in $(seq 1 300); do
        up=0
        for ip in ${join(" ", local.redis_ips)}; do
          if ${local.redis_cli} -h "$ip" -p ${local.redis_port} ping 2>/dev/null | grep -q PONG; then up=$((up + 1)); fi
        done
        [ "$up" -eq ${length(local.redis_ips)} ] && break
        sleep 2
      done
      if ${local.redis_cli} -p ${local.redis_port} cluster info | grep -q 'cluster_slots_assigned:0'; then
        ${local.redis_cli} --cluster create ${join(" ", [for ip in local.redis_ips : "${ip}:${local.redis_port}"])} --cluster-replicas 0 --cluster-yes
      fi
    EOT
  }

  user_data = {
    for n in local.node_list : n.name => join("", [
      "#cloud-config\n",
      yamlencode(merge(
        {
          hostname          = n.name
          fqdn              = n.name
          preserve_hostname = false
          manage_etc_hosts  = false
          ssh_pwauth        = false
          disable_root      = false
        },
        length(var.ssh_authorized_keys) > 0 ? { ssh_authorized_keys = var.ssh_authorized_keys } : {},
        local.bootcmd[n.name] != "" ? { bootcmd = [local.bootcmd[n.name]] } : {},
        lookup(local.runcmd, n.name, "") != "" ? { runcmd = [local.runcmd[n.name]] } : {},
      ))
    ])
  }

  meta_data = {
    for n in local.node_list : n.name => join("", [
      "instance-id: ${n.name}-${var.versions.image}\n",
      "local-hostname: ${n.name}\n",
    ])
  }

  # Host names the network's DNS answers: every machine, plus the short names the images use
  # by default (consul, redis).
  dns_hosts = concat(
    [for n in local.node_list : { hostname = n.name, ip = n.address }],
    [
      { hostname = "consul", ip = local.addresses_of.consul[0] },
      { hostname = "redis", ip = local.addresses_of.redis[0] },
    ],
  )
}
