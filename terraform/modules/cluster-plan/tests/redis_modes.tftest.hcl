# redis_mode: the chat nodes' redis.url and the redis machines' user data for Sentinel and
# Cluster (three redis machines, .16–.18).

run "sentinel" {
  command = plan
  variables {
    redis_mode  = "sentinel"
    redis_count = 3
  }

  assert {
    condition     = output.redis_url == "redis-sentinel://redis-1:26379?sentinelServiceName=cz&node=redis-2:26379&node=redis-3:26379"
    error_message = "the chat nodes ask the three Sentinels for master cz"
  }
  assert {
    condition     = output.chat_configs["chat-1"].redis.url == output.redis_url && strcontains(output.user_data["chat-1"], "CHAT_ZINX_REDIS__URL=redis-sentinel://:%s@redis-1:26379?sentinelServiceName=cz&node=redis-2:26379&node=redis-3:26379")
    error_message = "the chat node's URL gets the password on the machine"
  }
  assert {
    condition     = output.addresses.redis == ["10.77.0.16", "10.77.0.17", "10.77.0.18"] && output.addresses.chat == ["10.77.0.19", "10.77.0.20"]
    error_message = "three redis machines, the chat nodes after them"
  }
  assert {
    condition     = !strcontains(output.user_data["redis-1"], "replicaof") && strcontains(output.user_data["redis-2"], "replicaof 10.77.0.16 6379") && strcontains(output.user_data["redis-3"], "replicaof 10.77.0.16 6379")
    error_message = "redis-1 is the first master, the others its replicas"
  }
  assert {
    condition     = alltrue([for name in ["redis-1", "redis-2", "redis-3"] : strcontains(output.user_data[name], "sentinel monitor cz 10.77.0.16 6379 2") && strcontains(output.user_data[name], "masterauth %s") && strcontains(output.user_data[name], "chown root:redis /etc/redis")])
    error_message = "a Sentinel on every redis machine, quorum 2; every server can authenticate to a master; the redis user reads /etc/redis"
  }
}

run "cluster" {
  command = plan
  variables {
    redis_mode  = "cluster"
    redis_count = 3
  }

  assert {
    condition     = output.redis_url == "redis-cluster://redis-1:6379?node=redis-2:6379&node=redis-3:6379"
    error_message = "the chat nodes seed the cluster client with the three servers"
  }
  assert {
    condition     = alltrue([for name in ["redis-1", "redis-2", "redis-3"] : strcontains(output.user_data[name], "cluster-enabled yes") && strcontains(output.user_data[name], "cluster-require-full-coverage no") && !strcontains(output.user_data[name], "sentinel monitor")])
    error_message = "every server runs in cluster mode, no Sentinel"
  }
  assert {
    condition     = strcontains(output.user_data["redis-1"], "--cluster create 10.77.0.16:6379 10.77.0.17:6379 10.77.0.18:6379 --cluster-replicas 0 --cluster-yes") && !strcontains(output.user_data["redis-2"], "--cluster create")
    error_message = "redis-1 creates the cluster once"
  }
}

run "single" {
  command = plan

  assert {
    condition     = output.redis_url == "redis://redis-1:6379/0" && !strcontains(output.user_data["redis-1"], "cz-mode.conf") && !strcontains(output.user_data["redis-1"], "sentinel")
    error_message = "the default stays one server with nothing added"
  }
}
