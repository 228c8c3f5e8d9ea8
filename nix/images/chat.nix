# Role chat: a chat-zinx node (services.chat-zinx). Per machine, cloud-init writes at first
# boot (mode 0600):
#   /etc/chat-zinx/env           CHAT_ZINX_SERVER__NODE_ID=chat-1
#                                CHAT_ZINX_SERVER__ADVERTISE_ADDR=chat-1.example.com:9000
#                                CHAT_ZINX_REDIS__URL=redis://:PASSWORD@redis:6379/0
#                                CHAT_ZINX_SERVER__PROXY_PROTOCOL_FROM=10.77.0.19 (the lb
#                                machines' addresses: the load balancer sends the PROXY
#                                protocol, and a node that does not trust it closes its
#                                connections)
#                                (CHAT_ZINX_CONSUL__TOKEN=... when Consul has ACLs)
#   /etc/chat-zinx/token_secret  the token secret, the same on every chat node
{
  services.chat-zinx = {
    enable = true;
    openFirewall = true;
    settings.nats.url = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222";
    settings.nats.replicas = 3;
    settings.consul.addr = "http://consul:8500";
    environmentFile = "/etc/chat-zinx/env";
    tokenSecretFile = "/etc/chat-zinx/token_secret";
  };
  # The files above exist once cloud-init has run.
  systemd.services.chat-zinx = {
    after = [ "cloud-init.service" ];
    wants = [ "cloud-init.service" ];
  };
}
