# Variables the plan refuses.

run "even_nats" {
  command = plan
  variables { nats_count = 2 }
  expect_failures = [var.nats_count]
}

run "even_consul" {
  command = plan
  variables { consul_count = 4 }
  expect_failures = [var.consul_count]
}

run "no_chat" {
  command = plan
  variables { chat_count = 0 }
  expect_failures = [var.chat_count]
}

run "negative_lb" {
  command = plan
  variables { lb_count = -1 }
  expect_failures = [var.lb_count]
}

run "no_nats" {
  command = plan
  variables { nats_count = 0 }
  expect_failures = [var.nats_count]
}

run "two_redis" {
  command = plan
  variables { redis_count = 2 }
  expect_failures = [var.redis_count]
}

run "one_redis_for_sentinel" {
  command = plan
  variables { redis_mode = "sentinel" }
  expect_failures = [var.redis_count]
}

run "unknown_redis_mode" {
  command = plan
  variables { redis_mode = "replicated" }
  expect_failures = [var.redis_mode]
}

run "cidr_too_small" {
  command = plan
  variables { network_cidr = "10.77.0.0/28" }
  expect_failures = [var.network_cidr]
}

run "cidr_not_ipv4" {
  command = plan
  variables { network_cidr = "fd00::/64" }
  expect_failures = [var.network_cidr]
}

run "chat_memory_floor" {
  command = plan
  variables {
    memory_mib = { nats = 1024, consul = 512, redis = 512, chat = 512 }
  }
  expect_failures = [var.memory_mib]
}

run "memory_floor" {
  command = plan
  variables {
    memory_mib = { nats = 1024, consul = 256, redis = 512, chat = 1024 }
  }
  expect_failures = [var.memory_mib]
}

run "no_vcpu" {
  command = plan
  variables {
    vcpus = { nats = 1, consul = 1, redis = 0, chat = 1 }
  }
  expect_failures = [var.vcpus]
}

run "bad_image_version" {
  command = plan
  variables {
    versions = { image = "bad version!", chat_zinx = "0.1.0" }
  }
  expect_failures = [var.versions]
}
