# The default plan: NATS ×3, Consul ×3, Redis ×1, chat ×2, load balancer ×1 on 10.77.0.0/24.

run "defaults" {
  command = plan

  assert {
    condition     = length(output.nodes) == 10
    error_message = "the default cluster has 10 machines"
  }
  assert {
    condition     = output.addresses.nats == ["10.77.0.10", "10.77.0.11", "10.77.0.12"]
    error_message = "NATS servers are .10-.12"
  }
  assert {
    condition     = output.addresses.consul == ["10.77.0.13", "10.77.0.14", "10.77.0.15"]
    error_message = "Consul servers are .13-.15"
  }
  assert {
    condition     = output.addresses.redis == ["10.77.0.16"] && output.redis_address == "redis-1:6379"
    error_message = "Redis is redis-1 at .16"
  }
  assert {
    condition     = output.addresses.chat == ["10.77.0.17", "10.77.0.18"]
    error_message = "chat nodes are .17-.18"
  }
  assert {
    condition     = length(distinct([for n in output.nodes : n.mac])) == 10 && length(distinct([for n in output.nodes : n.address])) == 10
    error_message = "MAC and IP addresses are unique"
  }
  assert {
    condition     = output.addresses.lb == ["10.77.0.19"] && output.lb_endpoints == ["10.77.0.19:9000"] && output.nodes["lb-1"].image == "image-lb"
    error_message = "the load balancer lb-1 is .19, port 9000, on the lb image"
  }
  assert {
    condition     = output.nixos_settings["lb-1"] == { "networking.hostName" = "lb-1" } && !strcontains(output.user_data["lb-1"], "bootcmd")
    error_message = "the load balancer needs nothing per machine but its host name"
  }
  assert {
    condition     = contains(output.dns_hosts, { hostname = "lb-1", ip = "10.77.0.19" })
    error_message = "DNS answers the load balancer"
  }
  assert {
    condition     = output.nats_routes["nats-2"] == ["nats://nats-1:6222", "nats://nats-3:6222"]
    error_message = "each NATS server routes to every other one"
  }
  assert {
    condition     = alltrue([for name, routes in output.nats_routes : length(routes) == 2 && !contains(routes, "nats://${name}:6222")])
    error_message = "no NATS server routes to itself"
  }
  assert {
    condition     = output.consul_retry_join["consul-1"] == ["10.77.0.14", "10.77.0.15"] && output.consul_bootstrap_expect == 3
    error_message = "each Consul server retry-joins the others and expects 3"
  }
  assert {
    condition     = output.chat_configs["chat-1"].nats.url == "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222" && output.chat_configs["chat-1"].nats.replicas == 3
    error_message = "chat nodes use the three NATS servers with replicas = 3"
  }
  assert {
    condition     = output.chat_configs["chat-2"].server.node_id == "chat-2" && output.chat_configs["chat-2"].server.advertise_addr == "10.77.0.18:9000"
    error_message = "a chat node's id is its name and it advertises its address"
  }
  assert {
    condition     = output.chat_configs["chat-1"].server.proxy_protocol_from == ["10.77.0.19"] && strcontains(output.user_data["chat-1"], "CHAT_ZINX_SERVER__PROXY_PROTOCOL_FROM=10.77.0.19\n")
    error_message = "the chat nodes trust the load balancer's PROXY headers"
  }
  assert {
    condition     = output.chat_configs["chat-1"].consul.addr == "http://consul-1:8500" && output.chat_configs["chat-2"].consul.addr == "http://consul-2:8500"
    error_message = "chat nodes spread over the Consul servers"
  }
  assert {
    condition     = output.chat_configs["chat-1"].redis.url == "redis://redis-1:6379/0"
    error_message = "the Redis URL of the plan has no password"
  }
  assert {
    condition     = alltrue([for name, text in output.user_data : startswith(text, "#cloud-config\n") && yamldecode(text).hostname == name])
    error_message = "every machine's user data is #cloud-config YAML with its host name"
  }
  assert {
    condition     = strcontains(output.user_data["chat-1"], "CHAT_ZINX_SERVER__NODE_ID=chat-1\n") && strcontains(output.user_data["chat-1"], "/dev/disk/by-label/CZSECRETS")
    error_message = "a chat node's user data writes its env file and reads the secrets disk"
  }
  assert {
    condition     = strcontains(output.user_data["consul-3"], jsonencode(["10.77.0.13", "10.77.0.14"]))
    error_message = "a Consul server's user data carries its retry_join"
  }
  assert {
    condition     = output.consul_ui_url == "http://10.77.0.13:8500/ui/"
    error_message = "the Consul UI is on consul-1"
  }
  assert {
    condition     = output.client_command == "chat-zinx client --consul http://10.77.0.13:8500"
    error_message = "the client command goes through Consul"
  }
  assert {
    condition     = contains(output.dns_hosts, { hostname = "consul", ip = "10.77.0.13" }) && contains(output.dns_hosts, { hostname = "nats-3", ip = "10.77.0.12" })
    error_message = "DNS answers every machine and the consul alias"
  }
}

run "single_nats_and_consul" {
  command = plan

  variables {
    nats_count   = 1
    consul_count = 1
    chat_count   = 3
    network_cidr = "192.168.150.0/27"
    lb_count     = 0
  }

  assert {
    condition     = output.lb_endpoints == [] && output.addresses.lb == []
    error_message = "lb_count = 0: no load balancer"
  }

  assert {
    condition     = output.chat_configs["chat-1"].server.proxy_protocol_from == [] && strcontains(output.user_data["chat-1"], "CHAT_ZINX_SERVER__PROXY_PROTOCOL_FROM=\n")
    error_message = "no load balancer: the chat nodes trust no PROXY header"
  }

  assert {
    condition     = output.nats_replicas == 1 && output.chat_configs["chat-3"].nats.url == "nats://nats-1:4222"
    error_message = "one NATS server: replicas = 1"
  }
  assert {
    condition     = output.nats_routes["nats-1"] == [] && output.consul_retry_join["consul-1"] == []
    error_message = "a lone server has no routes and joins no one"
  }
  assert {
    condition     = output.addresses.chat == ["192.168.150.13", "192.168.150.14", "192.168.150.15"]
    error_message = "addresses follow the CIDR"
  }
  assert {
    condition     = output.chat_configs["chat-3"].consul.addr == "http://consul-1:8500"
    error_message = "with one Consul server every chat node uses it"
  }
}
